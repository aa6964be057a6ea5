"""What ``mailcontinuity status`` reports, gathered from the state store and the spool.

The shape is a contract (shared/design.md): ``state``, ``primary``, ``journal``, ``outage``.
A part that has not reported yet is shown as unknown (null), never as a guess; health is only as
good as its freshness: if policyd has not probed within its own stale limit (it is stopped,
killed or hung) the primary's health is unknown, and the report says why. The journal's backlog
is read from the spool on disk, so it is right even when the milter is down.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.journal.spool import spool_usage
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.heartbeats import pid_alive, policyd_heartbeat, sync_agent_heartbeat
from mailcontinuity.store.journal import journal_summary
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.store.probes import latest_probes
from mailcontinuity.store.state import current_state, outage_start


def collect_status(config: Config, store: StateStore) -> dict[str, Any]:
    state = current_state(store)
    return {
        "state": state.name,
        "since": state.since,
        "cause": state.cause,
        "actor": state.actor,
        "protected_domains": list(config.domains.protected),
        # Health is measured by the policy daemon's monitor; until it has probed, unknown.
        "primary": primary_status(store),
        "journal": journal_status(config, store),
        "outage": combined_outage(store),
        "generated_at": time.time(),
    }


# --- primary and policyd ---------------------------------------------------------------------
def policyd_status(store: StateStore, now: float) -> dict[str, Any]:
    """Whether policyd runs: its heartbeat is fresh and its process is alive."""
    beat = policyd_heartbeat(store)
    if beat is None:
        return {"running": False, "detail": "never started on this host"}
    report = {"pid": beat["pid"], "last_heartbeat": beat["beat_at"]}
    if beat["stopped_at"] is not None:
        detail = "stopped"
    elif not pid_alive(beat["pid"]):
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
    health = "unknown (no fresh probe)" if healthy is None else "healthy" if healthy else "FAILING"
    daemon = primary["policyd"]
    if daemon["running"]:
        policyd = f"running (pid {daemon['pid']})"
    else:
        policyd = (f"DOWN: {daemon['detail']}; mail still flows with the last routing (fail-open),"
                   " but nothing detects an outage: start 'mailcontinuity policyd'")
    return [f"primary:  {health}{f' ({probes})' if probes else ''}", f"policyd:  {policyd}"]


# --- journal ---------------------------------------------------------------------------------
def journal_status(config: Config, store: StateStore) -> dict[str, Any]:
    usage = spool_usage(config.milter.spool_dir)
    return {
        "sink": config.milter.sink,
        "spooled": usage.entries,
        "lag_seconds": round(usage.lag_seconds, 3),
        **journal_summary(store),
        "on_spool_error": config.milter.on_spool_error,
    }


def render_journal(journal: dict[str, Any]) -> str:
    """One line: backlog and outcomes first, then whatever needs the operator's attention."""
    parts = [f"{journal['spooled']} spooled (lag {journal['lag_seconds']:.1f}s)",
             f"{journal['shipped']} shipped", f"{journal['failed']} failed"]
    if journal["unknown_recipients"]:
        parts.append(f"unknown recipients: {', '.join(journal['unknown_recipients'])}")
    for kind, label in (("spool_error", "SPOOL ERRORS"), ("ship_error", "shipping errors")):
        last = journal[f"last_{kind}"]
        if last:
            parts.append(f"{label}: {journal[f'{kind}s']}, last: {last['detail']}")
    return ", ".join(parts)


# --- outage ----------------------------------------------------------------------------------
def outage_status(store: StateStore) -> dict[str, Any] | None:
    """The open outage's recorded activity and failback progress."""
    changelog = ChangeLog(store)
    outage = changelog.open_outage()
    if outage is None:
        return None
    beat = sync_agent_heartbeat(store)
    return {"id": outage.id, "started_at": outage.started_at, "status": outage.status,
            "baseline_at": outage.baseline_at, "activity": changelog.activity(outage.id),
            "failback_progress": changelog.progress_counts(outage.id),
            "sync_agent_heartbeat": beat[2] if beat else None}


def combined_outage(store: StateStore) -> dict[str, Any] | None:
    """The outage as the audit log knows it (start, cause, actor) plus what the sync agent
    recorded of it (activity, failback progress). An outage whose activity is not merged yet
    is shown even after the state went back to ``normal``: that is work still owed."""
    current = outage_start(store)
    recorded = outage_status(store)
    if current is None and recorded is None:
        return None
    return {**(recorded or {}), **(current or {})}


def render_outage(outage: dict[str, Any] | None) -> str:
    if outage is None:
        return "outage:   none"
    start = time.strftime("%Y-%m-%d %H:%M:%S %Z",
                          time.localtime(outage.get("start", outage.get("started_at", 0))))
    line = f"outage:   since {start}"
    if "cause" in outage:
        line += f" ({outage['cause']}, by {outage['actor']})"
    if outage.get("activity"):
        counts = ", ".join(f"{key} {value}" for key, value in outage["activity"].items())
        line += f"\n          recorded on the standby: {counts}"
    if outage.get("failback_progress"):
        counts = ", ".join(f"{key} {value}" for key, value in outage["failback_progress"].items())
        line += f"\n          failback: {counts}"
    return line


def render_status(report: dict[str, Any]) -> str:
    """The human-readable form, one fact per line."""
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(report["since"]))
    lines = [
        f"state:    {report['state']} since {since} ({report['cause']}, by {report['actor']})",
        f"domains:  {', '.join(report['protected_domains'])}",
        *render_primary(report["primary"]),
        f"journal:  {render_journal(report['journal'])}",
        render_outage(report["outage"]),
    ]
    return "\n".join(lines)
