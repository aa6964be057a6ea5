"""Reconciling the outage record with the standby's disk: the full rescan and the one-file update.

The agent calls ``record_file`` for each inotify event and ``rescan`` when it may have missed
events (start, queue overflow, a new folder); failback calls ``rescan`` before each merge pass.
Both end in the same rows, so a missed event costs a rescan, never a lost message.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mailcontinuity.config import Config
from mailcontinuity.mail.maildir import (
    INBOX,
    folder_dirs,
    folder_name,
    keywords_known,
    message_paths,
    read_keywords,
    read_message,
    split_filename,
    user_maildirs,
)
from mailcontinuity.store.outages import ChangeLog, Outage

log = logging.getLogger(__name__)


def protected_maildirs(config: Config) -> dict[str, Path]:
    """Standby Maildir of every protected user that has one, by address."""
    return user_maildirs(config.standby.maildir, list(config.domains.protected))


def rescan(config: Config, changelog: ChangeLog, outage: Outage) -> Outage:
    """Bring the record of ``outage`` in line with the disk; the first rescan is the baseline."""
    baseline = outage.baseline_at is None
    started = time.monotonic()
    for user, maildir in protected_maildirs(config).items():
        rescan_user(changelog, outage.id, user, maildir, baseline, config.milter.id_header,
                    outage.key_scheme)
    if baseline:
        changelog.set_outage(outage.id, baseline_at=time.time())
    log.info("event=rescan outage=%d baseline=%s seconds=%.2f", outage.id, baseline,
             time.monotonic() - started)
    refreshed = changelog.open_outage() or changelog.last_outage()
    assert refreshed is not None
    return refreshed


def rescan_user(changelog: ChangeLog, outage_id: int, user: str, maildir: Path,
                baseline: bool, id_header: str, scheme: int) -> None:
    """Record every file of ``user`` as it is now; files no longer there are marked gone.
    Files are keyed by ``id_header`` (``milter.id_header``) in the outage's key ``scheme``."""
    known = changelog.known_files(outage_id, user)
    seen: set[tuple[str, str]] = set()
    with changelog.store.transaction():
        for folder, directory in folder_dirs(maildir).items():
            changelog.record_folder(outage_id, user, folder, True, baseline)
            keywords = read_keywords(directory)
            for path in message_paths(directory):
                basename, _ = split_filename(path.name)
                seen.add((folder, basename))
                recorded = known.get((folder, basename))
                if recorded == (path.name, True):
                    continue
                if not keywords_known(path.name, keywords):
                    keywords = read_keywords(directory)  # a keyword set during this rescan
                found = read_message(folder, path, keywords, id_header, scheme)
                if found is not None:
                    changelog.upsert_file(outage_id, user, found, baseline)
        for (folder, basename), (_, present) in known.items():
            if present and (folder, basename) not in seen:
                changelog.mark_gone(outage_id, user, folder, basename)
        gone_folders = set(changelog.folders(outage_id, user)) - set(folder_dirs(maildir))
        for folder in gone_folders:
            changelog.record_folder(outage_id, user, folder, False, False)


def record_file(changelog: ChangeLog, outage_id: int, user: str, maildir: Path,
                path: Path, id_header: str, scheme: int) -> None:
    """Update the record for one message path an event named (created, renamed or removed),
    keyed in the outage's key ``scheme``."""
    folder_dir = path.parent.parent
    folder = INBOX if folder_dir == maildir else folder_name(folder_dir.name)
    basename, _ = split_filename(path.name)
    with changelog.store.transaction():
        if path.exists():
            keywords = read_keywords(folder_dir)
            if not keywords_known(path.name, keywords):
                # Renamed for a keyword Dovecot has not written into dovecot-keywords yet:
                # recorded under this name now, the keyword would be lost (the rescan before
                # a merge skips a file whose name it has recorded). Left for the rescan, which
                # reads it again because its name differs from the recorded one.
                log.debug("event=keyword_not_written_yet file=%s", path)
                return
            found = read_message(folder, path, keywords, id_header, scheme)
            if found is not None:
                changelog.upsert_file(outage_id, user, found, baseline=False)
                return
        changelog.mark_gone(outage_id, user, folder, basename, filename=path.name)

