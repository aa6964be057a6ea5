"""Health probe results: written by each gateway's policyd every round, read by status and
metrics. Each row names the host whose policyd probed, since gateways may see the primary
differently (a network cut between one gateway and the primary)."""

from __future__ import annotations

from dataclasses import dataclass

from mailcontinuity.store.db import StateStore


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome; ``error`` is empty when it succeeded. ``ok`` with an ``error`` is a
    warning, not a failure: the primary answered, slowly (``imap_login``: slow to log in)."""

    probe: str
    target: str
    ok: bool
    latency_ms: float
    error: str
    at: float


def record_probes(store: StateStore, host: str, results: list[ProbeResult]) -> None:
    """Add one round's results; the caller holds a transaction (one per round)."""
    store.executemany(
        "INSERT INTO health_probes (at, probe, target, ok, latency_ms, error, host)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [[result.at, result.probe, result.target, int(result.ok), result.latency_ms,
          result.error, host] for result in results],
    )


def prune_probes(store: StateStore, before: float) -> None:
    """Forget old probes: a probe every few seconds would otherwise grow the store forever."""
    with store.transaction():
        store.execute("DELETE FROM health_probes WHERE at < ?", [before])


def latest_probes(store: StateStore, host: str) -> list[ProbeResult]:
    """The most recent result of each probe (delivery, imap) the policyd on ``host`` ran.

    Read as a skip over the ``(host, probe, id)`` index: the next probe name after the last
    one, then that probe's highest id, a few index seeks per probe (every ``status`` and
    every scrape reads this). The plain ``MAX(id) ... GROUP BY probe`` read every probe the
    host kept (a day at the default 2 s interval: 86,400 rows, 17 ms on PostgreSQL, 8 ms on
    SQLite, twice per scrape), more with a longer ``health.probe_retention_hours``."""
    rows = store.query(
        "WITH RECURSIVE kinds (probe) AS ("
        " SELECT MIN(probe) FROM health_probes WHERE host = ?"
        " UNION ALL SELECT (SELECT MIN(probe) FROM health_probes WHERE host = ?"
        " AND probe > kinds.probe) FROM kinds WHERE kinds.probe IS NOT NULL)"
        " SELECT h.probe, h.target, h.ok, h.latency_ms, h.error, h.at FROM kinds"
        " JOIN health_probes h ON h.id = (SELECT MAX(id) FROM health_probes"
        " WHERE host = ? AND probe = kinds.probe)"
        " WHERE kinds.probe IS NOT NULL"  # the recursion's last row: no probe after the last
        " ORDER BY h.probe", [host, host, host]
    )
    return [ProbeResult(probe, target, bool(ok), latency, error, at)
            for probe, target, ok, latency, error, at in rows]


def failing_since(store: StateStore, host: str) -> float | None:
    """When the primary's current run of failed probes (by the policyd on ``host``) began
    (None: its last probes passed). Two seeks in ``health_probes_outcome`` (host, ok, at),
    migration 16: the last passing probe, then the first failure after it."""
    row = store.one(
        "SELECT MIN(at) FROM health_probes WHERE host = ? AND ok = 0 AND at > COALESCE("
        "(SELECT MAX(at) FROM health_probes WHERE host = ? AND ok = 1), 0)", [host, host])
    return None if row is None or row[0] is None else float(row[0])
