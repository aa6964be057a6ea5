"""``mailcontinuity prune``: drop journal copies older than the retention from the standby.

Only copies the journal index says the milter shipped are candidates, and each is checked for the
journal header before it is deleted: mail users received or sent on the standby during an
outage never carries that header and is never in the index, so it is never touched. A file the
maildir sink wrote is found by its name where it was written; a copy delivered over LMTP, or one
the follow pass filed in another folder, by its id header, through the standby's ``doveadm`` (so
prune of such copies runs where doveadm reaches the standby).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.journal.sinks import LMTP_LOCATION_PREFIX
from mailcontinuity.mail.doveadm import Doveadm, StandbyUnreachable
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.mail.maildir import find_delivered, read_header_fields
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.journal import CopyRecord, mark_pruned, prunable
from mailcontinuity.store.retention import DAY_SECONDS

log = logging.getLogger(__name__)



def is_journal_copy(path: Path) -> bool:
    """True when the stored message carries the journal header (checked before deleting),
    wherever it is in the header section."""
    return read_header_fields(path, (JOURNAL_HEADER,)).strip() != b""


def _current_path(record: CopyRecord) -> Path | None:
    """Where the copy is now: Dovecot moves it from new/ to cur/ and renames it for flags."""
    if record.location is None:
        return None
    recorded = Path(record.location)
    base = recorded.name.split(":", 1)[0]
    return find_delivered(recorded.parent.parent, base)


def _expunge_lmtp_copy(doveadm: Doveadm, id_header: str, record: CopyRecord) -> bool:
    """Expunge a copy delivered over LMTP; False when the user had already deleted it."""
    args = (record.address, record.folder, id_header, record.message_id)
    if not doveadm.journal_copies(*args):
        return False
    doveadm.expunge_journal_copies(*args)
    return True


def prune_journal(config: Config, store: StateStore, now: float | None = None) -> dict[str, Any]:
    """Delete expired journal copies; returns counts for the report."""
    cutoff = (now or time.time()) - config.standby.retention_days * DAY_SECONDS
    deleted: list[CopyRecord] = []
    gone: list[CopyRecord] = []
    kept: list[CopyRecord] = []
    postponed: list[CopyRecord] = []
    doveadm = Doveadm(config.milter.doveadm_config)
    for record in prunable(store, cutoff):
        if (record.location or "").startswith(LMTP_LOCATION_PREFIX):
            try:
                found = _expunge_lmtp_copy(doveadm, config.milter.id_header, record)
            except StandbyUnreachable as exc:
                log.warning("event=prune_postponed id=%s address=%s error=%r", record.message_id,
                            record.address, str(exc))
                postponed.append(record)
                continue
            (deleted if found else gone).append(record)
            continue
        path = _current_path(record)
        if path is None:
            # Not where it was written: the follow pass may have filed it as the user did on
            # the primary (any folder); else the user expunged it, nothing left to delete.
            try:
                found = _expunge_lmtp_copy(doveadm, config.milter.id_header,
                                           replace(record, folder="*"))
            except StandbyUnreachable as exc:
                log.warning("event=prune_postponed id=%s address=%s error=%r",
                            record.message_id, record.address, str(exc))
                postponed.append(record)
                continue
            (deleted if found else gone).append(record)
        elif is_journal_copy(path):
            os.unlink(path)
            deleted.append(record)
        else:
            log.warning("event=prune_refused path=%s reason=no_journal_header", path)
            kept.append(record)
    mark_pruned(store, [*deleted, *gone])
    log.info("event=prune deleted=%d already_gone=%d refused=%d postponed=%d cutoff=%.0f",
             len(deleted), len(gone), len(kept), len(postponed), cutoff)
    return {"cutoff": cutoff, "retention_days": config.standby.retention_days,
            "deleted": len(deleted), "already_gone": len(gone), "refused": len(kept),
            "postponed": len(postponed)}


def render_prune(report: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report["cutoff"]))
    lines = [f"pruned journal copies accepted before {when} ({report['retention_days']} days):"
             f" {report['deleted']} deleted, {report['already_gone']} already gone,"
             f" {report['refused']} refused (no journal header),"
             f" {report['postponed']} postponed (standby unreachable: run prune again)"]
    forgotten = report.get("forgotten")
    if forgotten is not None:
        lines.append("forgot old records in the state store: " + ", ".join(
            f"{count} {kind.replace('_', ' ')}" for kind, count in forgotten.items()))
    return "\n".join(lines)
