"""The journal index: what was shipped where, what could not be, and the milter's alarms.

Written by the shipper (one transaction per batch, off the SMTP hot path), read by ``status``
and ``prune``. A row per journal copy keyed by (message id, mailbox, folder) is what makes
shipping idempotent: a copy already recorded is never shipped again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from mailcontinuity.store.db import StateStore

CopyStatus = Literal["shipped", "unknown", "failed", "pruned"]
AlarmKind = Literal["spool_error", "ship_error"]


@dataclass(frozen=True)
class CopyRecord:
    """The outcome of one journal copy."""

    message_id: str
    address: str
    folder: str
    status: CopyStatus
    received: float
    location: str | None = None
    detail: str = ""


def _count(store: StateStore, changes: Counter[str]) -> None:
    """Apply ``changes`` (copies by status, + or -) to ``journal_count``, in the caller's
    transaction: every write to the index's statuses goes through this module."""
    store.executemany(
        "INSERT INTO journal_count (status, count) VALUES (?, ?) ON CONFLICT (status)"
        " DO UPDATE SET count = journal_count.count + excluded.count",
        [[status, change] for status, change in changes.items() if change])


def recount(store: StateStore) -> None:
    """Rebuild ``journal_count`` from the rows (after writing rows by hand, as benches do)."""
    with store.transaction():
        store.execute("DELETE FROM journal_count")
        store.execute("INSERT INTO journal_count (status, count)"
                      " SELECT status, count(*) FROM journal GROUP BY status")


def record_copies(store: StateStore, records: Iterable[CopyRecord]) -> None:
    rows = [
        [r.message_id, r.address, r.folder, r.status, r.received, time.time(), r.location,
         r.detail]
        for r in records
    ]
    if not rows:
        return
    with store.transaction():
        changes: Counter[str] = Counter()
        for row in rows:
            before = store.one("SELECT status FROM journal WHERE message_id = ? AND address = ?"
                               " AND folder = ?", row[:3])
            changes[str(row[3])] += 1
            if before is not None:
                changes[str(before[0])] -= 1
        _count(store, changes)
        store.executemany(
            "INSERT INTO journal (message_id, address, folder, status, received, recorded,"
            " location, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (message_id, address, folder) DO UPDATE SET status = excluded.status,"
            " received = excluded.received, recorded = excluded.recorded,"
            " location = excluded.location, detail = excluded.detail",
            rows,
        )


def settled_copies(store: StateStore, message_id: str) -> set[tuple[str, str]]:
    """(address, folder) of this message's copies that need no further shipping."""
    rows = store.query("SELECT address, folder FROM journal WHERE message_id = ?", [message_id])
    return {(address, folder) for address, folder in rows}


def record_alarm(store: StateStore, kind: AlarmKind, detail: str) -> None:
    with store.transaction():
        store.execute("INSERT INTO journal_alarm (at, kind, detail) VALUES (?, ?, ?)",
                      [time.time(), kind, detail])


# prunable reads the expired copies one window of acceptance time at a time.
PRUNABLE_WINDOW_SECONDS = 86400


def prunable(store: StateStore, before: float) -> list[CopyRecord]:
    """Shipped journal copies accepted before ``before``: candidates for ``prune``, oldest
    first.

    Read a day of acceptance time at a time, each window starting at the oldest shipped copy
    left (an index seek, so empty stretches cost nothing): ``status = 'shipped' AND received
    < ?`` alone made PostgreSQL's planner multiply the two conditions' selectivities as if
    independent (a quarter of the rows shipped, most of them accepted before the cutoff: 16%
    of the index expected, 0.8% found, the day due) and scan the whole index, 10 M rows at a
    10,000-user site, for a day's work. A one-day window is estimated as what it is, on
    either backend, so the read costs what the day's copies cost."""
    shipped = "FROM journal WHERE status = 'shipped' AND received >= ? AND received < ?"
    records: list[CopyRecord] = []
    start = store.one(f"SELECT MIN(received) {shipped}", [float("-inf"), before])
    while start is not None and start[0] is not None:
        end = min(float(start[0]) + PRUNABLE_WINDOW_SECONDS, before)
        records.extend(CopyRecord(*row) for row in store.query(
            "SELECT message_id, address, folder, status, received, location, detail"
            f" {shipped} ORDER BY received", [start[0], end]))
        start = store.one(f"SELECT MIN(received) {shipped}", [end, before])
    return records


def mark_pruned(store: StateStore, records: Iterable[CopyRecord]) -> None:
    """Rows of copies deleted from the standby become ``pruned`` (those still in the status
    they were read in: a copy shipped again meanwhile is not marked)."""
    now = time.time()
    changes: Counter[str] = Counter()
    with store.transaction():
        for r in records:
            changed = store.execute(
                "UPDATE journal SET status = 'pruned', recorded = ?"
                " WHERE message_id = ? AND address = ? AND folder = ? AND status = ?",
                [now, r.message_id, r.address, r.folder, r.status])
            changes[r.status] -= changed
            changes["pruned"] += changed
        _count(store, changes)


# Copies that need no more work once recorded: their rows only count them.
SETTLED = ("pruned", "unknown", "failed")


def forget_before(store: StateStore, before: float) -> int:
    """Delete the rows of settled copies recorded before ``before`` and the alarms raised
    before it; their numbers move to ``retired_count``, so counters never go down."""
    placeholders = ", ".join("?" for _ in SETTLED)
    with store.transaction():
        retired = store.query(
            f"SELECT 'journal:' || status, count(*) FROM journal WHERE status IN ({placeholders})"
            " AND recorded < ? GROUP BY status", [*SETTLED, before])
        retired += store.query("SELECT 'alarm:' || kind, count(*) FROM journal_alarm"
                               " WHERE at < ? GROUP BY kind", [before])
        store.executemany(
            "INSERT INTO retired_count (name, count) VALUES (?, ?) ON CONFLICT (name)"
            " DO UPDATE SET count = retired_count.count + excluded.count", retired)
        _count(store, Counter({name.removeprefix("journal:"): -count
                               for name, count in retired if name.startswith("journal:")}))
        deleted = store.execute(f"DELETE FROM journal WHERE status IN ({placeholders})"
                                " AND recorded < ?", [*SETTLED, before])
        deleted += store.execute("DELETE FROM journal_alarm WHERE at < ?", [before])
    return deleted


def journal_summary(store: StateStore) -> dict[str, Any]:
    """Counters for ``status``: copies by outcome, unknown recipients, the latest alarms."""
    counts = dict(store.query("SELECT status, count FROM journal_count"))
    for name, count in store.query("SELECT name, count FROM retired_count"):
        counts[name] = counts.get(name, 0) + count
    unknown = [row[0] for row in store.query(
        "SELECT DISTINCT address FROM journal WHERE status = 'unknown' ORDER BY address")]
    summary: dict[str, Any] = {
        "shipped": counts.get("shipped", 0) + counts.get("pruned", 0)
        + counts.get("journal:pruned", 0),
        "failed": counts.get("failed", 0) + counts.get("journal:failed", 0),
        "pruned": counts.get("pruned", 0) + counts.get("journal:pruned", 0),
        "unknown_recipients": unknown,
    }
    for kind in ("spool_error", "ship_error"):
        summary |= alarm_summary(store, kind, counts.get(f"alarm:{kind}", 0))
    return summary


def alarm_summary(store: StateStore, kind: AlarmKind, retired: int | None = None
                  ) -> dict[str, Any]:
    """``{kind}s`` (how many, those ``prune`` forgot included) and ``last_{kind}`` (when and
    what, or None): one kind of the milter's alarms, read without the rest of the journal."""
    if retired is None:
        row = store.one("SELECT count FROM retired_count WHERE name = ?", [f"alarm:{kind}"])
        retired = int(row[0]) if row else 0
    total, last_at = store.one(
        "SELECT count(*), max(at) FROM journal_alarm WHERE kind = ?", [kind]) or (0, None)
    last = None
    if total:
        newest = store.one(
            "SELECT detail FROM journal_alarm WHERE kind = ? ORDER BY id DESC LIMIT 1", [kind])
        last = {"at": last_at, "detail": newest[0] if newest else ""}
    return {f"{kind}s": total + retired, f"last_{kind}": last}


def backlog_at(store: StateStore, at: float) -> tuple[int, float | None]:
    """(copies, the oldest one's acceptance time) of mail accepted before ``at`` whose journal
    copy reached the standby only after it: what the standby lacked at that moment (the
    recovery point of an outage that began then)."""
    row = store.one("SELECT COUNT(*), MIN(received) FROM journal WHERE status IN"
                    " ('shipped', 'unknown', 'failed') AND received < ? AND recorded > ?",
                    [at, at])
    return (0, None) if row is None else (int(row[0]), row[1])


def history_from(store: StateStore, at: float) -> float | None:
    """The oldest journal copy the standby held at ``at`` (pruned since, or still there)."""
    row = store.one("SELECT MIN(received) FROM journal WHERE status IN ('shipped', 'pruned')"
                    " AND received < ? AND ((status = 'shipped' AND recorded <= ?)"
                    " OR (status = 'pruned' AND recorded > ?))", [at, at, at])
    return None if row is None or row[0] is None else float(row[0])


def journaled_since(store: StateStore, since: float) -> tuple[int, float | None]:
    """(messages with a journal copy accepted since ``since``, when the newest copy was
    accepted), for the check that the journal keeps pace with the gateway. Both read the
    (status, received) index, one status at a time, so the journal's size does not matter."""
    statuses = ("shipped", "unknown", "failed", "pruned")
    placeholders = ", ".join("?" for _ in statuses)
    row = store.one(f"SELECT COUNT(DISTINCT message_id) FROM journal WHERE status IN"
                    f" ({placeholders}) AND received >= ?", [*statuses, since])
    newest = store.one("SELECT MAX(newest) FROM (" + " UNION ALL ".join(
        "SELECT MAX(received) AS newest FROM journal WHERE status = ?" for _ in statuses)
        + ") AS latest", list(statuses))  # PostgreSQL needs the alias
    return (int(row[0]) if row else 0,
            None if newest is None or newest[0] is None else float(newest[0]))
