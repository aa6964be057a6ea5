"""The exchange profile's IMAP as mailcontinuity meets it: RFC822.SIZE is an estimate.

Exchange (Online and on premises) reports as RFC822.SIZE the size of its own store's copy of a
message, not the size of the MIME text it returns or was given by APPEND: a message appended
and fetched back has another size than the file it came from. Dovecot reports exact sizes, so
the lab puts this proxy in front of the profiled primary's IMAP (``primary.imap`` in the lab's
config points at it; lab.json keeps Dovecot's own listener, where the tests read the primary as
the users): it offers STARTTLS with the lab's certificate itself, speaks plain IMAP to Dovecot
from the client's own loopback address (as ``lab.tlsproxy`` does, so Dovecot's per-address
login penalty and logs still see each client), and rewrites every RFC822.SIZE in the server's
responses to ``estimate(size)``; literals (message text) pass untouched.

Started by ``ProfiledDovecot`` as ``python -m mailcontinuity.lab.imapsize LISTEN BACKEND CERT
KEY`` and stopped with it: the primary's IMAP is down when its Dovecot is.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import sys

from mailcontinuity.config import parse_endpoint
from mailcontinuity.lab.tlsproxy import connect_as_client, pipe

LITERAL = re.compile(rb"\{(\d+)\+?\}\r?\n$")
SIZE = re.compile(rb"(RFC822\.SIZE )(\d+)", re.IGNORECASE)
STARTTLS = re.compile(rb"^(\S+) STARTTLS\r?\n$", re.IGNORECASE)
# A line may be long (a SEARCH answer over 100,000 messages): asyncio's default is 64 KiB.
LINE_LIMIT = 64 * 1024 * 1024


def estimate(size: int) -> int:
    """Exchange's kind of figure: its store's size (properties, a converted body), about a
    tenth more than the MIME text, in whole KiB; never the exact size."""
    return (size * 11 // 10 + 1024) // 1024 * 1024


def rewrite(line: bytes) -> bytes:
    """One line of the server's responses (literals excluded) with its sizes estimated."""
    return SIZE.sub(lambda match: match.group(1) + str(estimate(int(match.group(2)))).encode(),
                    line)


async def _server_to_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(rewrite(line))
            literal = LITERAL.search(line)
            if literal:
                writer.write(await reader.readexactly(int(literal.group(1))))
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _client_to_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            client: asyncio.StreamWriter, context: ssl.SSLContext) -> None:
    """Until STARTTLS, line by line (the proxy answers STARTTLS and takes TLS on itself);
    after it, bytes as they come."""
    try:
        while line := await reader.readline():
            command = STARTTLS.match(line)
            if command is None:
                writer.write(line)
                await writer.drain()
                continue
            client.write(command.group(1) + b" OK Begin TLS negotiation now\r\n")
            await client.drain()
            await client.start_tls(context)
            break
        else:
            writer.close()
            return
    except (ConnectionError, ssl.SSLError, OSError):
        writer.close()
        return
    await pipe(reader, writer)


async def serve(listen: str, backend: str, cert: str, key: str) -> None:
    front, back = parse_endpoint(listen), parse_endpoint(backend)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await connect_as_client(writer, back, LINE_LIMIT)
        if upstream is not None:
            await asyncio.gather(_server_to_client(upstream[0], writer),
                                 _client_to_server(reader, upstream[1], writer, context))

    server = await asyncio.start_server(handle, front.host, front.port, limit=LINE_LIMIT)
    async with server:
        await server.serve_forever()


def main() -> None:
    listen, backend, cert, key = sys.argv[1:5]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(listen, backend, cert, key))


if __name__ == "__main__":
    main()
