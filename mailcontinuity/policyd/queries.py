"""policyd's reads and writes in the state store: probes, heartbeat, the current outage.

Kept out of state.py (which owns only the schema) so that each part of the system owns its own
queries; ``status`` reads these from another process while policyd writes them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from mailcontinuity.policyd.health import ProbeResult
from mailcontinuity.state import StateName, StateStore

STATE_CACHE_SECONDS = 0.25


def record_probes(store: StateStore, results: list[ProbeResult]) -> None:
    with store.transaction() as db:
        for result in results:
            db.execute(
                "INSERT INTO health_probes (at, probe, target, ok, latency_ms, error)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [result.at, result.probe, result.target, int(result.ok), result.latency_ms,
                 result.error],
            )


def prune_probes(store: StateStore, before: float) -> None:
    """Forget old probes: a probe every few seconds would otherwise grow the store forever."""
    with store.transaction() as db:
        db.execute("DELETE FROM health_probes WHERE at < ?", [before])


def latest_probes(store: StateStore) -> list[ProbeResult]:
    """The most recent result of each probe (delivery, imap)."""
    rows = store.db.execute(
        "SELECT probe, target, ok, latency_ms, error, at FROM health_probes"
        " WHERE id IN (SELECT MAX(id) FROM health_probes GROUP BY probe) ORDER BY probe"
    ).fetchall()
    return [ProbeResult(probe, target, bool(ok), latency, error, at)
            for probe, target, ok, latency, error, at in rows]


def beat(store: StateStore, started_at: float, now: float, stale_after: float) -> None:
    """policyd is alive at ``now``; status calls it down once ``stale_after`` passes unbeaten."""
    with store.transaction() as db:
        db.execute(
            "INSERT INTO policyd_heartbeat (id, pid, started_at, beat_at, stale_after, stopped_at)"
            " VALUES (1, ?, ?, ?, ?, NULL) ON CONFLICT (id) DO UPDATE SET pid = excluded.pid,"
            " started_at = excluded.started_at, beat_at = excluded.beat_at,"
            " stale_after = excluded.stale_after, stopped_at = NULL",
            [os.getpid(), started_at, now, stale_after],
        )


def mark_stopped(store: StateStore, now: float) -> None:
    with store.transaction() as db:
        db.execute("UPDATE policyd_heartbeat SET stopped_at = ? WHERE pid = ?", [now, os.getpid()])


def heartbeat(store: StateStore) -> dict[str, Any] | None:
    row = store.db.execute(
        "SELECT pid, started_at, beat_at, stale_after, stopped_at FROM policyd_heartbeat"
    ).fetchone()
    if row is None:
        return None
    return dict(zip(("pid", "started_at", "beat_at", "stale_after", "stopped_at"), row))


def current_outage(store: StateStore) -> dict[str, Any] | None:
    """The outage in progress: from the last entry into ``failover`` until back to ``normal``.

    ``failback`` still belongs to the outage: mail goes to the primary again, but the outage's
    activity is not merged yet.
    """
    if store.current_state().name == "normal":
        return None
    row = store.db.execute(
        "SELECT at, cause, actor FROM audit WHERE event = 'transition' AND to_state = 'failover'"
        " ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return {"start": row[0], "cause": row[1], "actor": row[2]}


class CachedState:
    """The continuity state for policy answers: read from the store at most every ``ttl``.

    Read from the store (not from the monitor) so that an operator's ``failover`` in another
    process counts within a fraction of a second; cached so that thousands of requests a
    second do not each query SQLite.
    """

    def __init__(self, store: StateStore, ttl: float = STATE_CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self._name: StateName = store.current_state().name
        self._read_at = clock()

    def __call__(self) -> StateName:
        now = self.clock()
        if now - self._read_at >= self.ttl:
            self._name = self.store.current_state().name
            self._read_at = now
        return self._name
