"""The portal's banner status file and the Roundcube lines that enable the banner and
managesieve (issue 18): pure logic, plus ``php -l`` on the shipped plugin."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mailcontinuity.config import Config, ConfigError, Endpoint, load_config
from mailcontinuity.deploy.portal import (
    BANNER_PLUGIN,
    BANNER_PLUGIN_NAME,
    PortalStatus,
    portal_status,
    roundcube_portal_php,
)
from mailcontinuity.store.db import open_store
from mailcontinuity.store.state import State, current_state, transition

CONFIG = """
[state]
path = "{state}"
[domains]
protected = ["example.org"]
[primary]
delivery = "lmtp:mail.example.org:24"
imap = "mail.example.org:143"
[standby]
imap = "standby.example.org:143"
lmtp = "standby.example.org:24"
[portal]
status_file = "{status}"
contact = "IT service desk, +1 555 0100"
"""


def make_config(tmp_path: Path, extra: str = "") -> Config:
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state.db", status=tmp_path / "portal"
                                  / "status.json") + extra)
    return load_config(path)


def test_normal_state_carries_no_texts(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert portal_status(config, State("normal", 10.0, "x", "y"), None) == {
        "state": "normal", "since": 10.0}


def test_failover_carries_the_outage_start_and_the_texts(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    status = portal_status(config, State("failback", 200.0, "recovered", "monitor"),
                           {"start": 100.0, "cause": "primary failed 3 probes", "actor": "m"})
    assert status["state"] == "failback" and status["since"] == 100.0
    assert status["contact_line"] == "Contact: IT service desk, +1 555 0100"
    assert status["login_text"] == config.portal.login_text
    # The cause (host names, probe details) is for operators, never for the portal.
    assert "probes" not in json.dumps(status)


def test_the_agent_writes_the_file_at_each_change_only(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = config.portal.status_file
    assert path is not None
    store = open_store(config)
    try:
        follower = PortalStatus(config)
        follower.follow(store, current_state(store))
        assert json.loads(path.read_text())["state"] == "normal"
        assert path.stat().st_mode & 0o777 == 0o644
        path.write_text("{}")  # not rewritten while the state stays the same
        follower.follow(store, current_state(store))
        assert path.read_text() == "{}"
        transition(store, "failover", "primary down", "test")
        follower.follow(store, current_state(store))
        status = json.loads(path.read_text())
        assert status["state"] == "failover"
        assert status["outage_text"] == config.portal.outage_text
        assert [p.name for p in path.parent.iterdir()] == ["status.json"]  # no temporary left
    finally:
        store.close()


def test_an_unwritable_status_file_is_logged_and_retried(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path)
    assert config.portal.status_file is not None
    config.portal.status_file.parent.write_text("a file where the directory should be")
    store = open_store(config)
    try:
        follower = PortalStatus(config)
        follower.follow(store, current_state(store))
        assert "event=portal_status_failed" in caplog.text
        assert follower.written is None
    finally:
        store.close()


def test_roundcube_lines_enable_the_banner_and_managesieve(tmp_path: Path) -> None:
    lines = roundcube_portal_php(Path("/var/lib/mailcontinuity/portal/status.json"),
                                 Endpoint("127.0.0.1", 4190))
    assert f"$config['plugins'][] = '{BANNER_PLUGIN_NAME}';" in lines
    assert "$config['managesieve_host'] = '127.0.0.1:4190';" in lines
    assert "$config['managesieve_vacation'] = 1;" in lines
    assert roundcube_portal_php(None, None) == ""


def test_texts_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="portal.outage_text"):
        make_config(tmp_path, 'outage_text = ""\n')


@pytest.mark.skipif(shutil.which("php") is None, reason="php is not installed")
def test_the_plugin_is_valid_php(tmp_path: Path) -> None:
    plugin = tmp_path / f"{BANNER_PLUGIN_NAME}.php"
    plugin.write_text(BANNER_PLUGIN)
    result = subprocess.run(["php", "-l", str(plugin)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
