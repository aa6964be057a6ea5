"""Probes of the primary: can it take mail (LMTP LHLO / SMTP EHLO) and serve users (IMAP)?

Each probe is what a client would do first, bounded by a timeout, and timed: a primary that
accepts TCP but never greets (a hung process, a full disk) fails just like one that refuses.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mailcontinuity.config import Config, ConfigError, DeliveryEndpoint, Endpoint, read_secret
from mailcontinuity.mail.oauth2 import AccessTokens, TokenError, oauth2_tokens, sasl_response
from mailcontinuity.mail.postfix import PostfixError, delivery_bind_address
from mailcontinuity.mail.smtp import SmtpSession
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.store.probes import ProbeResult

log = logging.getLogger(__name__)


class ProbeError(Exception):
    """The server answered, but not as a healthy one does."""


async def probe_delivery(delivery: DeliveryEndpoint, tls: TLSPolicy,
                         source: str | None = None) -> None:
    """Greeting and LHLO/EHLO (and STARTTLS) on the primary's delivery endpoint, then QUIT.
    ``source``: the local address to connect from."""
    session = await SmtpSession.open(delivery.endpoint, delivery.protocol, tls, source=source)
    await session.quit()


async def probe_imap(endpoint: Endpoint, tls: TLSPolicy, login: str | None,
                     password: str | None, source: str | None = None,
                     sasl: tuple[str, bytes] | None = None) -> None:
    """The IMAP greeting and, with a probe account, a LOGIN: the mail store is really there.
    The TLS handshake is part of the probe: a primary with an expired certificate is one the
    failback cannot reach either. ``source``: the local address to connect from. ``sasl``
    (mechanism, response): AUTHENTICATE as ``login`` instead of LOGIN with ``password``."""
    implicit = tls.context if tls.implicit else None
    try:
        reader, writer = await asyncio.open_connection(
            endpoint.host, endpoint.port, ssl=implicit,
            server_hostname=endpoint.host if implicit else None,
            local_addr=(source, 0) if source else None)
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
        if login is not None and sasl is not None:
            await _authenticate(reader, writer, login, *sasl)
        elif login is not None and password is not None:
            writer.write(f"a1 LOGIN {_quote(login)} {_quote(password)}\r\n".encode())
            await writer.drain()
            reply = await _tagged_reply(reader, b"a1 ")
            if not reply.startswith(b"a1 OK"):
                raise ProbeError(f"IMAP LOGIN as {login} answered {reply[:80]!r}")
        writer.write(b"a2 LOGOUT\r\n")
        await writer.drain()
    finally:
        writer.close()


async def _authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, login: str,
                        mechanism: str, response: bytes) -> None:
    """AUTHENTICATE without SASL-IR (every server takes it): the response after the server's
    ``+``; a server that answers a refused token with another ``+`` (XOAUTH2's error JSON)
    gets the empty reply that ends the exchange, then its NO is the probe's error."""
    writer.write(f"a1 AUTHENTICATE {mechanism}\r\n".encode())
    await writer.drain()
    for answer in (base64.b64encode(response), b""):
        line = await reader.readline()
        if not line:
            raise ProbeError("IMAP server closed the connection")
        if not line.startswith(b"+"):
            break
        writer.write(answer + b"\r\n")
        await writer.drain()
    else:
        line = b""
    reply = line if line.startswith(b"a1 ") else await _tagged_reply(reader, b"a1 ")
    if not reply.startswith(b"a1 OK"):
        raise ProbeError(f"IMAP AUTHENTICATE {mechanism} as {login} answered {reply[:80]!r}")


async def probe_primary(config: Config, tls: TLSPolicy,
                        login: LoginProbe | None = None) -> list[ProbeResult]:
    """The primary's probes at once, each bounded by the health timeout: delivery, from the
    address this gateway's Postfix delivers from (``delivery_source_address``), and, from
    ``[health] probe_source_address`` when set, IMAP without a login (the greeting and TLS,
    which no login penalty delays) and, with a probe account, the LOGIN (``LoginProbe``: slow
    is not down). The monitor keeps one ``login`` across rounds; without one, a LOGIN is tried
    for this call only."""
    health = config.health
    timeout = health.timeout_seconds
    one_shot = login is None
    login = LoginProbe(config, tls) if login is None else login
    delivery_source = await asyncio.to_thread(
        delivery_source_address, config.gateway.postfix_config_dir,
        config.primary.delivery.protocol)
    try:
        results = await asyncio.gather(
            _timed("delivery", str(config.primary.delivery),
                   probe_delivery(config.primary.delivery, tls, delivery_source), timeout),
            _timed("imap", str(config.primary.imap),
                   probe_imap(config.primary.imap, tls, None, None, health.probe_source_address),
                   timeout),
            login.round())
    finally:
        if one_shot:
            login.close()
    return [result for result in results if result is not None]


# How long a read of Postfix's bind address is kept (the probe runs every few seconds).
BIND_ADDRESS_CACHE_SECONDS = 60.0
_bind_addresses: dict[tuple[Path, str], tuple[str | None, float]] = {}


def delivery_source_address(postfix_config_dir: Path, protocol: str) -> str | None:
    """Where the delivery probe connects from: where this gateway's Postfix delivers from
    (``smtp_bind_address`` or ``lmtp_bind_address`` in ``gateway.postfix_config_dir``), so the
    probe takes the mail's own path: a primary whose LMTP/SMTP port admits only the gateway's
    mail address admits the probe, and a cut of that path fails the probe. Not
    ``health.probe_source_address``, the monitor's own address for IMAP logins, which such a
    firewall need not admit. Postfix's own setting, not a key of ours (one place for the fact);
    None (the system's choice) when unset or unreadable (no Postfix on this host: warned once).
    Re-read every ``BIND_ADDRESS_CACHE_SECONDS``."""
    key = (postfix_config_dir, protocol)
    cached = _bind_addresses.get(key)
    now = time.monotonic()
    if cached is not None and now < cached[1]:
        return cached[0]
    try:
        address = delivery_bind_address(postfix_config_dir, protocol)
    except PostfixError as exc:
        _warn_unbound_once(str(exc))
        address = None
    _bind_addresses[key] = (address, now + BIND_ADDRESS_CACHE_SECONDS)
    return address


class LoginProbe:
    """The probe account's IMAP LOGIN on the primary, told apart from the primary being down.

    A server that slows logins after failed ones (Dovecot's per-address penalty: 2 s, then up
    to 15 s more, for correct passwords too) would otherwise let anyone who guesses passwords
    from the probe's address fail the site over. So a LOGIN that has not answered within the
    health timeout is "slow to log in" (a warning: the result is ok, with the reason) and is
    waited for across rounds; it counts as down only when it fails, or when it has not answered
    within ``timeout_seconds + login_penalty_seconds``, longer than any penalty. The greeting
    and TLS are probed without a login every round (``probe_primary``), so a primary that is
    really gone is still noticed within the timeout. The probe password is re-read for each
    LOGIN, so a rotated secret needs no restart.

    With ``health.imap_login_method = "sync"`` (``sync.login_method = "xoauth2"`` only) the
    probe opens ``health.imap_login``'s mailbox as failback does: AUTHENTICATE XOAUTH2 as the
    probe with the probe mailbox's own token from ``[sync]``'s app (Microsoft 365: the
    app-only token; Google: the service account's token for the probe as subject), from the
    token cache failback uses. A token endpoint that refuses, cannot be reached or does not
    answer within the health timeout says nothing about the primary: that round's login is
    not tried (a warning in status), never a failure that could fail the site over; the
    LOGIN's clock starts once the token is in hand.
    """

    def __init__(self, config: Config, tls: TLSPolicy) -> None:
        self.config = config
        self.tls = tls
        self._task: asyncio.Task[None] | None = None
        self._fetch: asyncio.Future[str] | None = None
        self._started: float | None = None
        self._noted = False

    def _start(self) -> bool:
        config = self.config
        login = config.health.imap_login
        if login is None:
            return False
        key = "sync.password_file" if config.health.imap_login_method == "sync" \
            else "health.imap_password_file"
        try:
            password = read_secret(config, key)
        except ConfigError as exc:
            # A mistake on this host (the file's mode, a missing file) says nothing about the
            # primary: probe without LOGIN rather than fail the primary over.
            _warn_once(str(exc), key)
            return False
        self._started = None
        self._noted = False
        if config.health.imap_login_method == "sync":
            self._task = asyncio.create_task(self._as_sync_logs_in(login, password))
        else:
            self._task = asyncio.create_task(self._logs_in(login, password))
        return True

    async def _logs_in(self, login: str, password: str) -> None:
        self._started = time.perf_counter()
        await probe_imap(self.config.primary.imap, self.tls, login, password,
                         self.config.health.probe_source_address)

    async def _as_sync_logs_in(self, user: str, secret: str) -> None:
        """AUTHENTICATE XOAUTH2 as ``user`` with its token from ``[sync]``'s app (config
        allows ``imap_login_method = "sync"`` with ``sync.login_method = "xoauth2"`` only:
        with a password method the probe logs in as a mailbox of its own); the response is
        mail.oauth2's, as failback's and sieve-sync's."""
        tokens = oauth2_tokens(self.config, secret)
        token = await self._token(tokens, user)
        self._started = time.perf_counter()
        try:
            await probe_imap(self.config.primary.imap, self.tls, user, None,
                             self.config.health.probe_source_address,
                             ("XOAUTH2", sasl_response("XOAUTH2", user, token)))
        except ProbeError:
            tokens.forget(user, token)  # revoked or expired early: the next round asks again
            raise

    async def _token(self, tokens: AccessTokens, user: str) -> str:
        """The probe mailbox's token, waited for at most the health timeout: a token endpoint
        that hangs says nothing about the primary (TokenError: "login not tried"). The fetch
        runs on in its thread (a thread cannot be cancelled; it holds the cache's lock until
        ``sync.timeout_seconds``): later rounds wait for that same fetch, not a new thread
        each queued on the lock. A daemon thread: a one-shot probe's exit does not wait for
        it, as it would for the event loop's executor."""
        timeout = self.config.health.timeout_seconds
        if self._fetch is None or self._fetch.done():
            self._fetch = _in_daemon_thread(functools.partial(tokens.token, user))
        try:
            return await asyncio.wait_for(asyncio.shield(self._fetch), timeout)
        except TimeoutError:
            raise TokenError(f"OAuth2 token endpoint {tokens.endpoint.url} gave no token"
                             f" within {timeout:g}s (health.timeout_seconds); check"
                             " sync.oauth2_token_url and that this host reaches it") from None

    async def round(self) -> ProbeResult | None:
        """This round's verdict on the LOGIN (None: no probe account, or its secret is
        unusable); waits at most the health timeout."""
        health = self.config.health
        if self._task is None and not self._start():
            return None
        task = self._task
        assert task is not None
        await asyncio.wait({task}, timeout=health.timeout_seconds)
        # The LOGIN's clock starts once its token is in hand (``_started``): a slow token
        # endpoint is not the primary being slow to log in.
        waited = 0.0 if self._started is None else time.perf_counter() - self._started
        limit = health.timeout_seconds + health.login_penalty_seconds
        target = str(self.config.primary.imap)
        source = health.probe_source_address or "this host's address"

        def result(ok: bool, error: str) -> ProbeResult:
            return ProbeResult("imap_login", target, ok, round(waited * 1000, 3), error,
                               time.time())

        if not task.done() and self._started is None:
            # The token fetch is at its own bound (health.timeout_seconds) just as this round
            # ends: the next round has the token or the TokenError.
            return result(True, "login not tried: waiting for the OAuth2 token")
        if not task.done():
            if waited < limit:
                if not self._noted:
                    self._noted = True
                    log.warning("event=primary_slow_login waited_s=%.1f source=%s"
                                " action=check_the_primarys_log_for_failed_logins_from_source",
                                waited, source)
                return result(True, f"slow to log in: no answer to LOGIN for {waited:.1f}s"
                              f" (down only after {limit:g}s): a login penalty for failed"
                              f" logins from {source}?")
            self.close()
            return result(False, f"no answer to LOGIN within {limit:g}s, longer than any"
                          " login penalty")
        self._task = None
        error = task.exception()
        if isinstance(error, TokenError):
            log.warning("event=probe_login_no_token reason=%r action=check_the_[sync]_oauth2_keys",
                        str(error))
            return result(True, f"login not tried: no OAuth2 token ({error})")
        if error is not None:
            return result(False, f"{type(error).__name__}: {error}")
        if waited > health.timeout_seconds:
            return result(True, f"slow to log in: LOGIN answered after {waited:.1f}s")
        return result(True, "")

    def close(self) -> None:
        """Stop a LOGIN still waiting (the monitor stops, or a one-shot probe is done)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _in_daemon_thread(call: Callable[[], str]) -> asyncio.Future[str]:
    """``call()`` in a daemon thread of its own, its result as a future of the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def settle(value: str | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value or "")

    def run() -> None:
        value: str | None = None
        error: BaseException | None = None
        try:
            value = call()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, value, error)

    # A failure nobody waits for any more (the round gave up on it) is not an unretrieved one.
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    threading.Thread(target=run, name="probe-oauth2-token", daemon=True).start()
    return future


@functools.lru_cache(maxsize=16)
def _warn_unbound_once(reason: str) -> None:
    log.warning("event=delivery_probe_source_unknown reason=%r action=check"
                " gateway.postfix_config_dir (the probe connects from the system's choice)",
                reason)


@functools.lru_cache(maxsize=16)
def _warn_once(reason: str, key: str = "health.imap_password_file") -> None:
    """Each distinct problem once per process, not once per probe round."""
    log.warning("event=probe_login_skipped reason=%s action=fix %s", reason, key)


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
