"""``credentials-sync``: refresh the standby's copy from the directory, and say how it went.

Run by the role's timer every ``credentials.refresh_seconds``. A refresh that reads the
directory replaces the copy whole, so a user removed from the directory, locked in it, or no
longer selected by the filter is gone from the copy at once. A refresh that cannot read the
directory changes nothing: the last copy stays, which is the point while the directory is down.
Either way the outcome is recorded as the check ``credentials``/``refresh`` in the state store,
which ``status`` and the drill read together with the copy's age.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from mailcontinuity.config import Config, ConfigError
from mailcontinuity.credentials.copy import Skipped, passwd_file_text, read_logins, write_copy
from mailcontinuity.credentials.directory import DirectoryUnavailable, read_accounts
from mailcontinuity.store.checks import Check, record_checks
from mailcontinuity.store.db import open_store

log = logging.getLogger(__name__)

PART = "credentials"
CHECK = "refresh"


@dataclass
class RefreshReport:
    """What one refresh did; ``error`` is set when the directory could not be read."""

    copy_file: str
    at: float
    users: int = 0
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    error: str | None = None
    kept_since: float | None = None
    """When the copy kept after a failed refresh was written (None: there is none)."""

    @property
    def failed(self) -> bool:
        return self.error is not None

    def as_dict(self) -> dict[str, Any]:
        return {"copy_file": self.copy_file, "at": self.at, "ok": not self.failed,
                "users": self.users, "added": self.added, "removed": self.removed,
                "skipped": [{"login": s.login, "reason": s.reason} for s in self.skipped],
                "error": self.error, "kept_since": self.kept_since}

    def reason(self) -> str:
        if self.kept_since is None:
            kept = "there is no copy yet"
        else:
            written = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.kept_since))
            kept = f"the copy written at {written} ({self.users} users) is kept"
        return f"cannot read the directory ({self.error}); {kept}"


def refresh_credentials(config: Config, now: float | None = None) -> RefreshReport:
    """Read the directory, replace the copy, record the outcome; never raises for a directory
    that does not answer (the report says so), only for a configuration error."""
    credentials = config.credentials
    if credentials is None:
        raise ConfigError(f"{config.source}: no [credentials] section; add one to use"
                          " credentials-sync (docs/credentials.md)")
    now = time.time() if now is None else now
    path = credentials.copy_file
    report = RefreshReport(str(path), now)
    before = set(read_logins(path))
    try:
        found = read_accounts(config)
    except DirectoryUnavailable as exc:
        report.error = str(exc)
        report.kept_since = _mtime(path)
        report.users = len(before)
        log.warning("event=credentials_refresh_failed copy=%s users_kept=%d reason=%s",
                    path, len(before), report.error)
        _record(config, report)
        return report
    try:
        write_copy(path, passwd_file_text(found.accounts), credentials.copy_group)
    except (OSError, ValueError) as exc:
        report.error = f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}"
        report.kept_since = _mtime(path)
        report.users = len(before)
        log.error("event=credentials_refresh_failed copy=%s reason=%s", path, report.error)
        _record(config, report)
        return report
    after = {account.login for account in found.accounts}
    report.users = len(after)
    report.added = sorted(after - before)
    report.removed = sorted(before - after)
    report.skipped = found.skipped
    log.info("event=credentials_refresh copy=%s users=%d added=%d removed=%d skipped=%d",
             path, report.users, len(report.added), len(report.removed), len(report.skipped))
    for login in report.removed:
        log.info("event=credentials_removed login=%s", login)
    for skipped in found.skipped:
        log.info("event=credentials_skipped login=%s reason=%s", skipped.login, skipped.reason)
    _record(config, report)
    return report


def _mtime(path: Any) -> float | None:
    try:
        return float(path.stat().st_mtime)
    except OSError:
        return None


def _record(config: Config, report: RefreshReport) -> None:
    if report.failed:
        check = Check(PART, CHECK, str(report.copy_file), False, report.at,
                      detail=report.reason(),
                      action="make the directory reachable from the standby (or fix the"
                      " [credentials] keys), then run 'mailcontinuity credentials-sync'")
    else:
        check = Check(PART, CHECK, str(report.copy_file), True, report.at,
                      detail=f"{report.users} users copied")
    store = open_store(config)
    try:
        record_checks(store, config.host_name, [check])
    finally:
        store.close()
