"""The policy server on its own: many connections, many requests each, and hostile input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from mailcontinuity.config import ConfigError, PolicydSection
from mailcontinuity.lab.process import free_ports
from mailcontinuity.monitor.protocol import DUNNO
from mailcontinuity.monitor.server import PolicyServer, PolicyServerError

REQUEST = b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=%d@example.test\n\n"


async def echo_recipient(request: dict[str, str]) -> str:
    """A decision that proves which request each reply answers."""
    if request.get("recipient") == "boom@example.test":
        raise RuntimeError("bug in a decision")
    return f"REJECT {request.get('recipient', '-')}"


@asynccontextmanager
async def serving(tmp_path: Path,
                  decide: Callable[[dict[str, str]], Awaitable[str]] = echo_recipient,
                  **settings: object) -> AsyncIterator[PolicyServer]:
    config = PolicydSection(socket=tmp_path / "policyd.sock", socket_group=None, **settings)
    server = PolicyServer(config, decide)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)


def test_many_requests_on_one_connection_are_answered_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path):
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "policyd.sock"))
            writer.write(b"".join(REQUEST % n for n in range(200)))  # pipelined, as fast as it can
            replies = [await read_reply(reader) for _ in range(200)]
            writer.close()
        assert replies == [b"action=REJECT %d@example.test\n\n" % n for n in range(200)]

    asyncio.run(scenario())


def test_many_connections_at_once(tmp_path: Path) -> None:
    async def client(number: int) -> list[bytes]:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "policyd.sock"))
        replies = []
        for n in range(20):
            writer.write(REQUEST % (number * 100 + n))
            replies.append(await read_reply(reader))
        writer.close()
        return replies

    async def scenario() -> None:
        async with serving(tmp_path):
            results = await asyncio.gather(*(client(number) for number in range(60)))
        for number, replies in enumerate(results):
            assert replies == [b"action=REJECT %d@example.test\n\n" % (number * 100 + n)
                               for n in range(20)]

    asyncio.run(scenario())


def test_malformed_request_and_failing_decision_get_dunno_and_the_connection_lives(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path):
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "policyd.sock"))
            writer.write(b"this is not a policy request\n\n")
            assert await read_reply(reader) == f"action={DUNNO}\n\n".encode()
            writer.write(REQUEST.replace(b"%d", b"boom"))
            assert await read_reply(reader) == f"action={DUNNO}\n\n".encode()
            writer.write(REQUEST % 7)
            assert await read_reply(reader) == b"action=REJECT 7@example.test\n\n"
            writer.close()

    asyncio.run(scenario())


def test_oversized_request_closes_only_that_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, max_request_bytes=1024):
            path = str(tmp_path / "policyd.sock")
            good_reader, good_writer = await asyncio.open_unix_connection(path)
            bad_reader, bad_writer = await asyncio.open_unix_connection(path)
            bad_writer.write(b"recipient=" + b"x" * 5000 + b"\n\n")
            assert await asyncio.wait_for(bad_reader.read(), 5) == b""  # closed, no reply
            good_writer.write(REQUEST % 1)
            assert await read_reply(good_reader) == b"action=REJECT 1@example.test\n\n"
            good_writer.close()

    asyncio.run(scenario())


def test_truncated_request_and_idle_client_are_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, idle_timeout_seconds=0.3) as server:
            path = str(tmp_path / "policyd.sock")
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"request=smtpd_access_policy\nrecipient=")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            idle_reader, _ = await asyncio.open_unix_connection(path)
            assert await asyncio.wait_for(idle_reader.read(), 5) == b""
            await asyncio.sleep(0.05)
            assert server.connections == 0

    asyncio.run(scenario())


def test_connections_beyond_the_limit_are_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, max_connections=2):
            path = str(tmp_path / "policyd.sock")
            kept = [await asyncio.open_unix_connection(path) for _ in range(2)]
            for reader, writer in kept:  # make sure both are being served
                writer.write(REQUEST % 1)
                await read_reply(reader)
            reader, _ = await asyncio.open_unix_connection(path)
            assert await asyncio.wait_for(reader.read(), 5) == b""

    asyncio.run(scenario())


def test_tcp_listener_serves_the_same(tmp_path: Path) -> None:
    port = free_ports(1)[0]

    async def scenario() -> None:
        async with serving(tmp_path, tcp=f"127.0.0.1:{port}"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST % 3)
            assert await read_reply(reader) == b"action=REJECT 3@example.test\n\n"
            writer.close()

    asyncio.run(scenario())


def test_a_live_socket_is_not_stolen_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path):
            with pytest.raises(PolicyServerError, match="in use by a running policyd"):
                async with serving(tmp_path):
                    pass
        (tmp_path / "policyd.sock").write_text("")  # left behind by a crash
        async with serving(tmp_path):
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "policyd.sock"))
            writer.write(REQUEST % 4)
            assert await read_reply(reader) == b"action=REJECT 4@example.test\n\n"
            writer.close()

    asyncio.run(scenario())


def test_unknown_socket_group_is_a_clear_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = PolicydSection(socket=tmp_path / "p.sock", socket_group="no-such-group-xyz")
        server = PolicyServer(config, echo_recipient)
        try:
            with pytest.raises(ConfigError, match="key 'policyd.socket_group': group"
                                                  " 'no-such-group-xyz' does not exist"):
                await server.start()
        finally:
            await server.close()

    asyncio.run(scenario())
