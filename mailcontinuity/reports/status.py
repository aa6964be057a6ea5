"""What ``mailcontinuity status`` reports, gathered from the state store and the spool.

The shape is a contract (shared/design.md): ``state``, ``protected``, ``problems``, ``primary``,
``journal``, ``outage``. It opens with the verdict (``reports.problems``): protected, or not and
why, since when, and what to do next; ``status --check`` says the same in one line for a
monitoring system. A part that has not reported yet is shown as unknown (null), never as a
guess; health is only as good as its freshness: if policyd has not probed within its own stale
limit (it is stopped, killed or hung) the primary's health is unknown, and the report says why.
The journal's backlog is read from the spool on disk, so it is right even when the milter is
down.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.credentials.freshness import copy_status
from mailcontinuity.deploy.routing import installed_route
from mailcontinuity.journal.spool import SpoolUsage, spool_usage
from mailcontinuity.reports.cluster import cluster_status, quorum_health, render_cluster
from mailcontinuity.reports.problems import (
    EMPTY_SPOOL,
    EXIT_CODES,
    Problem,
    Verdict,
    Watch,
    check_as_dict,
    host_policyd_status,
    merge_by_part,
    readable_spool,
    store_unavailable,
    watch,
)
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.gateways import votes
from mailcontinuity.store.heartbeats import sync_agent_heartbeat
from mailcontinuity.store.journal import journal_summary
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.store.probes import latest_probes
from mailcontinuity.store.state import current_state, outage_start


def collect_status(config: Config, store: StateStore, live: bool = True) -> dict[str, Any]:
    """The whole status; with ``live``, watched parts the monitor has not checked recently
    (policyd down) are checked here."""
    now = time.time()
    state = current_state(store)
    usage = readable_spool(config, now)
    journal = journal_status(config, store, usage or EMPTY_SPOOL)
    watched = watch(config, store, state, journal, usage, now, live)
    cluster = cluster_status(config, store, state, now) if config.cluster else None
    if cluster is not None:  # the gateways' problems count in the verdict like any other
        watched.problems = merge_by_part(watched.problems + [
            Problem(p["part"], p["since"] or now, p["detail"], p["action"])
            for p in cluster["problems"]])
    return {
        "state": state.name,
        "since": state.since,
        "cause": state.cause,
        "actor": state.actor,
        **verdict_fields(watched),
        "protected_domains": list(config.domains.protected),
        # Health is measured by the policy daemon's monitor; until it has probed, unknown.
        "primary": primary_status(config, store, now),
        "journal": journal,
        "outage": combined_outage(store),
        "credentials": credentials_status(config, store, now),
        "store": store_status(config, None),
        "cluster": cluster,
        "generated_at": now,
    }


def credentials_status(config: Config, store: StateStore, now: float) -> dict[str, Any] | None:
    """The standby's copy of the directory's credentials ([credentials]), or None."""
    copy = copy_status(config, store, now)
    return None if copy is None else copy.as_dict()


def render_credentials(copy: dict[str, Any] | None) -> list[str]:
    if copy is None:
        return []
    if copy["written_at"] is None:
        return [f"credentials: no copy yet ({copy['copy_file']})"]
    users = f", {copy['users']} users" if copy["users"] is not None else ""
    last = ("" if copy["last_refresh_ok"] is not False
            else f", last refresh FAILED: {copy['last_refresh_detail']}")
    return [f"credentials: copy {copy['age_seconds']:.0f}s old (max"
            f" {copy['max_age_seconds']:g}s{users}){last}"]


def store_status(config: Config, error: str | None) -> dict[str, Any]:
    """Which store this host uses and whether it answered."""
    report: dict[str, Any] = {"backend": config.state.backend,
                              "location": config.state.location, "reachable": error is None}
    if error is not None:
        report["detail"] = error
    return report


def verdict_fields(watched: Watch) -> dict[str, Any]:
    return {
        "protected": watched.protected,
        "problems": [problem.as_dict() for problem in watched.problems],
        "verdict": watched.verdict,
        "parts": watched.part_ok(),
        "checks": [check_as_dict(record) for record in watched.checks],
        "checked_by": "status" if watched.checked_live else "policyd",
    }


def unavailable_status(config: Config, error: str) -> dict[str, Any]:
    """What ``status`` can say when the state store cannot be opened: that, and nothing it
    would have to read from the store."""
    watched = store_unavailable(config, error)
    route = installed_route(config) if config.routes_mail else None
    return {"state": None, "since": None, "cause": None, "actor": None,
            **verdict_fields(watched), "protected_domains": list(config.domains.protected),
            "primary": {"healthy": None, "last_probes": [], "policyd": None},
            "journal": None, "outage": None, "store": store_status(config, error),
            "cluster": None if config.cluster is None else {
                "host": config.cluster.host, "route": route},
            "generated_at": time.time()}


# --- primary and policyd ---------------------------------------------------------------------
def primary_status(config: Config, store: StateStore, now: float | None = None
                   ) -> dict[str, Any]:
    """The primary's health as this host's policyd sees it; on a site with several gateways,
    as the quorum sees it (the same answer on every host), with this gateway's own probes."""
    now = time.time() if now is None else now
    probes = latest_probes(store, config.host_name) if config.routes_mail else []
    daemon = host_policyd_status(config, store, now)
    if config.cluster is None:
        healthy = all(probe.ok for probe in probes) if probes and daemon["running"] else None
    else:
        healthy = quorum_health(config, config.cluster, votes(store), now)
    return {"healthy": healthy, "last_probes": [asdict(probe) for probe in probes],
            "policyd": daemon}


def render_primary(primary: dict[str, Any]) -> list[str]:
    """Lines for the human-readable status."""
    healthy = primary["healthy"]
    probes = ", ".join(
        f"{p['probe']} {p['latency_ms']:.1f} ms" if p["ok"] and not p["error"]
        else f"{p['probe']}: {p['error']}" for p in primary["last_probes"]
    )
    health = "unknown (no fresh probe)" if healthy is None else "healthy" if healthy else "FAILING"
    daemon = primary["policyd"]
    if daemon is None:
        policyd = "unknown (the state store does not answer)"
    elif daemon["running"]:
        policyd = f"running (pid {daemon['pid']})" if "pid" in daemon else daemon["detail"]
    else:
        policyd = (f"DOWN: {daemon['detail']}; mail still flows with the last routing (fail-open),"
                   " but nothing detects an outage: start 'mailcontinuity policyd'")
    return [f"primary:  {health}{f' ({probes})' if probes else ''}", f"policyd:  {policyd}"]


# --- journal ---------------------------------------------------------------------------------
def journal_status(config: Config, store: StateStore,
                   usage: SpoolUsage | None = None) -> dict[str, Any]:
    usage = spool_usage(config.milter.spool_dir) if usage is None else usage
    return {
        "sink": config.milter.sink,
        "spooled": usage.entries,
        "spool_bytes": usage.bytes,
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


def _when(at: float, now: float) -> str:
    ago = max(0.0, now - at)
    span = (f"{ago:.0f}s" if ago < 120 else f"{ago / 60:.0f} min" if ago < 7200
            else f"{ago / 3600:.1f} h" if ago < 172800 else f"{ago / 86400:.1f} days")
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))}, {span} ago"


def render_verdict(report: dict[str, Any]) -> list[str]:
    """The first lines: protected, or NOT PROTECTED with each problem, since when, what next."""
    now = report["generated_at"]
    if report["protected"]:
        parts = ", ".join(report["parts"])
        return [f"PROTECTED: every watched part answers ({parts})"]
    count = len(report["problems"])
    lines = [f"NOT PROTECTED ({report['verdict']}): {count} problem{'s' * (count != 1)}"]
    for problem in report["problems"]:
        lines.append(f"  {problem['part']:<10} since {_when(problem['since'], now)}:"
                     f" {problem['detail']}")
        lines.append(f"  {'':<10} next: {problem['action']}")
    return lines


def render_status(report: dict[str, Any]) -> str:
    """The human-readable form: the verdict, then one fact per line."""
    lines = render_verdict(report)
    if report["state"] is None:
        return "\n".join(lines)
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(report["since"]))
    lines += [
        f"state:    {report['state']} since {since} ({report['cause']}, by {report['actor']})",
        f"domains:  {', '.join(report['protected_domains'])}",
        *render_primary(report["primary"]),
        f"journal:  {render_journal(report['journal'])}",
        render_outage(report["outage"]),
        *render_credentials(report.get("credentials")),
    ]
    if report.get("cluster"):
        lines += render_cluster(report["cluster"])
    return "\n".join(lines)


def check_result(report: dict[str, Any]) -> tuple[str, int]:
    """``status --check``: one line and the exit status, as monitoring plugins give them
    (``SERVICE STATUS - text | perfdata``)."""
    verdict: Verdict = report["verdict"]
    if report["protected"]:
        text = f"protected, state {report['state']}, {len(report['parts'])} parts answer"
    else:
        text = "NOT PROTECTED: " + "; ".join(
            f"{p['part']}: {_shorten(p['detail'])}" for p in report["problems"])
    return f"MAILCONTINUITY {verdict} - {text} | {perfdata(report)}", EXIT_CODES[verdict]


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def perfdata(report: dict[str, Any]) -> str:
    """Performance data: journal lag and spool, the probes' latencies, the problem count."""
    values = [f"problems={len(report['problems'])};;1;0"]
    journal = report["journal"]
    if journal is not None:
        values += [f"journal_lag={journal['lag_seconds']:.3f}s;;;0",
                   f"spooled={journal['spooled']};;;0",
                   f"spool_size={journal['spool_bytes']}B;;;0"]
    for probe in report["primary"]["last_probes"]:
        values.append(f"primary_{probe['probe']}={probe['latency_ms'] / 1000:.3f}s;;;0")
    for check in report["checks"]:
        if check["latency_ms"] is not None:
            values.append(f"{check['part']}_{check['check']}={check['latency_ms'] / 1000:.3f}s;;;0")
    return " ".join(values)
