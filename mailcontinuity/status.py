"""What ``mailcontinuity status`` reports, gathered from the state store.

The shape is a contract (shared/design.md): ``state``, ``primary``, ``journal``, ``outage``.
A part that has not reported yet is shown as unknown (null), never as a guess.
"""

from __future__ import annotations

import time
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.milter.status import journal_status, render_journal
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
        "primary": {"healthy": None, "last_probe": None},
        "journal": journal_status(config, store),
        "outage": outage_status(store),
        "generated_at": time.time(),
    }


def render_status(report: dict[str, Any]) -> str:
    """The human-readable form, one fact per line."""
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(report["since"]))
    healthy = report["primary"]["healthy"]
    health = "unknown (no probe yet)" if healthy is None else ("healthy" if healthy else "FAILING")
    lines = [
        f"state:    {report['state']} since {since} ({report['cause']}, by {report['actor']})",
        f"domains:  {', '.join(report['protected_domains'])}",
        f"primary:  {health}",
        f"journal:  {render_journal(report['journal'])}",
        f"outage:   {'none' if report['outage'] is None else report['outage']}",
    ]
    return "\n".join(lines)
