"""The health monitor's login probe with ``imap_login_method = "sync"`` and XOAUTH2: a token
endpoint that cannot be reached says nothing about the primary, so it must never count as a
failed probe (which could fail the site over)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailcontinuity.config import load_config
from mailcontinuity.lab.process import free_ports
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.monitor.probes import LoginProbe


def test_no_token_is_a_login_not_tried_not_a_primary_down(tmp_path: Path) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    closed = free_ports(1)[0]  # nothing listens there: the endpoint is away
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(f"""
[state]
path = "{tmp_path / 'state.db'}"
[domains]
protected = ["example.org"]
[primary]
delivery = "smtp:127.0.0.1:{closed}"
imap = "127.0.0.1:{closed}"
tls = "none"
[standby]
imap = "127.0.0.1:143"
lmtp = "127.0.0.1:24"
[sync]
login_method = "xoauth2"
oauth2_token_url = "http://127.0.0.1:{closed}/token"
oauth2_client_id = "app"
password_file = "{secret}"
[health]
imap_login = "probe@example.org"
imap_login_method = "sync"
timeout_seconds = 5
""")
    config = load_config(path)

    async def one_round() -> object:
        probe = LoginProbe(config, TLSPolicy.of(config, "primary"))
        try:
            return await probe.round()
        finally:
            probe.close()

    result = asyncio.run(one_round())
    assert result is not None
    assert result.ok and result.error.startswith("login not tried: no OAuth2 token"), result
    assert "sync.oauth2_token_url" in result.error
