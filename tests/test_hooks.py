"""Hooks: run in order with the transition in their environment, bounded, after routing."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.hooks.runner import Transition, run_hooks
from mailcontinuity.lab import Lab
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.store.heartbeats import pid_alive
from tests.policyd_helpers import back_to_normal, eventually

TRANSITION = Transition("normal", "failover", "primary failed 3 probes", "health-monitor",
                        1795325361.0)


def install(hooks_dir: Path, state: str, name: str, script: str, executable: bool = True) -> Path:
    directory = hooks_dir / f"on-{state}.d"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(script)
    path.chmod(0o755 if executable else 0o644)
    return path


def test_hooks_get_the_transition_and_a_failure_stops_nothing(tmp_path: Path) -> None:
    record = tmp_path / "record"
    install(tmp_path, "failover", "10-fails", "#!/bin/sh\necho about to fail\nexit 3\n")
    install(tmp_path, "failover", "20-record",
            f'#!/bin/sh\necho "$OLD_STATE|$NEW_STATE|$CAUSE|$ACTOR|$TIME" > {record}\n')
    install(tmp_path, "failover", "30-not-executable", "#!/bin/sh\nexit 0\n", executable=False)
    install(tmp_path, "failback", "10-other-state", f"#!/bin/sh\ntouch {tmp_path}/wrong\n")
    results = run_hooks(tmp_path, TRANSITION, timeout=10)
    assert [(r.hook.name, r.exit_code) for r in results] == [("10-fails", 3), ("20-record", 0)]
    assert results[0].output == "about to fail\n"
    assert record.read_text() == ("normal|failover|primary failed 3 probes|health-monitor|"
                                  "2026-11-22T05:29:21Z\n")
    assert not (tmp_path / "wrong").exists()


def test_a_hanging_hook_is_killed_with_its_children_at_the_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    install(tmp_path, "failover", "hangs", f"#!/bin/sh\nsleep 60 &\necho $! > {pid_file}\nwait\n")
    install(tmp_path, "failover", "then-me", "#!/bin/sh\necho still ran\n")
    started = time.monotonic()
    hung, after = run_hooks(tmp_path, TRANSITION, timeout=1)
    assert time.monotonic() - started < 5
    assert hung.exit_code is None and after.output == "still ran\n"
    child = int(pid_file.read_text())
    eventually(lambda: not pid_alive(child), 5, "the hook's child killed")


def test_no_hooks_directory_means_no_hooks(tmp_path: Path) -> None:
    assert run_hooks(tmp_path / "absent", TRANSITION, timeout=1) == []


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
    assert f"lmtp:inet:[127.0.0.1]:{lab.config.standby.lmtp.port}" in text
    assert f"failover {lab.config_file}" in text


def test_example_hook_mails_the_administrators(lab: Lab, tmp_path: Path) -> None:
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
