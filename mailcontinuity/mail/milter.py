"""The milter protocol as Postfix speaks it, just far enough to ask a milter "are you there?".

Postfix opens each milter session with an option negotiation (``SMFIC_OPTNEG``) and a milter
that serves answers with its own; that exchange, then ``SMFIC_QUIT``, is the health monitor's
probe. A socket that accepts connections but never negotiates (libmilter alive, its Python
callbacks hung) fails the probe just like a socket nobody listens on. Wire format: each packet
is a 4-byte big-endian length (command byte included), the command byte, then its data
(sendmail's ``libmilter/docs``, pymilter's ``miltermodule.c``).
"""

from __future__ import annotations

import asyncio
import struct

from mailcontinuity.config import Endpoint, UnixSocket

SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
# What Postfix 3.7 offers: protocol version 6, every action, every protocol step flag.
POSTFIX_VERSION = 6
POSTFIX_ACTIONS = 0x1FF
POSTFIX_PROTOCOL = 0x1FFFFF
MAX_PACKET = 64 * 1024


class MilterProbeError(Exception):
    """The milter answered, but not with an option negotiation."""


def _packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


async def negotiate(listen: Endpoint | UnixSocket) -> int:
    """Connect, negotiate options as Postfix does, quit; returns the milter's protocol version.
    The caller bounds the time (a hung milter never answers)."""
    if isinstance(listen, UnixSocket):
        reader, writer = await asyncio.open_unix_connection(str(listen.path))
    else:
        reader, writer = await asyncio.open_connection(listen.host, listen.port)
    try:
        writer.write(_packet(SMFIC_OPTNEG, struct.pack(
            "!III", POSTFIX_VERSION, POSTFIX_ACTIONS, POSTFIX_PROTOCOL)))
        await writer.drain()
        try:
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            if not 1 <= length <= MAX_PACKET:
                raise MilterProbeError(f"milter sent a packet of {length} bytes")
            reply = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise MilterProbeError("milter closed the connection without negotiating") from None
        if reply[:1] != SMFIC_OPTNEG or len(reply) < 13:
            raise MilterProbeError(f"milter answered {reply[:1]!r} to the option negotiation")
        (version,) = struct.unpack("!I", reply[1:5])
        writer.write(_packet(SMFIC_QUIT))
        await writer.drain()
        return int(version)
    finally:
        writer.close()
