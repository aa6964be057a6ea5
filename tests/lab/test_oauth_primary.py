"""XOAUTH2 logins to the primary (issue 15): failback, verify and the drill's preflight log in
with app-only tokens from a token endpoint, as against Microsoft 365. The lab's token service
issues client-credentials tokens; the primary Dovecot's oauth2 passdb validates them there."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.config import load_config
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.oauth2 import (
    LAB_OAUTH2_CLIENT_ID,
    TokenService,
    dovecot_oauth2_passdb,
    running_token_service,
)
from mailcontinuity.lab.scenario import OutageScenario, restored
from mailcontinuity.mail.oauth2 import (
    EXPIRY_MARGIN_SECONDS,
    ClientCredentialsTokens,
    TokenEndpoint,
    TokenError,
)
from mailcontinuity.outage.primary import PrimaryError, connect, read_admin_password
from tests.lab.policyd_helpers import back_to_normal

SECRET = "lab-client-secret-0123456789"


@dataclass
class OAuthLab:
    lab: Lab
    service: TokenService
    url: str
    config_file: Path
    """The lab's configuration with ``[sync] login_method = "xoauth2"``."""


def xoauth2_config(lab: Lab, directory: Path, url: str, secret: str,
                   grant: str = "client_credentials",
                   client_id: str = LAB_OAUTH2_CLIENT_ID) -> Path:
    """The lab's configuration with ``[sync] login_method = "xoauth2"``: the client secret, or
    with ``jwt_bearer`` the service account's JSON key, in a 0600 file."""
    secret_file = directory / "oauth2-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    text = lab.config_file.read_text()
    text = re.sub(r'(?m)^login_method = .*$\n?', "", text)
    scope = '\noauth2_scope = "https://mail.google.com/"' if grant == "jwt_bearer" else ""
    text = re.sub(r"(?m)^password_file = (.*admin-password.*)$",
                  f'login_method = "xoauth2"\npassword_file = "{secret_file}"\n'
                  f'oauth2_grant = "{grant}"\noauth2_token_url = "{url}/token"\n'
                  f'oauth2_client_id = "{client_id}"{scope}', text)
    path = directory / "mailcontinuity.toml"
    path.write_text(text)
    return path


@pytest.fixture
def oauth_lab(lab: Lab, tmp_path: Path) -> Iterator[OAuthLab]:
    """The lab's primary validating XOAUTH2 tokens with a running token service."""
    if lab.primary_kind != "dovecot":
        pytest.skip("the oauth2 passdb is Dovecot's")
    back_to_normal(lab)
    conf = lab.primary.config_file
    original = conf.read_text()
    with running_token_service(SECRET, "example.test") as (service, url):
        passdb = dovecot_oauth2_passdb(lab.primary.root / "oauth2.conf.ext", url)
        userdb_at = original.index("userdb {")
        conf.write_text(original[:userdb_at].replace(
            "auth_mechanisms = plain login", "auth_mechanisms = plain login xoauth2")
            + passdb + original[userdb_at:])
        reload_primary(lab, xoauth2=True)
        try:
            yield OAuthLab(lab, service, url, xoauth2_config(lab, tmp_path, url, SECRET))
        finally:
            conf.write_text(original)
            reload_primary(lab, xoauth2=False)
            lab.part("sync-agent").start()
            back_to_normal(lab)


def reload_primary(lab: Lab, xoauth2: bool) -> None:
    """SIGHUP: Dovecot re-reads its configuration with its listeners up (a restart would be an
    outage the monitor fails over for)."""
    pid = lab.primary.pid()
    assert pid is not None
    os.kill(pid, signal.SIGHUP)

    def offered() -> bool:
        with socket.create_connection(tuple(lab.endpoint("primary", "imap")), timeout=5) as sock:
            return (b"AUTH=XOAUTH2" in sock.recv(4096)) == xoauth2

    eventually(offered, 15, f"the primary {'offers' if xoauth2 else 'no longer offers'} XOAUTH2")


def cli(config_file: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config_file), *args])
    return result.exit_code, result.stdout


def test_failback_verify_and_the_drill_log_in_with_xoauth2(oauth_lab: OAuthLab) -> None:
    lab, service = oauth_lab.lab, oauth_lab.service
    with restored(lab):
        scenario = OutageScenario(lab)
        scenario.before_outage()
        scenario.force_failover()
        scenario.during_outage()
        scenario.activity_on_standby()
        eventually(lambda: json.loads(cli(lab.config_file, "status", "--json")[1])["outage"]
                   ["activity"]["new_messages"] >= 8, 15, "the agent's record of the outage")
        # The lab's agent logs in as a master user: stopped, the merge is the CLI's, by XOAUTH2.
        lab.part("sync-agent").stop()

        code, out = cli(oauth_lab.config_file, "failback", "--yes", "--json")
        assert code == 0, out
        report = json.loads(out)
        assert report["state"] == "normal" and report["refused"] == [], report
        checked = scenario.check_primary()
        assert (checked.lost, checked.duplicated, checked.misplaced) == ([], [], [])
        code, out = cli(oauth_lab.config_file, "verify", "--json")
        assert code == 0 and json.loads(out)["ok"], out

    # Every login was XOAUTH2, with tokens the service issued and Dovecot had it validate; one
    # token served every user and both commands (cached until it nears expiry).
    log = lab.primary.log_file.read_text(errors="replace")
    assert re.search(r"imap-login: Info: Login: user=<alice@example.test>, method=XOAUTH2", log), \
        "no XOAUTH2 login in the primary's log"
    assert service.issued == 1
    assert service.introspected >= len({user.address for user in lab.users[:2]})


def test_the_drill_checks_the_xoauth2_credentials(oauth_lab: OAuthLab) -> None:
    code, out = cli(oauth_lab.config_file, "drill", "--json")
    steps = {step["name"]: step for step in json.loads(out)["steps"]}
    step = steps["failback credentials on the primary"]
    assert step["passed"], step


def test_a_wrong_client_secret_is_an_error_naming_the_keys(oauth_lab: OAuthLab,
                                                           tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    config = xoauth2_config(oauth_lab.lab, wrong, oauth_lab.url, "not-it")
    code, out = cli(config, "drill", "--json")
    steps = {step["name"]: step for step in json.loads(out)["steps"]}
    step = steps["failback credentials on the primary"]
    assert not step["passed"], step
    assert "invalid_client" in step["detail"] and "sync.oauth2_client_id" in step["detail"], step


def test_tokens_are_cached_until_near_expiry_and_failures_name_the_keys() -> None:
    now = [1000.0]
    with running_token_service(SECRET, "example.test", lifetime=120) as (service, url):
        tokens = ClientCredentialsTokens(
            TokenEndpoint(f"{url}/token", LAB_OAUTH2_CLIENT_ID, lambda: SECRET, "s", 5),
            clock=lambda: now[0])
        first = tokens.token("alice@example.test")
        assert tokens.token("alice@example.test") == first and service.issued == 1
        now[0] += 120 - EXPIRY_MARGIN_SECONDS  # renewed a margin before it expires
        assert tokens.token("alice@example.test") != first and service.issued == 2
        tokens.forget("alice@example.test")  # refused by the server: the next login asks again
        tokens.token("alice@example.test")
        assert service.issued == 3
        wrong = ClientCredentialsTokens(
            TokenEndpoint(f"{url}/token", LAB_OAUTH2_CLIENT_ID, lambda: "wrong", "s", 5))
        with pytest.raises(TokenError, match="invalid_client.*sync.oauth2_client_id"):
            wrong.token("alice@example.test")
    gone = ClientCredentialsTokens(TokenEndpoint(f"{url}/token", "app", lambda: "x", "s", 5))
    with pytest.raises(TokenError, match="sync.oauth2_token_url"):
        gone.token("alice@example.test")


def test_a_service_account_gets_a_token_per_user_google_style(oauth_lab: OAuthLab,
                                                              tmp_path: Path) -> None:
    lab, service = oauth_lab.lab, oauth_lab.service
    account = service.service_account
    assert account is not None
    config_file = xoauth2_config(lab, tmp_path, oauth_lab.url, account.key_json,
                                 grant="jwt_bearer", client_id=account.email)
    config = load_config(config_file)
    secret = read_admin_password(config)
    before = service.issued
    for user in lab.users[:2]:
        for _ in range(2):  # the second login reuses the user's cached token
            mailbox = connect(config, user.address, secret)
            mailbox.close()
    assert service.issued - before == 2  # one per user (the JWT's subject)
    log = lab.primary.log_file.read_text(errors="replace")
    assert f"Login: user=<{lab.users[1].address}>, method=XOAUTH2" in log
    code, out = cli(config_file, "drill", "--json")
    steps = {step["name"]: step for step in json.loads(out)["steps"]}
    assert steps["failback credentials on the primary"]["passed"], steps

    (tmp_path / "oauth2-secret").write_text('{"client_email": "x"}\n')
    with pytest.raises(PrimaryError, match="sync.password_file: not a service account"):
        connect(config, "carol@example.test", read_admin_password(config))
