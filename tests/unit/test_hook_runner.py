"""The hook runner: hooks run in order with the transition in their environment, bounded."""

from __future__ import annotations

import time
from pathlib import Path

from mailcontinuity.hooks.runner import Transition, run_hooks
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.store.heartbeats import pid_alive

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
