"""``mailcontinuity verify``: audit the primary against the record of the last outage.

Independent of failback's checkpoints on purpose: it looks at the primary as it is, so it also
catches what a checkpoint cannot (a copy delivered twice, a flag a later session lost). Each
problem names the message as an operator finds it: the standby file, the gateway's id, the
Message-ID and the subject. Before a message is called missing, the folder is searched by its
Message-ID as well: a copy the key does not match (stamped under another id header, say) is
reported as such, never as absent.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from imapclient.exceptions import IMAPClientError

from mailcontinuity.config import Config
from mailcontinuity.mail.headers import parse_headers
from mailcontinuity.mail.maildir import read_header_fields
from mailcontinuity.outage.plan import (
    arrival_flags,
    late_journal_flag_changes,
    match_history,
    merged_flags,
    older_copies_needed,
    outage_copies,
    outage_flags,
)
from mailcontinuity.outage.primary import (
    ARRIVAL_MARGIN,
    PrimaryCopy,
    PrimaryMailbox,
    connect,
    read_admin_password,
)
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog, RecordedMessage

Found = list[dict[str, Any]]


class VerifyError(Exception):
    """Nothing to verify; the message says why."""


def verify(config: Config) -> dict[str, Any]:
    """Per user: outage mail missing from the primary, duplicated on it, flags that differ.
    The outcome is kept with the outage (its summary), for the incident report."""
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
                rows = changelog.messages(outage.id, user)
                found = verify_user(rows, outage_index(mailbox, rows, outage.started_at,
                                                             outage.key_scheme))
                found["missing"], found["not_matched"] = look_again(mailbox, found["missing"])
                users[user] = found
            finally:
                mailbox.close()
        problems = sum(len(found) for report in users.values() for found in report.values())
        changelog.add_to_summary(outage.id, verify={"at": time.time(), "ok": problems == 0,
                                                    "problems": problems},
                                 to_repair=to_repair(users))
    finally:
        store.close()
    return {"outage": outage.id, "outage_status": outage.status, "ok": problems == 0,
            "problems": problems, "users": users}


def to_repair(users: dict[str, dict[str, Found]]) -> dict[str, dict[str, list[str]]]:
    """What ``failback --yes`` (in ``normal``, after verify) merges again, per user: the keys
    of every problem failback can act on (``keys``) and those found duplicated
    (``duplicated``, their extra copies are removed). A copy under another key (not matched)
    is not failback's to fix: it cannot recognise it either."""
    repair = {}
    for user, found in users.items():
        keys = sorted({item["key"] for name in ("missing", "duplicated", "flag_mismatches")
                       for item in found.get(name, ())})
        if keys:
            repair[user] = {"keys": keys, "duplicated": sorted(
                {item["key"] for item in found.get("duplicated", ())})}
    return repair


def outage_index(mailbox: PrimaryMailbox, rows: list[RecordedMessage], started_at: float,
                 scheme: int) -> dict[str, list[PrimaryCopy]]:
    """The primary's copies that can matter, for failback's plan and verify alike: what was
    saved (with SAVEDATE), else what arrived (INTERNALDATE), since the outage began, with a
    margin for the server's time zone (``PrimaryMailbox.window``); the folders of history users
    changed; and the copies of each message that may be older (changed history, and outage
    mail dated before the window) wherever the user filed them, found by its id in every
    other folder (see ``PrimaryMailbox.index``)."""
    since, by = mailbox.window(started_at)
    keys, folders = older_copies_needed(
        rows, None if by == "SAVEDSINCE" else started_at - ARRIVAL_MARGIN)
    return mailbox.index(since, folders, keys, by, scheme)


def verify_user(rows: list[RecordedMessage],
                index: dict[str, list[PrimaryCopy]]) -> dict[str, list[dict[str, Any]]]:
    missing: list[dict[str, Any]] = []
    duplicated: list[dict[str, Any]] = []
    flag_mismatches: list[dict[str, Any]] = []
    groups: dict[str, list[RecordedMessage]] = defaultdict(list)
    for row in rows:
        groups[row.key].append(row)
    for key, group in groups.items():
        copies = index.get(key, [])
        if any(row.kind == "outage" for row in group):
            _verify_outage_mail(group, copies, missing, duplicated, flag_mismatches)
        elif any(row.in_baseline for row in group):
            _verify_history(group, copies, missing, duplicated, flag_mismatches)
        else:
            _verify_late_journal_copy(group, copies, flag_mismatches)
    return {"missing": missing, "duplicated": duplicated, "flag_mismatches": flag_mismatches}


def _verify_outage_mail(group: list[RecordedMessage], copies: list[PrimaryCopy], missing: Found,
                        duplicated: Found, flag_mismatches: Found) -> None:
    """Outage mail must be on the primary once per standby copy, with the standby's flags.
    Only the delivered copies count: a journal copy of the same message (accepted just before
    the failover) is not merged unless it is the only one the user kept, and the flags the
    user set on it are (``outage_copies``)."""
    current = outage_copies(group)
    if not current:
        return
    wanted = Counter(row.folder for row in current)
    have = Counter(copy.folder for copy in copies)
    for folder, count in wanted.items():
        if have[folder] < count:
            missing.append({"folder": folder, **name_of(current[0]),
                            "missing": count - have[folder]})
    if len(copies) > len(current):
        duplicated.append({**name_of(current[0]), "on_primary": len(copies),
                           "on_standby": len(current),
                           "folders": sorted(copy.folder for copy in copies)})
    base = arrival_flags(group)
    for row in current:
        copy = next((c for c in copies if c.folder == row.folder), None)
        if copy is None:
            continue
        lacking, extra = outage_flags(base, row.flags, copy.flags)
        if lacking or extra:
            flag_mismatches.append({"folder": row.folder, **name_of(row),
                                    "lacking": list(lacking), "extra": list(extra)})


def _verify_history(group: list[RecordedMessage], copies: list[PrimaryCopy], missing: Found,
                    duplicated: Found, flag_mismatches: Found) -> None:
    """History: the user's changes on the standby, judged on the primary's copies wherever
    they are filed, paired the way failback pairs them (``match_history``). Only where the
    primary had the message at all (else failback reported it)."""
    if not copies:
        return
    match = match_history(group, copies)
    current = [row for row in group if row.present]
    targets = [(row, copy, placed) for _, row, copy, placed in match.moves] + [
        (row, copy, copy is not None) for row, copy in match.copies]
    for row, _, placed in targets:
        if not placed:
            missing.append({"folder": row.folder, **name_of(row), "missing": 1})
    if targets and match.spare:
        duplicated.append({**name_of(current[0]), "on_primary": len(copies),
                           "on_standby": len(current),
                           "folders": sorted(copy.folder for copy in copies)})
    judged = [(base.base_flags or (), row, copy) for base, row, copy in match.stays] + [
        (base.base_flags or (), row, copy) for base, row, copy, placed in match.moves
        if placed] + [((), row, copy) for row, copy in match.copies]
    for base, row, maybe in judged:
        if maybe is None:
            continue
        lacking, extra = merged_flags(base, row.flags, maybe.flags)
        if lacking or extra:
            flag_mismatches.append({"folder": maybe.folder, **name_of(row),
                                    "lacking": list(lacking), "extra": list(extra)})


def _verify_late_journal_copy(group: list[RecordedMessage], copies: list[PrimaryCopy],
                              flag_mismatches: Found) -> None:
    """A journal copy first seen after the baseline: the user's flag changes on it, judged on
    the primary's copy failback pairs it with (``late_journal_flag_changes``)."""
    for row, copy, lacking, extra in late_journal_flag_changes(group, copies):
        flag_mismatches.append({"folder": copy.folder, **name_of(row),
                                "lacking": list(lacking), "extra": list(extra)})


def name_of(row: RecordedMessage) -> dict[str, Any]:
    """How an operator finds the message: its file on the standby, the gateway's id (when it
    has one), its Message-ID and subject (read from the file; empty when it is gone)."""
    return {"message_id": row.message_id, "file": row.path, "key": row.key,
            "id": row.key.removeprefix("id:") if row.key.startswith("id:") else "",
            "subject": _subject(Path(row.path))}


def _subject(path: Path) -> str:
    try:
        return parse_headers(read_header_fields(path, ("Subject",)), "")["subject"]
    except OSError:
        return ""



def look_again(mailbox: PrimaryMailbox, missing: Found) -> tuple[Found, Found]:
    """(missing, not matched): each folder a message seems missing from is searched by its
    Message-ID; copies found that way are there, but under a key the standby's record does not
    have (failback would not recognise them either): reported as such, not as missing."""
    still_missing: Found = []
    not_matched: Found = []
    for item in missing:
        found = 0
        if item["message_id"]:
            try:
                mailbox.select(item["folder"])
                found = len(mailbox.client.search(["HEADER", "Message-ID", item["message_id"]]))
            except IMAPClientError:
                found = 0  # the folder is not there: missing indeed
        if found:
            not_matched.append({**item, "found_by_message_id": found})
        else:
            still_missing.append(item)
    return still_missing, not_matched
