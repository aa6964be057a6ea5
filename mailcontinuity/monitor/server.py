"""The asyncio server Postfix's smtpd processes talk to: framing, limits, never dying of input.

Each smtpd keeps one persistent connection and sends many requests on it, so the server loops
per connection. What it does with a request is someone else's job (``decide``); here we only make
sure that any input, however broken, ends as a ``DUNNO`` or a closed connection plus a log line,
because Postfix then applies its own fail-open default and mail keeps flowing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from mailcontinuity.config import PolicydSection
from mailcontinuity.mail.postfix import grant_postfix_access
from mailcontinuity.monitor.protocol import (
    ACTION_KINDS,
    DUNNO,
    REQUEST_END,
    ProtocolError,
    action_kind,
    format_reply,
    parse_request,
)

log = logging.getLogger(__name__)

Decide = Callable[[dict[str, str]], Awaitable[str]]


class PolicyServerError(Exception):
    """The server cannot listen; the message names the socket and what to do."""


class PolicyServer:
    """Serves ``decide`` on the configured unix socket and, optionally, a TCP endpoint."""

    def __init__(self, settings: PolicydSection, decide: Decide,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.decide = decide
        self.connections = 0
        self._servers: list[asyncio.AbstractServer] = []
        # Counted always (a lock and an add); exported when ``registry`` is the metrics one.
        self.requests = Counter("mailcontinuity_policy_requests", "Policy requests answered,"
                                " by what the answer amounted to.", ["action"], registry=registry)
        for kind in ACTION_KINDS:
            self.requests.labels(kind)

    async def start(self) -> None:
        limit = self.settings.max_request_bytes
        if self.settings.socket is not None:
            path = self.settings.socket
            _claim_socket_path(path)
            server = await asyncio.start_unix_server(self._serve, path=str(path), limit=limit)
            self._servers.append(server)
            grant_postfix_access(path, self.settings.socket_group, self.settings.socket_mode,
                                 "policyd.socket")
            log.info("event=listening socket=%s", path)
        if self.settings.tcp is not None:
            host, port = self.settings.tcp
            try:
                server = await asyncio.start_server(self._serve, host, port, limit=limit,
                                                    reuse_address=True)
            except OSError as exc:
                raise PolicyServerError(
                    f"policyd cannot listen on {self.settings.tcp}: {exc.strerror}; is another"
                    " policyd running, or is policyd.tcp taken by another program?"
                ) from None
            self._servers.append(server)
            log.info("event=listening tcp=%s", self.settings.tcp)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        if self.settings.socket is not None:
            self.settings.socket.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.settings.max_connections:
            log.warning("event=connection_refused reason=max_connections limit=%d",
                        self.settings.max_connections)
            writer.close()
            return
        self.connections += 1
        try:
            await self._requests(reader, writer)
        except (ConnectionError, OSError) as exc:
            log.info("event=connection_lost error=%r", exc)
        finally:
            self.connections -= 1
            writer.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        idle = self.settings.idle_timeout_seconds
        while True:
            try:
                async with asyncio.timeout(idle):
                    block = await reader.readuntil(REQUEST_END)
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    log.warning("event=request_truncated bytes=%d", len(exc.partial))
                return
            except asyncio.LimitOverrunError:
                log.warning("event=request_too_large limit=%d action=close",
                            self.settings.max_request_bytes)
                return
            except TimeoutError:
                log.info("event=connection_idle seconds=%.0f action=close", idle)
                return
            action = await self._answer(block)
            self.requests.labels(action_kind(action)).inc()
            writer.write(format_reply(action))
            await writer.drain()

    async def _answer(self, block: bytes) -> str:
        try:
            request = parse_request(block)
        except ProtocolError as exc:
            log.warning("event=request_malformed error=%r action=DUNNO", str(exc))
            return DUNNO
        try:
            action = await self.decide(request)
            format_reply(action)
        except Exception:
            log.exception("event=decision_failed action=DUNNO")
            return DUNNO
        return action


def _claim_socket_path(path: Path) -> None:
    """Remove a stale socket left by a crash, but never steal one a live policyd serves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise PolicyServerError(
        f"policyd socket {path} is in use by a running policyd; stop it first"
    )
