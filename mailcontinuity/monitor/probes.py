"""Probes of the primary: can it take mail (LMTP LHLO / SMTP EHLO) and serve users (IMAP)?

Each probe is what a client would do first, bounded by a timeout, and timed: a primary that
accepts TCP but never greets (a hung process, a full disk) fails just like one that refuses.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Awaitable

from mailcontinuity.config import Config, ConfigError, DeliveryEndpoint, Endpoint, read_secret
from mailcontinuity.mail.smtp import SmtpSession
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.store.probes import ProbeResult

log = logging.getLogger(__name__)


class ProbeError(Exception):
    """The server answered, but not as a healthy one does."""


async def probe_delivery(delivery: DeliveryEndpoint, tls: TLSPolicy) -> None:
    """Greeting and LHLO/EHLO (and STARTTLS) on the primary's delivery endpoint, then QUIT."""
    session = await SmtpSession.open(delivery.endpoint, delivery.protocol, tls)
    await session.quit()


async def probe_imap(endpoint: Endpoint, tls: TLSPolicy, login: str | None,
                     password: str | None) -> None:
    """The IMAP greeting and, with a probe account, a LOGIN: the mail store is really there.
    The TLS handshake is part of the probe: a primary with an expired certificate is one the
    failback cannot reach either."""
    implicit = tls.context if tls.implicit else None
    try:
        reader, writer = await asyncio.open_connection(
            endpoint.host, endpoint.port, ssl=implicit,
            server_hostname=endpoint.host if implicit else None)
    except ssl.SSLError as exc:
        raise tls.explain("IMAP", endpoint, exc) from None
    try:
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            raise ProbeError(f"IMAP greeting was {greeting[:80]!r}")
        if tls.enabled and not tls.implicit:
            writer.write(b"a0 STARTTLS\r\n")
            await writer.drain()
            if not (await _tagged_reply(reader, b"a0 ")).startswith(b"a0 OK"):
                raise tls.no_starttls("IMAP", endpoint)
            await tls.upgrade(writer, "IMAP", endpoint)
        if login is not None and password is not None:
            writer.write(f"a1 LOGIN {_quote(login)} {_quote(password)}\r\n".encode())
            await writer.drain()
            reply = await _tagged_reply(reader, b"a1 ")
            if not reply.startswith(b"a1 OK"):
                raise ProbeError(f"IMAP LOGIN as {login} answered {reply[:80]!r}")
        writer.write(b"a2 LOGOUT\r\n")
        await writer.drain()
    finally:
        writer.close()


async def probe_primary(config: Config, tls: TLSPolicy) -> list[ProbeResult]:
    """Both probes of the primary at once, each bounded by the health timeout. The probe
    password is re-read each round, so a rotated secret needs no restart."""
    health = config.health
    timeout = health.timeout_seconds
    return list(await asyncio.gather(
        _timed("delivery", str(config.primary.delivery),
               probe_delivery(config.primary.delivery, tls), timeout),
        _timed("imap", str(config.primary.imap), _probe_imap_as_configured(config, tls), timeout),
    ))


async def _probe_imap_as_configured(config: Config, tls: TLSPolicy) -> None:
    login, password = config.health.imap_login, None
    if login is not None:
        try:
            password = read_secret(config, "health.imap_password_file")
        except ConfigError as exc:
            # A mistake on this host (the file's mode, a missing file) says nothing about the
            # primary: probe without LOGIN rather than fail the primary over.
            _warn_once(str(exc))
            login = None
    await probe_imap(config.primary.imap, tls, login, password)


@functools.lru_cache(maxsize=16)
def _warn_once(reason: str) -> None:
    """Each distinct problem once per process, not once per probe round."""
    log.warning("event=probe_login_skipped reason=%s action=fix health.imap_password_file",
                reason)


async def _timed(probe: str, target: str, check: Awaitable[None], timeout: float) -> ProbeResult:
    at = time.time()
    started = time.perf_counter()
    error = ""
    try:
        async with asyncio.timeout(timeout):
            await check
    except TimeoutError:
        error = f"no answer within {timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - every failure of the primary is a failed probe
        error = f"{type(exc).__name__}: {exc}"
    latency_ms = (time.perf_counter() - started) * 1000
    return ProbeResult(probe, target, not error, round(latency_ms, 3), error, at)


async def _tagged_reply(reader: asyncio.StreamReader, tag: bytes) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ProbeError("IMAP server closed the connection")
        if line.startswith(tag):
            return line


def _quote(text: str) -> str:
    if any(char in text for char in "\r\n\0"):
        raise ProbeError("the probe login and password must be one line")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
