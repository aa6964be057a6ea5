"""Hooks: run in order with the transition in their environment, bounded, after routing."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailcontinuity.audit import AuditEntry
from mailcontinuity.cli.main import main
from mailcontinuity.deploy.routing import transport_value
from mailcontinuity.hooks.runner import run_hooks
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.db import open_store
from tests.lab.backends import lab_on_both_stores
from tests.lab.policyd_helpers import back_to_normal
from tests.unit.test_hook_runner import TRANSITION, install

# The transitions and the hooks' audit are in the store: those tests run on both backends; the
# example hook's test runs a hook by hand (no store) on the SQLite lab only.
lab_fixture = lab_on_both_stores()


@pytest.fixture
def lab_hooks(lab: Lab) -> Iterator[Path]:
    hooks_dir = lab.config.hooks_dir
    back_to_normal(lab)
    yield hooks_dir
    for hook in hooks_dir.glob("on-*.d/*"):
        hook.unlink()
    back_to_normal(lab)


def test_transition_runs_hooks_after_routing_switched(lab: Lab, lab_hooks: Path) -> None:
    seen = lab.dir / "hook-saw"
    install(lab_hooks, "failover", "10-check-routing",
            f"#!/bin/sh\ncat {lab.config.gateway.transport_map} > {seen}\n"
            f'echo "$NEW_STATE $MAILCONTINUITY_CONFIG" >> {seen}\n')
    install(lab_hooks, "failover", "20-hangs", "#!/bin/sh\nsleep 60\n")
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "failover",
                                       "--reason", "hook test", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["changed"] is True
    text = seen.read_text()
    assert transport_value(lab.config, "standby") in text
    assert f"failover {lab.config_file}" in text


def test_example_hook_mails_the_administrators(sqlite_lab: Lab, tmp_path: Path) -> None:
    lab = sqlite_lab
    admin = lab.users[2]
    directory = tmp_path / "on-failover.d"
    directory.mkdir()
    (directory / "mail-admins").symlink_to(Path(sys.executable).parent
                                           / "mailcontinuity-hook-mail-admins")
    # Its settings come from the hooks' environment file, as the role writes it.
    (tmp_path / "environment").write_text(f"# admins\nMAILCONTINUITY_ADMINS={admin.address}\n"
                                          f"MAILCONTINUITY_SMTP_RELAY='{lab.gateway.smtp}'\n"
                                          "not a setting\n")
    [result] = run_hooks(tmp_path, TRANSITION, timeout=30)
    assert result.exit_code == 0, result.output

    def delivered() -> bool:
        with imap_login(lab.endpoint("primary", "imap"), admin.login, admin.password) as client:
            client.select_folder("INBOX", readonly=True)
            return bool(client.search(["SUBJECT", "normal -> failover"]))

    eventually(delivered, 30, "administrator's notification in the INBOX")


def test_a_hook_past_its_timeout_stalls_no_probe_nor_heartbeat(lab: Lab, lab_hooks: Path) -> None:
    """The monitor fails over; its on-failover hook sleeps far past hooks_timeout_seconds. The
    hook runs in its own thread: probe rounds and policyd's heartbeat go on meanwhile, the hook
    is killed at its timeout, and its run is audited."""
    began, finished = lab.dir / "hook-began", lab.dir / "hook-finished"
    for marker in (began, finished):
        marker.unlink(missing_ok=True)
    install(lab_hooks, "failover", "10-sleeps", f"#!/bin/sh\ndate +%s.%N > {began}\n"
            f"sleep 60\ntouch {finished}\n")
    timeout = lab.config.hooks_timeout_seconds
    lab.part("primary").stop()
    try:
        eventually(lambda: began.exists() and began.read_text().strip(), 30, "the hook began")
        start = float(began.read_text())
        time.sleep(timeout * 2 / 3)
        report = json.loads(CliRunner().invoke(main, ["--config", str(lab.config_file),
                                                       "status", "--json"]).stdout)
        assert report["primary"]["policyd"]["running"] is True  # its heartbeat is fresh
        assert report["primary"]["policyd"]["last_heartbeat"] > start
        audited = eventually(lambda: hook_audits(lab, start), timeout + 10, "the hook audited")
        assert audited[0].detail["outcome"] == "timed out (killed)"
        assert audited[0].detail["transition"] == "normal -> failover"
        assert timeout <= audited[0].detail["seconds"] < timeout + 5
        rounds = probe_rounds(lab, start, start + timeout)
        interval = lab.config.health.interval_seconds
        assert len(rounds) >= timeout / interval / 2, rounds  # probes went on meanwhile
        assert not finished.exists()
    finally:
        lab.part("primary").start()


def hook_audits(lab: Lab, since: float) -> list[AuditEntry]:
    store = open_store(lab.config)
    try:
        return [entry for entry in audit_log(store, since=since) if entry.event == "hook"]
    finally:
        store.close()


def probe_rounds(lab: Lab, since: float, until: float) -> list[float]:
    store = open_store(lab.config)
    try:
        return [row[0] for row in store.query(
            "SELECT DISTINCT at FROM health_probes WHERE probe = 'delivery' AND at BETWEEN ? AND ?",
            [since, until])]
    finally:
        store.close()
