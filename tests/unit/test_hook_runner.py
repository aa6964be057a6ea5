"""The hook runner: hooks run in order with the transition in their environment, bounded."""

from __future__ import annotations

import time
from pathlib import Path

from mailcontinuity.hooks.runner import HookQueue, HookResult, Transition, run_hooks
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


def test_the_queue_runs_hooks_in_order_without_making_the_caller_wait(tmp_path: Path) -> None:
    log = tmp_path / "log"
    install(tmp_path, "failover", "slow", f"#!/bin/sh\nsleep 1\necho \"$NEW_STATE\" >> {log}\n")
    install(tmp_path, "failback", "quick", f"#!/bin/sh\necho \"$NEW_STATE\" >> {log}\n")
    finished: list[tuple[str, list[int | None]]] = []
    hooks = HookQueue(tmp_path, 10, {}, lambda t, results: finished.append(
        (t.new_state, [r.exit_code for r in results])))
    started = time.monotonic()
    assert hooks.submit(TRANSITION)
    assert hooks.submit(Transition("failover", "failback", "healthy", "health-monitor", 0.0))
    assert time.monotonic() - started < 0.5  # the caller goes on at once
    eventually(lambda: len(finished) == 2, 10, "both transitions' hooks done")
    assert finished == [("failover", [0]), ("failback", [0])]
    assert log.read_text() == "failover\nfailback\n"
    hooks.close(5)


def test_a_hook_past_its_timeout_is_reported_and_a_full_queue_refuses(tmp_path: Path) -> None:
    install(tmp_path, "failover", "hangs", "#!/bin/sh\nsleep 60\n")
    finished: list[list[HookResult]] = []
    hooks = HookQueue(tmp_path, 0.5, {}, lambda _, results: finished.append(results),
                      max_pending=1)
    assert hooks.submit(TRANSITION)
    eventually(lambda: hooks._running is not None, 5, "the hook running")
    assert hooks.submit(TRANSITION)  # waits behind the running one
    assert not hooks.submit(TRANSITION)  # one waiting is all this queue takes
    eventually(lambda: len(finished) == 2, 10, "both runs finished")
    assert all(r.timed_out and r.exit_code is None and r.seconds >= 0.5
               for results in finished for r in results)
    hooks.close(5)


def test_closing_kills_a_hook_still_running_after_the_wait(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    install(tmp_path, "failover", "hangs", f"#!/bin/sh\necho $$ > {pid_file}\nsleep 60\n")
    hooks = HookQueue(tmp_path, 60, {}, lambda _, __: None)
    hooks.submit(TRANSITION)
    eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), 5, "the hook started")
    started = time.monotonic()
    hooks.close(0.5)
    assert time.monotonic() - started < 5
    eventually(lambda: not pid_alive(int(pid_file.read_text())), 5, "the hook killed")
