"""What ``mailcontinuity status`` reports, gathered from the state store.

The shape is a contract (shared/design.md): ``state``, ``primary``, ``journal``, ``outage``.
A part that has not reported yet is shown as unknown (null), never as a guess.
"""

from __future__ import annotations

import time
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.policyd.queries import current_outage
from mailcontinuity.policyd.report import primary_status, render_outage, render_primary
from mailcontinuity.state import StateStore


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
        "journal": None,
        "outage": current_outage(store),
        "generated_at": time.time(),
    }


def render_status(report: dict[str, Any]) -> str:
    """The human-readable form, one fact per line."""
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(report["since"]))
    lines = [
        f"state:    {report['state']} since {since} ({report['cause']}, by {report['actor']})",
        f"domains:  {', '.join(report['protected_domains'])}",
        *render_primary(report["primary"]),
        f"journal:  {'not reporting' if report['journal'] is None else report['journal']}",
        render_outage(report["outage"]),
    ]
    return "\n".join(lines)
