"""The ``journal`` part of ``mailcontinuity status``: spool backlog plus the journal index.

The spool is read from disk (entries waiting, age of the oldest = the journal lag), so status
is right even when the milter is down; shipped/failed counts and alarms come from the index.
"""

from __future__ import annotations

from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.milter.index import journal_summary
from mailcontinuity.milter.spool import spool_backlog
from mailcontinuity.state import StateStore


def journal_status(config: Config, store: StateStore) -> dict[str, Any]:
    spooled, lag = spool_backlog(config.milter.spool_dir)
    return {
        "sink": config.milter.sink,
        "spooled": spooled,
        "lag_seconds": round(lag, 3),
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
