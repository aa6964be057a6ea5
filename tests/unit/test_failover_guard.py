"""The monitor holds a failover while the standby fails its checks, and audits each hold."""

from __future__ import annotations

from pathlib import Path

from mailcontinuity.monitor.detector import Decision
from mailcontinuity.monitor.guard import HELD, HOLD_ENDED, FailoverGuard
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.checks import Check
from mailcontinuity.store.db import SQLiteStore

FAILOVER = Decision("failover", "primary failed 3 probe rounds", ("normal", "failback"))
FAILBACK = Decision("failback", "primary healthy", ("failover",))


def standby(ok: bool, at: float) -> list[Check]:
    return [Check("standby", "lmtp", "127.0.0.1:24", ok, at, "" if ok else "refused"),
            Check("standby", "imap", "127.0.0.1:143", True, at),
            Check("standby", "submission", "127.0.0.1:587", False, at, "refused")]


def test_failover_waits_for_the_standby_and_then_proceeds(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    guard = FailoverGuard(store)
    assert guard.review(FAILOVER, standby(False, 10.0), 10.0) is None
    assert guard.review(FAILOVER, standby(False, 12.0), 12.0) is None
    assert guard.review(FAILOVER, standby(True, 14.0), 14.0) == FAILOVER
    entries = [e for e in audit_log(store) if e.event in (HELD, HOLD_ENDED)]
    assert [e.event for e in entries] == [HELD, HOLD_ENDED]  # one hold, audited once
    assert "lmtp 127.0.0.1:24: refused" in entries[0].detail["standby"]
    assert entries[1].detail["held_seconds"] == 4.0 and "failing over" in entries[1].cause
    store.close()


def test_a_hold_ends_when_the_primary_comes_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    guard = FailoverGuard(store)
    assert guard.review(FAILOVER, standby(False, 1.0), 1.0) is None
    assert guard.review(None, standby(False, 2.0), 2.0) is None
    assert guard.held_since is None
    [_, ended] = [e for e in audit_log(store) if e.event in (HELD, HOLD_ENDED)]
    assert "no failover needed" in ended.cause
    store.close()


def test_only_failover_is_held_and_submission_alone_does_not_hold_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    guard = FailoverGuard(store)
    assert guard.review(FAILBACK, standby(False, 1.0), 1.0) == FAILBACK
    assert guard.review(FAILOVER, standby(True, 2.0), 2.0) == FAILOVER  # submission failing
    assert guard.review(FAILOVER, None, 3.0) == FAILOVER  # no checks: nothing to judge by
    assert not [e for e in audit_log(store) if e.event == HELD]
    store.close()
