"""The few SMTP/LMTP client steps policyd needs: greeting, LHLO/EHLO, one command, its reply.

Both the health probe (is the primary's delivery endpoint answering?) and the standby recipient
check (does the standby know this user?) speak the same line protocol; smtplib is blocking, so
this small asyncio client keeps the policy server responsive while they wait.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from mailcontinuity.config import Endpoint
from mailcontinuity.tls import TLSPolicy

MAX_REPLY_LINES = 100
CLIENT_NAME = socket.getfqdn() or "localhost"


class SmtpClientError(Exception):
    """The server answered with something other than what the step expects."""


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400


class SmtpSession:
    """One connection to an SMTP or LMTP server, past its greeting and LHLO/EHLO."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, endpoint: Endpoint, protocol: str, tls: TLSPolicy) -> SmtpSession:
        """Connect, check the 220 greeting and say LHLO (LMTP) or EHLO (SMTP); with TLS on,
        STARTTLS (required: never on in plaintext) and the hello again, as RFC 3207 says."""
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        session = cls(reader, writer)
        what = protocol.upper()
        try:
            session.expect(await session.read_reply(), "greeting")
            hello = "LHLO" if protocol == "lmtp" else "EHLO"
            extensions = session.expect(await session.command(f"{hello} {CLIENT_NAME}"), hello)
            if tls.context is not None:
                if "STARTTLS" not in extensions.text.upper().split():
                    raise tls.no_starttls(what, endpoint)
                session.expect(await session.command("STARTTLS"), "STARTTLS")
                await tls.upgrade(writer, what, endpoint)
                session.expect(await session.command(f"{hello} {CLIENT_NAME}"), hello)
        except BaseException:
            session.close()
            raise
        return session

    async def command(self, line: str) -> Reply:
        """Send one command line and read its (possibly multi-line) reply."""
        if "\r" in line or "\n" in line:
            raise ValueError(f"an SMTP command is one line, got {line!r}")
        self.writer.write(line.encode("utf-8", errors="surrogateescape") + b"\r\n")
        await self.writer.drain()
        return await self.read_reply()

    async def read_reply(self) -> Reply:
        lines = []
        for _ in range(MAX_REPLY_LINES):
            raw = await self.reader.readline()
            if not raw.endswith(b"\n"):
                raise SmtpClientError("connection closed in the middle of a reply")
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise SmtpClientError(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(line[:3]), " ".join(lines))
        raise SmtpClientError(f"reply longer than {MAX_REPLY_LINES} lines")

    @staticmethod
    def expect(reply: Reply, step: str) -> Reply:
        if not reply.positive:
            raise SmtpClientError(f"{step} answered {reply.code} {reply.text[:80]}")
        return reply

    async def quit(self) -> None:
        try:
            await self.command("QUIT")
        finally:
            self.close()

    def close(self) -> None:
        self.writer.close()
