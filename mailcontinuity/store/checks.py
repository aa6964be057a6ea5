"""Checks of the watched parts: the latest result of each, and since when it has held.

The health monitor (policyd) checks the standby's listeners, the milter's socket and the webmail
every round; the sync agent says when it starts and stops. ``status`` and the metrics read the
rows back. A row keeps ``since``, the moment its outcome last changed, so that a problem is
reported with when it began, not when it was last seen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailcontinuity.store.db import StateStore


@dataclass(frozen=True)
class Check:
    """One check of one part; ``detail`` says what failed (or what was measured), ``action``
    the operator's next step when it fails."""

    part: str
    name: str
    target: str
    ok: bool
    at: float
    detail: str = ""
    action: str = ""
    latency_ms: float | None = None


@dataclass(frozen=True)
class CheckRecord:
    """A check as stored: with ``since``, when its outcome (ok or not) last changed."""

    check: Check
    since: float


def record_checks(store: StateStore, checks: Iterable[Check]) -> None:
    """Write the latest result of each check; ``since`` moves only when ``ok`` changes."""
    rows = [[c.part, c.name, c.target, int(c.ok), c.at, c.at, c.latency_ms, c.detail, c.action]
            for c in checks]
    if not rows:
        return
    with store.transaction():
        store.executemany(
            "INSERT INTO part_check (part, name, target, ok, since, at, latency_ms, detail,"
            " action) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (part, name) DO UPDATE SET"
            " since = CASE WHEN part_check.ok = excluded.ok THEN part_check.since"
            " ELSE excluded.since END, target = excluded.target, ok = excluded.ok,"
            " at = excluded.at, latency_ms = excluded.latency_ms, detail = excluded.detail,"
            " action = excluded.action", rows)


def latest_checks(store: StateStore) -> list[CheckRecord]:
    rows = store.query("SELECT part, name, target, ok, at, detail, action, latency_ms, since"
                       " FROM part_check ORDER BY part, name")
    return [CheckRecord(Check(part, name, target, bool(ok), at, detail, action, latency),
                        since)
            for part, name, target, ok, at, detail, action, latency, since in rows]
