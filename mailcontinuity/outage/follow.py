"""History as the user left it: in normal times the standby's journal copies follow what the
user does on the primary (folder, flags, deletion) for the retention window.

Without this, every journal copy sits in the standby's INBOX, unread, and in an outage people
see a month of mail as new. A pass per user (the sync agent runs one every
``sync.follow_interval_seconds`` in ``normal``; ``mailcontinuity follow`` runs one now):

1. The primary, read-only (EXAMINE), bounded: per folder one STATUS (UIDVALIDITY, and
   HIGHESTMODSEQ where the server has CONDSTORE). A folder whose HIGHESTMODSEQ has not moved
   since the last pass is not opened at all. Otherwise one ``UID SEARCH SINCE`` of the
   retention window (UIDs only), one FETCH of the identity headers of the UIDs new there, and
   one FETCH of the flags: with CONDSTORE only of messages changed since the last pass
   (``CHANGEDSINCE``), without it of the window's messages (the bounded scan: flags only).
2. The standby, only when something changed: its journal copies (one ``doveadm fetch``), then
   ``doveadm flags``/``move``/``expunge`` on journal copies only (the query demands the journal
   header, so mail users received during an outage is never touched).

What the pass saw is kept per user and folder (``store.follow``), after the standby is changed:
a pass that fails leaves the old record, and the next one reads those folders again.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from imapclient.exceptions import IMAPClientError

from mailcontinuity.config import Config
from mailcontinuity.mail.doveadm import Doveadm, JournalCopy, StandbyUnreachable
from mailcontinuity.mail.imap import CONNECTION_LOST, str_flags
from mailcontinuity.outage.primary import PrimaryError, PrimaryMailbox, connect, read_admin_password
from mailcontinuity.outage.scan import protected_maildirs
from mailcontinuity.store.db import StateStore, open_store
from mailcontinuity.store.follow import FolderSeen, save_folders, seen_folders
from mailcontinuity.store.leases import acquire_lease, holding_lease
from mailcontinuity.store.state import current_state

log = logging.getLogger(__name__)

LEASE = "follow"
# Flags that describe a session or a pending expunge, not what the user did with the message.
NOT_FOLLOWED = frozenset({"\\Recent", "\\Deleted"})


@dataclass(frozen=True)
class StandbyChange:
    """One doveadm step on journal copies of one folder of the standby."""

    kind: str  # "flags", "move", "expunge"
    folder: str
    uids: tuple[int, ...]
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    to: str = ""


@dataclass
class FollowResult:
    user: str
    folders_read: int = 0
    folders_unchanged: int = 0
    changes: list[StandbyChange] = field(default_factory=list)
    error: str = ""


def _primary_view(folders: dict[str, FolderSeen]) -> tuple[dict[str, dict[str, tuple[str, ...]]],
                                                            dict[str, str]]:
    """key -> {folder: flags} on the primary, and key -> arrival day."""
    where: dict[str, dict[str, tuple[str, ...]]] = defaultdict(dict)
    day: dict[str, str] = {}
    for folder, seen in folders.items():
        for key, (flags, arrived) in seen.messages.items():
            where[key].setdefault(folder, flags)
            day[key] = arrived
    return where, day


def follow_changes(copies: list[JournalCopy], before: dict[str, FolderSeen],
                   after: dict[str, FolderSeen], window_start: date) -> list[StandbyChange]:
    """What makes the standby's journal copies look like the primary (pure).

    A copy of a message the primary has: its flags become the primary's, and when it is not in
    one of the folders the primary has it in, it moves to the first of those (by name) that
    holds no other journal copy of it. A message the last pass saw on the primary and this one
    sees in no folder, though it is still inside the window, was deleted there: its journal
    copies go. A message the primary never showed (still in Postfix's queue for it, say) is
    left alone: the journal copy may be the only one.
    """
    now, _ = _primary_view(after)
    earlier, arrived = _primary_view(before)
    by_key: dict[str, list[JournalCopy]] = defaultdict(list)
    for copy in copies:
        by_key[copy.key].append(copy)
    flags: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[int]] = defaultdict(list)
    moves: dict[tuple[str, str], list[int]] = defaultdict(list)
    gone: dict[str, list[int]] = defaultdict(list)
    for key, group in sorted(by_key.items()):
        places = now.get(key)
        if not places:
            if key in earlier and arrived.get(key, "") >= window_start.isoformat():
                for copy in group:
                    gone[copy.folder].append(copy.uid)
            continue
        taken = {copy.folder for copy in group if copy.folder in places}
        for copy in sorted(group, key=lambda c: (c.folder, c.uid)):
            target = copy.folder
            if target not in places:
                free = [folder for folder in sorted(places) if folder not in taken]
                if free:
                    target = free[0]
                    taken.add(target)
            wanted = set(places.get(target, copy.flags)) - NOT_FOLLOWED
            have = set(copy.flags) - NOT_FOLLOWED
            add, remove = tuple(sorted(wanted - have)), tuple(sorted(have - wanted))
            if add or remove:
                flags[(copy.folder, add, remove)].append(copy.uid)
            if target != copy.folder:
                moves[(copy.folder, target)].append(copy.uid)
    # Flags first, in the folder the copy is in now (a move changes its UID; flags go with it).
    return ([StandbyChange("flags", folder, tuple(sorted(uids)), add=add, remove=remove)
             for (folder, add, remove), uids in sorted(flags.items())]
            + [StandbyChange("move", folder, tuple(sorted(uids)), to=target)
               for (folder, target), uids in sorted(moves.items())]
            + [StandbyChange("expunge", folder, tuple(sorted(uids)))
               for folder, uids in sorted(gone.items())])


def read_primary(mailbox: PrimaryMailbox, before: dict[str, FolderSeen], since: date,
                 result: FollowResult) -> dict[str, FolderSeen]:
    """Each folder of the primary as it is now, within the window (see the module's doc)."""
    condstore = b"CONDSTORE" in mailbox.capabilities
    after: dict[str, FolderSeen] = {}
    for folder in sorted(mailbox.folders):
        items = [b"UIDVALIDITY", b"HIGHESTMODSEQ"] if condstore else [b"UIDVALIDITY"]
        status = mailbox.client.folder_status(mailbox.theirs(folder), items)
        uidvalidity = int(status[b"UIDVALIDITY"])
        modseq = int(status[b"HIGHESTMODSEQ"]) if condstore else None
        old = before.get(folder)
        if old is not None and old.uidvalidity != uidvalidity:
            old = None  # renumbered: read it again from scratch
        if old is not None and modseq is not None and old.modseq == modseq:
            after[folder] = old
            result.folders_unchanged += 1
            continue
        after[folder] = _read_folder(mailbox, folder, old, uidvalidity, modseq, since)
        result.folders_read += 1
    return after


def _read_folder(mailbox: PrimaryMailbox, folder: str, old: FolderSeen | None,
                 uidvalidity: int, modseq: int | None, since: date) -> FolderSeen:
    mailbox.client.select_folder(mailbox.theirs(folder), readonly=True)
    mailbox.selected = None  # read-only: failback's steps must select it again to write
    window = {int(uid) for uid in mailbox.client.search(["SINCE", since])}
    known = {uid: entry for uid, entry in (old.uids if old else {}).items() if uid in window}
    new = sorted(window - known.keys())
    messages: dict[int, tuple[str, tuple[str, ...], str]] = {}
    for copy, arrived in mailbox.read_uids(folder, new):
        messages[copy.uid] = (copy.key, _followed(copy.flags), arrived)
    unchanged = sorted(known)
    if unchanged:
        modifiers = ([f"CHANGEDSINCE {old.modseq}"]
                     if old is not None and old.modseq is not None and modseq is not None
                     else None)
        fetched = _fetch_flags(mailbox, unchanged, modifiers)
        for uid in unchanged:
            key, flags, arrived = known[uid]
            if uid in fetched:
                flags = _followed(str_flags(fetched[uid][b"FLAGS"]))
            messages[uid] = (key, flags, arrived)
    return FolderSeen.from_uids(uidvalidity, modseq, messages)


def _fetch_flags(mailbox: PrimaryMailbox, uids: list[int],
                 modifiers: list[str] | None) -> dict[int, dict[bytes, Any]]:
    fetched: dict[int, dict[bytes, Any]] = {}
    for start in range(0, len(uids), 1000):
        fetched |= mailbox.client.fetch(uids[start:start + 1000], ["FLAGS"], modifiers)
    return fetched


def _followed(flags: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(flags) - NOT_FOLLOWED))


def apply_changes(doveadm: Doveadm, user: str, changes: list[StandbyChange]) -> None:
    for change in changes:
        if change.kind == "flags":
            if change.add:
                doveadm.journal_flags(user, change.folder, change.uids, "add", change.add)
            if change.remove:
                doveadm.journal_flags(user, change.folder, change.uids, "remove", change.remove)
        elif change.kind == "move":
            doveadm.journal_move(user, change.folder, change.uids, change.to)
        elif change.kind == "expunge":
            doveadm.journal_expunge(user, change.folder, change.uids)


def follow_user(config: Config, store: StateStore, doveadm: Doveadm, user: str,
                password: str, today: date | None = None) -> FollowResult:
    """One pass for one user: read the primary, change the standby, remember what was seen."""
    result = FollowResult(user)
    since = (today or date.today()) - timedelta(days=config.standby.retention_days + 1)
    before = seen_folders(store, user)
    mailbox = connect(config, user, password)
    try:
        after = read_primary(mailbox, before, since, result)
    except CONNECTION_LOST as exc:
        raise PrimaryError(f"primary IMAP {config.primary.imap}: the connection was lost while"
                           f" reading {user} ({exc}); the next pass tries again") from None
    finally:
        mailbox.close()
    if result.folders_read or before.keys() != after.keys():
        copies = doveadm.journal_index(user, config.milter.id_header)
        result.changes = follow_changes(copies, before, after, since)
        apply_changes(doveadm, user, result.changes)
    save_folders(store, user, after)
    return result


def follow_all(config: Config, users: list[str] | None = None,
               actor: str = "sync-agent") -> list[FollowResult]:
    """One pass over every protected user (or ``users``), one at a time (the primary feels one
    session of ours at a time), under the ``follow`` lease so that two passes never race."""
    store = open_store(config)
    holder = f"{actor}-{time.time():.0f}"
    results = []
    with closing(store), holding_lease(store, LEASE, holder):
        password = read_admin_password(config)
        doveadm = Doveadm(config.milter.doveadm_config)
        for user in users if users is not None else sorted(protected_maildirs(config)):
            state = current_state(store).name
            if state != "normal":
                # The outage record's baseline is the standby as it was: no change under it.
                results.append(FollowResult(user, error=f"not followed: the state is {state}"))
                continue
            started = time.monotonic()
            try:
                result = follow_user(config, store, doveadm, user, password)
            except (PrimaryError, StandbyUnreachable, IMAPClientError) as exc:
                result = FollowResult(user, error=str(exc))
                log.warning("event=follow_failed user=%s error=%r", user, str(exc))
            else:
                log.info("event=follow_user user=%s folders_read=%d folders_unchanged=%d"
                         " standby_changes=%d seconds=%.2f", user, result.folders_read,
                         result.folders_unchanged, len(result.changes),
                         time.monotonic() - started)
            results.append(result)
            acquire_lease(store, LEASE, holder)  # renew while working
    return results

