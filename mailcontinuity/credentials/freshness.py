"""How fresh the standby's copy is: what ``status`` shows and the drill checks.

The copy's age is the time since it was last written (``credentials-sync`` rewrites it whole on
every successful refresh), read from the file itself on the standby's host and, elsewhere (a
gateway running ``status``), from the last refresh the store recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.credentials.copy import read_logins
from mailcontinuity.credentials.sync import CHECK, PART
from mailcontinuity.store.checks import CheckRecord, latest_checks
from mailcontinuity.store.db import StateStore


@dataclass(frozen=True)
class CopyStatus:
    copy_file: str
    max_age_seconds: float
    written_at: float | None
    """When the copy was last written; None: there is none (that we know of)."""
    age_seconds: float | None
    users: int | None
    """How many logins the copy holds, when it is readable here."""
    on_this_host: bool
    last_refresh_at: float | None
    last_refresh_ok: bool | None
    last_refresh_detail: str
    failing_since: float | None

    @property
    def too_old(self) -> bool:
        return self.age_seconds is None or self.age_seconds > self.max_age_seconds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def copy_status(config: Config, store: StateStore, now: float) -> CopyStatus | None:
    """The copy's age and the last refresh, or None without ``[credentials]``."""
    credentials = config.credentials
    if credentials is None:
        return None
    record: CheckRecord | None = next(
        (r for r in latest_checks(store) if (r.check.part, r.check.name) == (PART, CHECK)), None)
    path = credentials.copy_file
    try:
        written_at: float | None = path.stat().st_mtime
        on_this_host = True
    except OSError:
        on_this_host = False
        written_at = record.check.at if record is not None and record.check.ok else None
    users = len(read_logins(path)) if on_this_host else None
    return CopyStatus(
        str(path), credentials.max_age_seconds, written_at,
        None if written_at is None else max(0.0, now - written_at), users, on_this_host,
        record.check.at if record else None, record.check.ok if record else None,
        record.check.detail if record else "",
        record.since if record is not None and not record.check.ok else None)
