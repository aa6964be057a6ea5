"""``prune``'s store side: old rows go, counters stay, nothing still needed is touched."""

from __future__ import annotations

import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcontinuity.config import Config
from mailcontinuity.mail.maildir import MessageFile
from mailcontinuity.store.audit import audit_log, record_command
from mailcontinuity.store.db import SQLiteStore, open_store
from mailcontinuity.store.journal import (
    CopyRecord,
    forget_before,
    journal_summary,
    mark_pruned,
    prunable,
    record_alarm,
    record_copies,
)
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.store.retention import DAY_SECONDS, forget_old_records

NOW = time.time()
OLD = NOW - 100 * DAY_SECONDS  # beyond the default 90 days of [state] retention_days


def message(key: str, journal: bool) -> MessageFile:
    return MessageFile(folder="INBOX", basename=key, filename=key, path=Path("/x") / key,
                       flags=(), key=key, journal=journal, size=1, mtime=0.0,
                       message_id=f"<{key}>")


def test_old_records_are_forgotten_and_counters_do_not_go_down(store_config: Config) -> None:
    config = store_config
    store = open_store(config)
    try:
        record_copies(store, [
            CopyRecord("old", "a@example.org", "INBOX", "pruned", OLD),
            CopyRecord("gone", "b@example.org", "INBOX", "unknown", OLD),
            CopyRecord("new", "a@example.org", "INBOX", "shipped", NOW),
        ])
        store.execute("UPDATE journal SET recorded = ? WHERE message_id IN ('old', 'gone')",
                      [OLD])
        record_alarm(store, "ship_error", "standby down long ago")
        store.execute("UPDATE journal_alarm SET at = ?", [OLD])
        record_command(store, "failover", "root", {"outcome": "ok"}, "local")
        store.execute("UPDATE audit SET at = ?", [NOW - 500 * DAY_SECONDS])
        record_command(store, "status", "root", {"outcome": "ok"}, "local")
        changelog = ChangeLog(store)
        merged = changelog.start_outage()
        with store.transaction():
            changelog.upsert_file(merged.id, "a@example.org", message("hist", True), True)
            changelog.upsert_file(merged.id, "a@example.org", message("new", False), False)
            changelog.record_folder(merged.id, "a@example.org", "INBOX", True, True)
        changelog.checkpoint(merged.id, "a@example.org", [("append|INBOX|new|", "done", {})])
        changelog.set_outage(merged.id, status="merged", merged_at=OLD, summary={"n": 1})
        current = changelog.start_outage()
        with store.transaction():
            changelog.upsert_file(current.id, "a@example.org", message("hist", True), True)
        before = journal_summary(store)

        forgotten = forget_old_records(config, store, now=NOW)

        assert forgotten == {"journal_rows": 3, "outage_detail_rows": 3, "audit_rows": 1}
        after = journal_summary(store)
        for counter in ("shipped", "pruned", "failed", "ship_errors"):
            assert after[counter] == before[counter], counter
        assert after["unknown_recipients"] == [] and before["unknown_recipients"]
        assert [entry.cause for entry in audit_log(store)] == ["status"]
        # The merged outage keeps its summary and its outage mail (a later outage must know
        # the message was merged); the open outage is untouched.
        assert changelog.last_outage() is not None
        assert [m.key for m in changelog.messages(merged.id)] == ["new"]
        assert changelog.kind_of(current.id + 1, "a@example.org", message("new", False)) \
            == "existing"
        assert [m.key for m in changelog.messages(current.id)] == ["hist"]
        assert forget_old_records(config, store, now=NOW) == {
            "journal_rows": 0, "outage_detail_rows": 0, "audit_rows": 0}
    finally:
        store.close()


STATUSES = ("shipped", "unknown", "failed", "pruned")


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(("record", "prune", "forget")),
                                st.integers(0, 5), st.sampled_from(STATUSES)), max_size=25))
def test_the_kept_counts_match_the_rows_whatever_happens(tmp_path: Path,
                                                        steps: list[tuple[str, int, str]]
                                                        ) -> None:
    """``status`` and the metrics read journal_count, not the whole index: it must say what a
    GROUP BY over the rows would, after any mix of recording (a copy re-recorded in another
    status included), pruning and forgetting."""
    path = tmp_path / f"counts-{time.monotonic_ns()}.db"
    store = SQLiteStore(path)
    try:
        for action, key, status in steps:
            if action == "record":
                record_copies(store, [CopyRecord(f"<{key}>", "a@example.org", "INBOX",
                                                 status, OLD)])  # type: ignore[arg-type]
            elif action == "prune":
                mark_pruned(store, prunable(store, NOW))
            else:
                forget_before(store, NOW + 1)
            rows = dict(store.query("SELECT status, count(*) FROM journal GROUP BY status"))
            kept = {s: c for s, c in store.query("SELECT status, count FROM journal_count") if c}
            assert kept == rows
    finally:
        store.close()
        path.unlink()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(copies=st.lists(st.tuples(st.floats(min_value=-400, max_value=10),
                                 st.sampled_from(["shipped", "pruned", "failed", "unknown"])),
                       max_size=40),
       cutoff=st.floats(min_value=-100, max_value=5))
def test_prunable_is_every_shipped_copy_before_the_cutoff_oldest_first(
        store_config: Config, copies: list[tuple[float, str]], cutoff: float) -> None:
    """prunable reads a day of acceptance time at a time, jumping over empty stretches (copies
    prune refused a year ago, a day nothing arrived); together the windows are exactly the
    shipped copies accepted before the cutoff, copies of one message (same time) included."""
    store = open_store(store_config)
    try:
        store.execute("DELETE FROM journal")
        records = [CopyRecord(f"<{n // 3}@x>", f"user{n}@example.org", "INBOX", status,  # type: ignore[arg-type]
                              NOW + round(days, 1) * DAY_SECONDS)
                   for n, (days, status) in enumerate(copies)]
        record_copies(store, records)
        before = NOW + cutoff * DAY_SECONDS
        found = prunable(store, before)
        expected = [r for r in records if r.status == "shipped" and r.received < before]
        assert sorted(found, key=lambda r: r.address) == sorted(expected, key=lambda r: r.address)
        assert [r.received for r in found] == sorted(r.received for r in expected)
    finally:
        store.close()
