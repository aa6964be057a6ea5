"""What ``mailcontinuity status`` reports, gathered from the state store.

The shape is a contract (shared/design.md): ``state``, ``primary``, ``journal``, ``outage``.
A part that has not reported yet is shown as unknown (null), never as a guess.
"""

from __future__ import annotations

import time
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.milter.status import journal_status, render_journal
from mailcontinuity.policyd.queries import current_outage
from mailcontinuity.policyd.report import primary_status, render_primary
from mailcontinuity.state import StateStore
from mailcontinuity.sync.changelog import outage_status


def collect_status(config: Config, store: StateStore) -> dict[str, Any]:
    state = store.current_state()
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


def combined_outage(store: StateStore) -> dict[str, Any] | None:
    """The outage as the audit log knows it (start, cause, actor) plus what the sync agent
    recorded of it (activity, failback progress). An outage whose activity is not merged yet
    is shown even after the state went back to ``normal``: that is work still owed."""
    current = current_outage(store)
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
