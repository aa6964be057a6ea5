"""Watching the parts a failover depends on: the standby's listeners, the milter, the webmail.

Each round, beside the primary's probes, the health monitor checks what continuity needs:

- the standby: LMTP (it takes inbound mail in failover and journal copies always), IMAP (users
  read there; with the drill's probe account, a real login) and submission (users send), each
  probed as a client would, like the primary;
- the milter: it negotiates as Postfix would, and for a unix socket, Postfix's user may reach it;
- the webmail (``standby.webmail``), when there is one: it answers HTTP.

The results are written to the state store (``store.checks``), where ``status`` and the metrics
read them. ``standby_ready`` is what the monitor asks before it fails over: a standby that cannot
take mail or serve it is no better a place for mail than Postfix's queue.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pwd
import ssl
import urllib.error
import urllib.request
from collections.abc import Awaitable
from pathlib import Path

from mailcontinuity.config import (
    Config,
    ConfigError,
    DeliveryEndpoint,
    UnixSocket,
    client_tls_context,
    read_secret,
)
from mailcontinuity.mail.milter import negotiate
from mailcontinuity.mail.postfix import postfix_access_problem
from mailcontinuity.mail.smtp import SmtpSession
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.monitor.probes import ProbeError, probe_delivery, probe_imap
from mailcontinuity.monitor.probes import _timed as _timed_probe
from mailcontinuity.store.checks import Check

log = logging.getLogger(__name__)

# What failover needs of the standby: it must take the mail and let users read it. Submission
# matters too (its failure is reported), but without it failing over still beats mail waiting.
FAILOVER_NEEDS = ("lmtp", "imap")

STANDBY_ACTION = ("start the standby's Dovecot and check that {endpoint} answers from this"
                  " host (firewall, listener address); until then failover is held and journal"
                  " copies wait in the spool")
ACTIONS = {
    ("standby", "lmtp"): STANDBY_ACTION,
    ("standby", "imap"): STANDBY_ACTION,
    ("standby", "submission"): "users cannot send from the standby in an outage: check Dovecot's"
    " submission service at {endpoint} (standby.submission) and its TLS certificate",
    ("milter", "socket"): "check that the journal milter runs ('systemctl status"
    " mailcontinuity-milter') and that Postfix can reach milter.listen ({endpoint}); until then"
    " mail flows without journal copies and the standby's history has a gap",
    ("webmail", "http"): "start the webmail on the standby ({endpoint}, standby.webmail): users"
    " without a mail client have no access during an outage",
}


def action(part: str, name: str, endpoint: str) -> str:
    return ACTIONS[(part, name)].format(endpoint=endpoint)


async def check_standby(config: Config, tls: TLSPolicy) -> list[Check]:
    """What failover needs of the standby (``FAILOVER_NEEDS``), checked now: for an
    operator's ``failover``, which must not wait for the monitor's next round."""
    return list(await asyncio.gather(*_standby_checks(config, tls)))


def _standby_checks(config: Config, tls: TLSPolicy) -> list[Awaitable[Check]]:
    standby = config.standby
    timeout = config.health.timeout_seconds
    return [
        _timed("standby", "lmtp", str(standby.lmtp),
               probe_delivery(DeliveryEndpoint("lmtp", standby.lmtp), tls), timeout),
        _timed("standby", "imap", str(standby.imap), _probe_standby_imap(config, tls), timeout),
    ]


async def check_watched_parts(config: Config, tls: TLSPolicy) -> list[Check]:
    """Every watched part's checks at once, each bounded by the health timeout."""
    standby = config.standby
    timeout = config.health.timeout_seconds
    checks: list[Awaitable[Check]] = [
        *_standby_checks(config, tls),
        _timed("milter", "socket", str(config.milter.listen), _probe_milter(config), timeout),
    ]
    if standby.submission is not None:
        checks.append(_timed("standby", "submission", str(standby.submission),
                             probe_submission(config, tls), timeout))
    if standby.webmail is not None:
        checks.append(_timed("webmail", "http", standby.webmail,
                             asyncio.to_thread(probe_http, standby.webmail,
                                               standby.tls_ca_file, timeout), timeout))
    return list(await asyncio.gather(*checks))


def standby_ready(checks: list[Check]) -> tuple[bool, str]:
    """Whether the standby can take over (its LMTP and IMAP answer), and if not, why."""
    failing = [f"{check.name} {check.target}: {check.detail}" for check in checks
               if check.part == "standby" and check.name in FAILOVER_NEEDS and not check.ok]
    return not failing, "; ".join(failing)


async def probe_submission(config: Config, tls: TLSPolicy) -> None:
    """The standby's submission: greeting, EHLO, TLS, and AUTH offered inside it."""
    endpoint = config.standby.submission
    assert endpoint is not None
    session = await SmtpSession.open(endpoint, "smtp", tls, implicit=tls.implicit)
    try:
        if "AUTH" not in session.extensions:
            raise ProbeError("submission offers no AUTH (users could not log in to send)")
    finally:
        await session.quit()


async def _probe_standby_imap(config: Config, tls: TLSPolicy) -> None:
    """The standby's IMAP, logged into with the drill's probe account when there is one: the
    account exists on both sides for exactly this kind of test."""
    login, password = config.drill.probe_address, None
    if login is not None:
        try:
            password = read_secret(config, "drill.probe_password_file")
        except ConfigError as exc:
            _warn_once(str(exc))
            login = None
    await probe_imap(config.standby.imap, tls, login, password)


async def _probe_milter(config: Config) -> None:
    listen = config.milter.listen
    try:
        await negotiate(listen)
    except PermissionError:
        user = pwd.getpwuid(os.geteuid()).pw_name
        raise ProbeError(f"this process (user {user}) may not connect to {listen}: give it"
                         f" the socket's group ({config.milter.socket_group}), as the Ansible"
                         " role gives policyd's unit") from None
    if isinstance(listen, UnixSocket) and config.milter.socket_group is not None:
        problem = postfix_access_problem(listen.path)
        if problem is not None:
            raise ProbeError(f"Postfix cannot reach the socket: {problem}; see milter"
                             ".socket_group and milter.socket_mode")


def probe_http(url: str, ca_file: Path | None, timeout: float) -> None:
    """A GET of the webmail's page: any answer below 400 (a login page, a redirect to it)."""
    context = client_tls_context(ca_file) if url.startswith("https:") else None
    request = urllib.request.Request(url, headers={"User-Agent": "mailcontinuity-monitor"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            response.read(1024)
    except urllib.error.HTTPError as exc:
        raise ProbeError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLError):
            raise ProbeError(f"TLS: {reason}") from None
        raise ProbeError(str(reason)) from None


@functools.lru_cache(maxsize=16)
def _warn_once(reason: str) -> None:
    log.warning("event=standby_probe_login_skipped reason=%s action=fix"
                " drill.probe_password_file", reason)


async def _timed(part: str, name: str, target: str, check: Awaitable[None],
                 timeout: float) -> Check:
    """Run and time one check, bounded, as the primary's probes are (``monitor.probes``)."""
    result = await _timed_probe(name, target, check, timeout)
    return Check(part, name, target, result.ok, result.at, result.error,
                 "" if result.ok else action(part, name, target), result.latency_ms)
