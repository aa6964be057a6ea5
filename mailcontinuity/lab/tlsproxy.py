"""HTTPS in front of the lab's portal: PHP's built-in server speaks plain HTTP only.

Each TLS connection (the lab's certificate) is piped to ``php -S`` from the client's own
address (every lab client is on loopback, where any 127.0.0.0/8 address can be bound), so that
Roundcube sees, and reports to Dovecot, each user's address rather than the proxy's. Started by
``lab.webmail`` as ``python -m mailcontinuity.lab.tlsproxy LISTEN BACKEND CERT KEY USER``; it
drops to ``USER`` once it holds its socket and key.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import pwd
import ssl
import sys

from mailcontinuity.config import Endpoint, parse_endpoint

CHUNK = 65536


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes as they come, until either side closes."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


async def connect_as_client(writer: asyncio.StreamWriter, backend: Endpoint, limit: int = CHUNK
                            ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection to ``backend`` from the address of the client on ``writer`` (when it
    is on loopback), so that the backend sees and logs each client; None (the client's
    connection closed) when the backend does not answer."""
    peer = writer.get_extra_info("peername")[0]
    source = (peer, 0) if ipaddress.ip_address(peer).is_loopback else None
    try:
        return await asyncio.open_connection(backend.host, backend.port, local_addr=source,
                                             limit=limit)
    except OSError:
        writer.close()
        return None


async def serve(listen: str, backend: str, cert: str, key: str, user: str) -> None:
    front, back = parse_endpoint(listen), parse_endpoint(backend)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await connect_as_client(writer, back)
        if upstream is not None:
            await asyncio.gather(pipe(reader, upstream[1]), pipe(upstream[0], writer))

    server = await asyncio.start_server(handle, front.host, front.port, ssl=context)
    account = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    async with server:
        await server.serve_forever()


def main() -> None:
    listen, backend, cert, key, user = sys.argv[1:6]
    asyncio.run(serve(listen, backend, cert, key, user))


if __name__ == "__main__":
    main()
