"""The ``primary`` and ``outage`` parts of ``status``, from what policyd wrote to the store.

Health is only as good as its freshness: if policyd has not probed within its own stale limit
(it is stopped, killed or hung) the primary's health is unknown (null), and the report says why.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from mailcontinuity.lab.process import is_alive
from mailcontinuity.policyd.queries import heartbeat, latest_probes
from mailcontinuity.state import StateStore


def policyd_status(store: StateStore, now: float) -> dict[str, Any]:
    """Whether policyd runs: its heartbeat is fresh and its process is alive."""
    beat = heartbeat(store)
    if beat is None:
        return {"running": False, "detail": "never started on this host"}
    report = {"pid": beat["pid"], "last_heartbeat": beat["beat_at"]}
    if beat["stopped_at"] is not None:
        detail = "stopped"
    elif not is_alive(beat["pid"]):
        detail = f"process {beat['pid']} is gone (killed or crashed)"
    elif now - beat["beat_at"] > beat["stale_after"]:
        detail = f"no heartbeat for {now - beat['beat_at']:.0f}s (hung?)"
    else:
        return {"running": True, **report, "detail": "running"}
    return {"running": False, **report, "detail": detail}


def primary_status(store: StateStore, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    daemon = policyd_status(store, now)
    probes = latest_probes(store)
    healthy = all(probe.ok for probe in probes) if probes and daemon["running"] else None
    return {"healthy": healthy, "last_probes": [asdict(probe) for probe in probes],
            "policyd": daemon}


def render_primary(primary: dict[str, Any]) -> list[str]:
    """Lines for the human-readable status."""
    healthy = primary["healthy"]
    probes = ", ".join(
        f"{p['probe']} {p['latency_ms']:.1f} ms" if p["ok"] else f"{p['probe']}: {p['error']}"
        for p in primary["last_probes"]
    )
    if healthy is None:
        health = "unknown (no fresh probe)"
    else:
        health = "healthy" if healthy else "FAILING"
    daemon = primary["policyd"]
    if daemon["running"]:
        policyd = f"running (pid {daemon['pid']})"
    else:
        policyd = (f"DOWN: {daemon['detail']}; mail still flows with the last routing (fail-open),"
                   " but nothing detects an outage: start 'mailcontinuity policyd'")
    return [f"primary:  {health}{f' ({probes})' if probes else ''}", f"policyd:  {policyd}"]
