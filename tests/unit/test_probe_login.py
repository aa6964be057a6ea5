"""The health monitor's login probe with ``imap_login_method = "sync"`` and XOAUTH2: a token
endpoint that cannot be reached says nothing about the primary, so it must never count as a
failed probe (which could fail the site over)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from mailcontinuity.config import Config, load_config
from mailcontinuity.lab.process import free_ports
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.monitor.probes import LoginProbe, delivery_source_address
from mailcontinuity.store.probes import ProbeResult


def _config(tmp_path: Path, token_url: str, imap_port: int, extra_sync: str = "") -> Config:
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(f"""
[state]
path = "{tmp_path / 'state.db'}"
[domains]
protected = ["example.org"]
[primary]
delivery = "smtp:127.0.0.1:{imap_port}"
imap = "127.0.0.1:{imap_port}"
tls = "none"
[standby]
imap = "127.0.0.1:143"
lmtp = "127.0.0.1:24"
[sync]
login_method = "xoauth2"
oauth2_token_url = "{token_url}"
oauth2_client_id = "app"
password_file = "{secret}"
{extra_sync}
[health]
imap_login = "probe@example.org"
imap_login_method = "sync"
timeout_seconds = 1
login_penalty_seconds = 1
""")
    return load_config(path)


def _rounds(config: Config, count: int) -> list[ProbeResult | None]:
    async def rounds() -> list[ProbeResult | None]:
        probe = LoginProbe(config, TLSPolicy.of(config, "primary"))
        try:
            return [await probe.round() for _ in range(count)]
        finally:
            probe.close()

    return asyncio.run(rounds())


def test_no_token_is_a_login_not_tried_not_a_primary_down(tmp_path: Path) -> None:
    closed = free_ports(1)[0]  # nothing listens there: the endpoint is away
    config = _config(tmp_path, f"http://127.0.0.1:{closed}/token", closed)
    [result] = _rounds(config, 1)
    assert result is not None
    assert result.ok and result.error.startswith("login not tried: no OAuth2 token"), result
    assert "sync.oauth2_token_url" in result.error


def test_a_hung_token_endpoint_is_never_a_primary_down(tmp_path: Path) -> None:
    """An endpoint that accepts and never answers (sync.timeout_seconds 30 s) outlives
    health.timeout_seconds + login_penalty_seconds (2 s): every round is still "login not
    tried", never "no answer to LOGIN", and each ends within about the health timeout."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # the kernel accepts; nobody ever reads or answers
    try:
        port = hung.getsockname()[1]
        closed = free_ports(1)[0]
        config = _config(tmp_path, f"http://127.0.0.1:{port}/token", closed,
                         "timeout_seconds = 30")
        started = time.monotonic()
        results = _rounds(config, 4)
        elapsed = time.monotonic() - started
    finally:
        hung.close()
    assert elapsed < 10, elapsed  # four rounds of about 1 s, not a 30 s token fetch
    for result in results:
        assert result is not None and result.ok, results
        assert result.error.startswith("login not tried"), results
        assert "LOGIN" not in result.error, results
    assert any("within 1s (health.timeout_seconds)" in r.error for r in results if r), results


def test_the_delivery_probe_comes_from_where_postfix_delivers(tmp_path: Path) -> None:
    """The delivery probe binds the gateway Postfix's lmtp_bind_address/smtp_bind_address (the
    mail's own path, which a primary's firewall admits), not health.probe_source_address; with
    neither set, or no Postfix there, the system chooses (unbound, as before)."""
    etc = tmp_path / "postfix"
    etc.mkdir()
    (etc / "main.cf").write_text("lmtp_bind_address = 127.0.1.7\n")
    assert delivery_source_address(etc, "lmtp") == "127.0.1.7"
    assert delivery_source_address(etc, "smtp") is None
    assert delivery_source_address(tmp_path / "absent", "lmtp") is None
