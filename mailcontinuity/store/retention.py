"""Forgetting what nothing needs any more, so that no table of the store grows for ever.

Run by ``mailcontinuity prune`` (daily, from the role's timer): each record kind drops its own
old rows (health probes are pruned by policyd's monitor as it writes them).
"""

from __future__ import annotations

import time

from mailcontinuity.config import Config
from mailcontinuity.store import audit, journal
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.outages import ChangeLog

DAY_SECONDS = 86400


def forget_old_records(config: Config, store: StateStore,
                       now: float | None = None) -> dict[str, int]:
    """Rows deleted, by kind: journal index and alarms and merged outages' detail past
    ``state.retention_days``, audit records past ``audit.retention_days``."""
    now = time.time() if now is None else now
    records = now - config.state.retention_days * DAY_SECONDS
    return {
        "journal_rows": journal.forget_before(store, records),
        "outage_detail_rows": ChangeLog(store).forget_merged_before(records),
        "audit_rows": audit.forget_before(store, now - config.audit.retention_days * DAY_SECONDS),
    }
