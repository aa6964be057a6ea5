"""Checks of the watched parts: the latest result of each, and since when it has held.

The health monitor (policyd) checks the standby's listeners, the milter's socket and the webmail
every round; the sync agent says when it starts and stops. ``status`` and the metrics read the
rows back. A row keeps ``since``, the moment its outcome last changed, so that a problem is
reported with when it began, not when it was last seen. Rows are kept per host (``[cluster]
host``; ``local`` on a single host): each gateway of a site checks its own milter and sees the
standby from where it stands, and one gateway's result must not overwrite another's.
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
    """A check as stored: with ``since``, when its outcome (ok or not) last changed, and the
    host that ran it."""

    check: Check
    since: float
    host: str


def record_checks(store: StateStore, host: str, checks: Iterable[Check]) -> None:
    """Write ``host``'s latest result of each check; ``since`` moves only when ``ok`` changes."""
    rows = [[host, c.part, c.name, c.target, int(c.ok), c.at, c.at, c.latency_ms, c.detail,
             c.action] for c in checks]
    if not rows:
        return
    with store.transaction():
        store.executemany(
            "INSERT INTO part_check (host, part, name, target, ok, since, at, latency_ms,"
            " detail, action) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (host, part, name) DO UPDATE SET"
            " since = CASE WHEN part_check.ok = excluded.ok THEN part_check.since"
            " ELSE excluded.since END, target = excluded.target, ok = excluded.ok,"
            " at = excluded.at, latency_ms = excluded.latency_ms, detail = excluded.detail,"
            " action = excluded.action", rows)


def latest_checks(store: StateStore, host: str | None = None) -> list[CheckRecord]:
    """Every check's latest result: ``host``'s, or (None) every host's."""
    where, args = ("WHERE host = ?", [host]) if host is not None else ("", [])
    rows = store.query("SELECT part, name, target, ok, at, detail, action, latency_ms, since,"
                       f" host FROM part_check {where} ORDER BY host, part, name", args)
    return [CheckRecord(Check(part, name, target, bool(ok), at, detail, action, latency),
                        since, checked_by)
            for part, name, target, ok, at, detail, action, latency, since, checked_by in rows]
