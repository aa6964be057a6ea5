"""What failback must do for one user: the difference between the outage record and the primary.

Pure functions over the record and the primary's index, so the plan is the same whether it is
printed (``--dry-run``), executed, or computed again after a crash: every action's effect is
visible in the primary's index, so a re-planned run never repeats what already happened, and
action ids are stable so checkpoints recognise finished work.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Literal

from mailcontinuity.outage.primary import PrimaryCopy
from mailcontinuity.store.outages import RecordedMessage

ActionKind = Literal["create_folder", "append", "flags", "move", "copy", "delete", "report"]


@dataclass(frozen=True)
class Action:
    """One step on the primary; ``report`` steps only tell the operator something."""

    kind: ActionKind
    folder: str
    key: str = ""
    message_id: str = ""
    source: RecordedMessage | None = None
    uid: int = 0
    from_folder: str = ""
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    reason: str = ""
    id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Each step names the copy it acts on (the primary's uid, the standby file appended):
        # two copies of a message in one folder get a checkpoint each, so that after a crash
        # the second is never skipped as done.
        detail = {
            "create_folder": "",
            "append": self.source.basename if self.source is not None else "",
            "flags": f"{self.uid}+{' '.join(self.add)}-{' '.join(self.remove)}",
            "move": f"{self.from_folder}:{self.uid}",
            "copy": f"{self.from_folder}:{self.uid}",
            "delete": str(self.uid),
            "report": self.reason,
        }[self.kind]
        object.__setattr__(self, "id", f"{self.kind}|{self.folder}|{self.key}|{detail}")


def plan_user(rows: list[RecordedMessage], folders: dict[str, tuple[bool, bool]],
              index: dict[str, list[PrimaryCopy]], primary_folders: set[str],
              propagate_deletions: bool, repair: AbstractSet[str] = frozenset()) -> list[Action]:
    """Every action for one user, folders first, so appends and moves find their target.

    ``repair``: keys ``verify`` found duplicated on the primary; their copies that stand for
    none of the standby's (``HistoryMatch.spare``, outage mail beyond its standby copies) are
    deleted. Only on the operator's ``failback`` after verify: the same message (same id)
    stays in each folder the standby has it in, so nothing but the extra placement is lost.
    """
    actions = [Action("create_folder", folder) for folder, (in_baseline, present)
               in sorted(folders.items())
               if present and not in_baseline and folder not in primary_folders]
    groups: dict[str, list[RecordedMessage]] = defaultdict(list)
    for row in rows:
        groups[row.key].append(row)
    for key, group in groups.items():
        copies = list(index.get(key, ()))
        if any(row.kind == "outage" for row in group):
            actions += _outage_message(key, group, copies, key in repair)
        elif any(row.in_baseline for row in group):
            actions += _existing_message(key, group, copies, propagate_deletions,
                                         key in repair)
        else:
            actions += _late_journal_copy(key, group, copies)
    needed = {a.folder for a in actions if a.kind in ("append", "move", "copy")}
    created = {a.folder for a in actions if a.kind == "create_folder"}
    missing = sorted(needed - primary_folders - created)
    return [Action("create_folder", folder) for folder in missing] + actions


def older_copies_needed(rows: list[RecordedMessage], dated_before: float | None = None
                        ) -> tuple[set[str], set[str]]:
    """Keys whose copies on the primary may predate the outage, and folders to read in full.

    History the user changed during the outage (flags, moves, copies, deletions) is read in
    full in the folders it was and is in on the standby, and found by its key in every other
    folder (the user may have filed it anywhere on the primary before the outage); non-journal
    mail the standby already held when the outage began (a failback without the agent's
    record) may have been on the primary all along. Every other key can only have copies saved
    on the primary since the outage began.

    ``dated_before`` (a primary without SAVEDATE, read by INTERNALDATE): outage mail whose
    standby file is dated before it is found by its key too, since failback APPENDs it with
    that date (a client may have set any date on its APPEND to the standby).
    """
    groups: dict[str, list[RecordedMessage]] = defaultdict(list)
    for row in rows:
        groups[row.key].append(row)
    keys: set[str] = set()
    folders: set[str] = set()
    for key, group in groups.items():
        if any(row.kind == "outage" for row in group):
            if any(row.in_baseline or (dated_before is not None and row.kind == "outage"
                                       and row.mtime < dated_before) for row in group):
                keys.add(key)
        elif any(row.in_baseline for row in group):
            if any(row.present != row.in_baseline
                   or (row.in_baseline and row.flags != row.base_flags) for row in group):
                keys.add(key)
                folders.update(row.folder for row in group)
        elif _late_flags_changed(group):
            keys.add(key)  # its flags go to the primary's copy wherever it is filed
    return keys, folders


def _gained(now: Iterable[str], before: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(now) - set(before)))


def _outage_message(key: str, group: list[RecordedMessage], copies: list[PrimaryCopy],
                    repair: bool = False) -> list[Action]:
    """Mail that reached the standby during the outage: on the primary once per standby copy.

    Only delivered copies count: a message accepted just before the failover has a journal
    copy too (same id), and merging both would put it on the primary twice; the journal copy
    stands in when it is the only one the user kept (``outage_copies``).
    """
    current = outage_copies(group)
    message_id = group[0].message_id
    if not current:
        if copies:
            return []
        return [Action("report", group[0].folder, key, message_id, reason="deleted_on_standby")]
    spare = list(copies)
    unplaced = []
    actions = []
    base = arrival_flags(group)
    for row in current:
        match = next((copy for copy in spare if copy.folder == row.folder), None)
        if match is None:
            unplaced.append(row)
            continue
        spare.remove(match)
        add, remove = outage_flags(base, row.flags, match.flags)
        if add or remove:
            actions.append(Action("flags", row.folder, key, message_id, uid=match.uid,
                                  add=add, remove=remove))
    wanted = {row.folder for row in current}
    for row in unplaced:
        # A copy the primary got elsewhere (its queued copy went to INBOX while the user moved
        # the standby's copy): move it rather than add a second one.
        elsewhere = next((copy for copy in spare if copy.folder not in wanted), None)
        if elsewhere is not None:
            spare.remove(elsewhere)
            add, remove = outage_flags(base, row.flags, elsewhere.flags)
            actions.append(Action("move", row.folder, key, message_id, uid=elsewhere.uid,
                                  from_folder=elsewhere.folder, add=add, remove=remove))
        else:
            actions.append(Action("append", row.folder, key, message_id, source=row))
    if repair:
        actions += [Action("delete", copy.folder, key, message_id, uid=copy.uid)
                    for copy in spare]
    return actions


def outage_copies(group: list[RecordedMessage]) -> list[RecordedMessage]:
    """The standby's copies of outage mail that go to the primary, by folder, each with every
    flag the user set on its journal copy.

    A message accepted just before the failover sits twice on the standby: its journal copy
    and its delivery from the queue. The delivered copies are merged (the plan's rule); if the
    user kept only the journal copy (deleted the delivered one as a duplicate), that one is,
    so the message still reaches the primary. The user sees both and may read or flag either:
    a flag set on the journal copy since it arrived (``journal_base``) goes with every merged
    copy, so a flag set on either copy wins.
    """
    delivered = [row for row in group if row.present and row.kind == "outage"]
    journal = [row for row in group if row.present and row.kind == "existing"]
    base = journal_base(group)
    gained = {flag for row in journal for flag in row.flags} - base
    return [replace(row, flags=tuple(sorted(set(row.flags) | gained)))
            if gained - set(row.flags) else row
            for row in sorted(delivered or journal, key=lambda row: row.folder)]


def journal_base(group: list[RecordedMessage]) -> set[str]:
    """The flags a message's journal copy had when it arrived on the standby, whatever the
    user did with it since: its baseline flags when the baseline has it, else those every one
    of its rows was first seen with (a copy the user read and then filed is first seen in
    its new folder already read, so its own ``first_flags`` would hide that read)."""
    rows = [row for row in group if row.kind == "existing"]
    if any(row.in_baseline for row in rows):
        starts = [set(row.base_flags or ()) for row in rows if row.in_baseline]
    else:
        starts = [set(row.first_flags or ()) for row in rows]
    return set.intersection(*starts) if starts else set()


def _late_flags_changed(group: list[RecordedMessage]) -> bool:
    base = journal_base(group)
    return any(row.present and set(row.flags) != base for row in group)


def match_late_journal_copy(group: list[RecordedMessage], copies: list[PrimaryCopy]
                            ) -> list[tuple[RecordedMessage, PrimaryCopy]]:
    """Pair a journal copy the record first saw after the baseline with the primary's copies.

    Such a copy (shipped a moment after the baseline was taken, for mail the primary got
    before the failover) has no baseline row to tell what the user changed, only the flags it
    was first seen with (``journal_base``): its flag changes since then are replayed on the
    primary's copy in the same folder, else on one filed elsewhere (the primary's copy may be
    in Archive while the journal copy stays in INBOX). A move or deletion of it on the standby
    is not replayed: where the journal put it is not recorded, so a move cannot be told from
    the primary's own filing.
    """
    present = sorted((row for row in group if row.present), key=lambda row: row.folder)
    spare = sorted(copies, key=lambda copy: (copy.folder, copy.uid))
    pairs: list[tuple[RecordedMessage, PrimaryCopy]] = []
    unpaired = []
    for row in present:
        copy = next((copy for copy in spare if copy.folder == row.folder), None)
        if copy is None:
            unpaired.append(row)
        else:
            spare.remove(copy)
            pairs.append((row, copy))
    pairs += zip(unpaired, spare, strict=False)
    return pairs


def late_journal_flag_changes(group: list[RecordedMessage], copies: list[PrimaryCopy]
                              ) -> list[tuple[RecordedMessage, PrimaryCopy, tuple[str, ...],
                                              tuple[str, ...]]]:
    """(standby row, primary copy, add, remove) for each pairing of a late journal copy
    (``match_late_journal_copy``) whose flags differ, merged three ways against the flags it
    arrived with: what the plan does and ``verify`` expects done."""
    base = journal_base(group)
    changes = []
    for row, copy in match_late_journal_copy(group, copies):
        add, remove = merged_flags(base, row.flags, copy.flags)
        if add or remove:
            changes.append((row, copy, add, remove))
    return changes


def _late_journal_copy(key: str, group: list[RecordedMessage],
                       copies: list[PrimaryCopy]) -> list[Action]:
    """The user's flag changes on a journal copy first seen after the baseline."""
    return [Action("flags", copy.folder, key, row.message_id, uid=copy.uid, add=add,
                   remove=remove)
            for row, copy, add, remove in late_journal_flag_changes(group, copies)]


@dataclass
class HistoryMatch:
    """How one history message's standby copies correspond to its copies on the primary.

    The primary's copy is found by identity (its key), wherever the user filed it: a journal
    copy sits in the standby's INBOX while the primary's copy may be in Archive. Each of the
    standby's changes since the baseline is a transition of one of its copies: a *stay* (same
    folder, maybe new flags), a *move* (gone from one folder, new in another), a *copy* (new in
    a folder, nothing gone) or a *deletion* (gone, nothing new). Each transition gets the
    primary copy it applies to: first a copy already where the standby's copy is now (placed by
    an earlier pass, or filed there on both sides), then a copy in the standby copy's baseline
    folder, then one filed elsewhere. Pairing in that order makes the plan a fixed point: an
    applied move leaves its copy placed, and no other transition's pairing changes.
    """

    stays: list[tuple[RecordedMessage, RecordedMessage, PrimaryCopy | None]]
    """(baseline row, current row, primary copy)."""
    moves: list[tuple[RecordedMessage, RecordedMessage, PrimaryCopy | None, bool]]
    """(baseline row, current row, primary copy, already placed in the new folder)."""
    copies: list[tuple[RecordedMessage, PrimaryCopy | None]]
    """(current row, the primary's copy already in that folder)."""
    deletes: list[tuple[RecordedMessage, PrimaryCopy | None]]
    ambiguous: bool
    """The primary holds more unexplained copies than the standby had: which one a deletion
    meant cannot be known, so none is deleted (reported instead)."""
    spare: list[PrimaryCopy]
    """Copies that stand for none of the standby's: beside a move, a duplicate."""


def match_history(group: list[RecordedMessage], copies: list[PrimaryCopy]) -> HistoryMatch:
    """Pair a history message's standby transitions with its primary copies (see
    ``HistoryMatch``); pure, shared by the plan and ``verify`` so that both judge alike."""
    before = {row.folder: row for row in group if row.in_baseline}
    now = {row.folder: row for row in group if row.present}
    stayed = sorted(before.keys() & now.keys())
    removed = sorted(before.keys() - now.keys())
    added = sorted(now.keys() - before.keys())
    moved = list(zip(removed, added, strict=False))
    copied, deleted = added[len(removed):], removed[len(added):]
    spare = sorted(copies, key=lambda copy: (copy.folder, copy.uid))

    def take(folder: str | None) -> PrimaryCopy | None:
        found = next((copy for copy in spare if folder is None or copy.folder == folder), None)
        if found is not None:
            spare.remove(found)
        return found

    placed = {folder: take(folder) for folder in added}
    paired: dict[str, PrimaryCopy | None] = {folder: take(folder) for folder in stayed}
    needing = ([folder for folder in stayed if paired[folder] is None]
               + [origin for origin, target in moved if placed[target] is None] + deleted)
    ambiguous = len(spare) > len(needing)
    for folder in needing:
        paired[folder] = take(folder)
    for folder in needing:
        if paired[folder] is None and (folder not in deleted or not ambiguous):
            paired[folder] = take(None)
    return HistoryMatch(
        stays=[(before[f], now[f], paired[f]) for f in stayed],
        moves=[(before[origin], now[target], placed[target] or paired.get(origin),
                placed[target] is not None) for origin, target in moved],
        copies=[(now[target], placed[target]) for target in copied],
        deletes=[(before[f], paired.get(f)) for f in deleted],
        ambiguous=ambiguous, spare=spare)


def merged_flags(base: Iterable[str], now: Iterable[str],
                 primary: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(add, remove) on the primary's copy: the three-way merge of flags against the state at
    failover (``base``, the standby's baseline). A flag the user changed on the standby takes
    the standby's value; every other flag keeps the primary's, including one changed there
    during the outage (split brain). Both sides changing the same flag from the same base can
    only agree; when the base was stale (the primary had the flag already), the standby's
    value still wins, since it is the change the user made last that we know of."""
    base, now, primary = set(base), set(now), set(primary)
    return (tuple(sorted((now - base) - primary)), tuple(sorted((base - now) & primary)))


def arrival_flags(group: list[RecordedMessage]) -> tuple[str, ...]:
    """Outage mail's state at failover, for the three-way merge of its flags with a copy the
    primary got too (a queued delivery that clients of the primary may have changed): not there
    at all, so the flags it arrived with on the standby (``first_flags``, migration 8, e.g. a
    Sieve ``addflag``). A copy the user moved was first seen in its new folder with the flags it
    had by then, so only flags every row began with count; none when a row predates the
    column."""
    firsts = [row.first_flags for row in group if row.kind == "outage"]
    if not firsts or any(first is None for first in firsts):
        return ()
    return tuple(sorted(set.intersection(*(set(first or ()) for first in firsts))))


def outage_flags(arrived: Iterable[str], now: Iterable[str],
                 primary: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(add, remove) on the primary's copy of outage mail: every flag the standby's copy has
    is added (as if the base were "not there": the record may first have seen the file after
    the user acted on it, e.g. a failback without the agent's record), the primary's own flags
    are kept, and a flag it arrived with (``arrival_flags``) that the user cleared on the
    standby is cleared on the primary too."""
    return _gained(now, primary), merged_flags(arrived, now, primary)[1]


def _existing_message(key: str, group: list[RecordedMessage], copies: list[PrimaryCopy],
                      propagate_deletions: bool, repair: bool = False) -> list[Action]:
    """History the primary already has: replay the user's flag changes, moves and deletions
    on the primary's copies wherever they are (``match_history``)."""
    message_id = group[0].message_id
    match = match_history(group, copies)
    actions: list[Action] = []
    for base, current, copy in match.stays:
        if copy is not None:
            add, remove = merged_flags(base.base_flags or (), current.flags, copy.flags)
            if add or remove:
                actions.append(Action("flags", copy.folder, key, message_id, uid=copy.uid,
                                      add=add, remove=remove))
    moves: list[Action] = []
    any_copy = next(iter(sorted(copies, key=lambda c: (c.folder, c.uid))), None)
    for base, current, copy, placed in match.moves:
        if copy is None:
            if any_copy is None:
                actions.append(Action("report", current.folder, key, message_id,
                                      reason="not_on_primary"))
            else:
                # Moved on the standby, but its primary copy is taken (every copy the primary
                # holds stands for another of the standby's): the standby has it here too.
                # Its flags: the user's changes whatever the source's flags are by then.
                changed = set(current.flags), set(base.base_flags or ())
                actions.append(Action("copy", current.folder, key, message_id,
                                      uid=any_copy.uid, from_folder=any_copy.folder,
                                      add=tuple(sorted(changed[0] - changed[1])),
                                      remove=tuple(sorted(changed[1] - changed[0]))))
            continue
        add, remove = merged_flags(base.base_flags or (), current.flags, copy.flags)
        if placed:
            if add or remove:
                actions.append(Action("flags", copy.folder, key, message_id, uid=copy.uid,
                                      add=add, remove=remove))
        else:
            # A move from wherever the primary's copy is filed: never a copy beside it.
            moves.append(Action("move", current.folder, key, message_id, uid=copy.uid,
                                from_folder=copy.folder, add=add, remove=remove))
    for current, copy in match.copies:
        if copy is not None:
            lacking = _gained(current.flags, copy.flags)
            if lacking:
                actions.append(Action("flags", copy.folder, key, message_id, uid=copy.uid,
                                      add=lacking))
        elif any_copy is not None:
            # The copy gets the row's flags whatever the source has by then (a flag change
            # planned for the source runs first).
            actions.append(Action("copy", current.folder, key, message_id, uid=any_copy.uid,
                                  from_folder=any_copy.folder, add=current.flags))
        else:
            actions.append(Action("report", current.folder, key, message_id,
                                  reason="not_on_primary"))
    # Copies first: a copy is made from a message that one of the moves may take away.
    actions += moves
    for base, copy in match.deletes:
        if copy is None:
            if match.ambiguous:
                actions.append(Action("report", base.folder, key, message_id,
                                      reason="deleted_on_standby_several_on_primary"))
        elif propagate_deletions:
            actions.append(Action("delete", copy.folder, key, message_id, uid=copy.uid))
        else:
            actions.append(Action("report", copy.folder, key, message_id,
                                  reason="deleted_on_standby_kept_on_primary"))
    if repair and (match.moves or match.copies):
        actions += [Action("delete", copy.folder, key, message_id, uid=copy.uid)
                    for copy in match.spare]
    return actions
