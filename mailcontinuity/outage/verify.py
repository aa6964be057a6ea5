"""``mailcontinuity verify``: audit the primary against the record of the last outage.

Independent of failback's checkpoints on purpose: it looks at the primary as it is, so it also
catches what a checkpoint cannot (a copy delivered twice, a flag a later session lost).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.outage.primary import PrimaryCopy, connect, read_admin_password
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog, RecordedMessage


class VerifyError(Exception):
    """Nothing to verify; the message says why."""


def verify(config: Config) -> dict[str, Any]:
    """Per user: outage mail missing from the primary, duplicated on it, flags that differ."""
    store = open_store(config)
    try:
        changelog = ChangeLog(store)
        outage = changelog.last_outage()
        if outage is None:
            raise VerifyError("no outage recorded in the state store; nothing to verify")
        password = read_admin_password(config)
        users = {}
        for user in changelog.users(outage.id):
            mailbox = connect(config, user, password)
            try:
                users[user] = verify_user(changelog.messages(outage.id, user), mailbox.index())
            finally:
                mailbox.close()
    finally:
        store.close()
    problems = sum(len(found) for report in users.values() for found in report.values())
    return {"outage": outage.id, "outage_status": outage.status, "ok": problems == 0,
            "problems": problems, "users": users}


def verify_user(rows: list[RecordedMessage],
                index: dict[str, list[PrimaryCopy]]) -> dict[str, list[dict[str, Any]]]:
    missing: list[dict[str, Any]] = []
    duplicated: list[dict[str, Any]] = []
    flag_mismatches: list[dict[str, Any]] = []
    groups: dict[str, list[RecordedMessage]] = defaultdict(list)
    for row in rows:
        groups[row.key].append(row)
    for key, group in groups.items():
        outage_mail = any(row.kind == "outage" for row in group)
        # Of outage mail only the delivered copies count: a journal copy of the same message
        # (accepted just before the failover) is not merged, as the plan says.
        current = [row for row in group
                   if row.present and (row.kind == "outage" or not outage_mail)]
        baseline = {row.folder: row for row in group if row.in_baseline}
        copies = index.get(key, [])
        if not current or not (outage_mail or baseline):
            continue
        # Outage mail must be there once per standby copy; history only where it moved to,
        # and only if the primary had it at all (else failback reported it).
        expected = [row for row in current if outage_mail or (
            row.folder not in baseline and copies)]
        message_id = group[0].message_id
        wanted = Counter(row.folder for row in expected)
        have = Counter(copy.folder for copy in copies)
        for folder, count in wanted.items():
            if have[folder] < count:
                missing.append({"folder": folder, "message_id": message_id,
                                "missing": count - have[folder]})
        if (outage_mail or wanted) and len(copies) > len(current):
            duplicated.append({"message_id": message_id, "on_primary": len(copies),
                               "on_standby": len(current),
                               "folders": sorted(copy.folder for copy in copies)})
        for row in current:
            copy = next((c for c in copies if c.folder == row.folder), None)
            if copy is None:
                continue
            if outage_mail or row.folder not in baseline:
                lacking, extra = set(row.flags) - set(copy.flags), set()
            else:
                before = set(baseline[row.folder].base_flags or ())
                lacking = (set(row.flags) - before) - set(copy.flags)
                extra = (before - set(row.flags)) & set(copy.flags)
            if lacking or extra:
                flag_mismatches.append({"folder": row.folder, "message_id": message_id,
                                        "lacking": sorted(lacking), "extra": sorted(extra)})
    return {"missing": missing, "duplicated": duplicated, "flag_mismatches": flag_mismatches}
