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
    """The most recent result of each probe (delivery, imap) the policyd on ``host`` ran."""
    rows = store.query(
        "SELECT probe, target, ok, latency_ms, error, at FROM health_probes"
        " WHERE id IN (SELECT MAX(id) FROM health_probes WHERE host = ? GROUP BY probe)"
        " ORDER BY probe", [host]
    )
    return [ProbeResult(probe, target, bool(ok), latency, error, at)
            for probe, target, ok, latency, error, at in rows]


def failing_since(store: StateStore, host: str) -> float | None:
    """When the primary's current run of failed probes (by the policyd on ``host``) began
    (None: its last probes passed)."""
    row = store.one(
        "SELECT MIN(at) FROM health_probes WHERE host = ? AND ok = 0 AND at > COALESCE("
        "(SELECT MAX(at) FROM health_probes WHERE host = ? AND ok = 1), 0)", [host, host])
    return None if row is None or row[0] is None else float(row[0])
