"""What failback must do for one user: the difference between the outage record and the primary.

Pure functions over the record and the primary's index, so the plan is the same whether it is
printed (``--dry-run``), executed, or computed again after a crash: every action's effect is
visible in the primary's index, so a re-planned run never repeats what already happened, and
action ids are stable so checkpoints recognise finished work.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
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
        detail = {
            "create_folder": "",
            "append": "",
            "flags": f"+{' '.join(self.add)}-{' '.join(self.remove)}",
            "move": self.from_folder,
            "copy": self.from_folder,
            "delete": "",
            "report": self.reason,
        }[self.kind]
        object.__setattr__(self, "id", f"{self.kind}|{self.folder}|{self.key}|{detail}")


def plan_user(rows: list[RecordedMessage], folders: dict[str, tuple[bool, bool]],
              index: dict[str, list[PrimaryCopy]], primary_folders: set[str],
              propagate_deletions: bool) -> list[Action]:
    """Every action for one user, folders first, so appends and moves find their target."""
    actions = [Action("create_folder", folder) for folder, (in_baseline, present)
               in sorted(folders.items())
               if present and not in_baseline and folder not in primary_folders]
    groups: dict[str, list[RecordedMessage]] = defaultdict(list)
    for row in rows:
        groups[row.key].append(row)
    for key, group in groups.items():
        copies = list(index.get(key, ()))
        if any(row.kind == "outage" for row in group):
            actions += _outage_message(key, group, copies)
        elif any(row.in_baseline for row in group):
            actions += _existing_message(key, group, copies, propagate_deletions)
    needed = {a.folder for a in actions if a.kind in ("append", "move", "copy")}
    created = {a.folder for a in actions if a.kind == "create_folder"}
    missing = sorted(needed - primary_folders - created)
    return [Action("create_folder", folder) for folder in missing] + actions


def older_copies_needed(rows: list[RecordedMessage]) -> tuple[set[str], set[str]]:
    """Keys whose copies on the primary may predate the outage, and folders to read in full.

    History the user changed during the outage (flags, moves, copies, deletions) is found in
    the folders it was and is in; non-journal mail the standby already held when the outage
    began (a failback without the agent's record) may have been on the primary all along.
    Every other key can only have copies saved on the primary since the outage began.
    """
    groups: dict[str, list[RecordedMessage]] = defaultdict(list)
    for row in rows:
        groups[row.key].append(row)
    keys: set[str] = set()
    folders: set[str] = set()
    for key, group in groups.items():
        if any(row.kind == "outage" for row in group):
            if any(row.in_baseline for row in group):
                keys.add(key)
        elif any(row.present != row.in_baseline
                 or (row.in_baseline and row.flags != row.base_flags) for row in group):
            keys.add(key)
            folders.update(row.folder for row in group)
    return keys, folders


def _gained(now: Iterable[str], before: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(now) - set(before)))


def _outage_message(key: str, group: list[RecordedMessage],
                    copies: list[PrimaryCopy]) -> list[Action]:
    """Mail that reached the standby during the outage: on the primary once per standby copy.

    Only delivered copies count: a message accepted just before the failover has a journal
    copy too (same id), and merging both would put it on the primary twice.
    """
    current = sorted((row for row in group if row.present and row.kind == "outage"),
                     key=lambda row: row.folder)
    message_id = group[0].message_id
    if not current:
        if copies:
            return []
        return [Action("report", group[0].folder, key, message_id, reason="deleted_on_standby")]
    spare = list(copies)
    unplaced = []
    actions = []
    for row in current:
        match = next((copy for copy in spare if copy.folder == row.folder), None)
        if match is None:
            unplaced.append(row)
            continue
        spare.remove(match)
        if _gained(row.flags, match.flags):
            actions.append(Action("flags", row.folder, key, message_id, uid=match.uid,
                                  add=_gained(row.flags, match.flags)))
    wanted = {row.folder for row in current}
    for row in unplaced:
        # A copy the primary got elsewhere (its queued copy went to INBOX while the user moved
        # the standby's copy): move it rather than add a second one.
        elsewhere = next((copy for copy in spare if copy.folder not in wanted), None)
        if elsewhere is not None:
            spare.remove(elsewhere)
            actions.append(Action("move", row.folder, key, message_id, uid=elsewhere.uid,
                                  from_folder=elsewhere.folder,
                                  add=_gained(row.flags, elsewhere.flags)))
        else:
            actions.append(Action("append", row.folder, key, message_id, source=row))
    return actions


def _existing_message(key: str, group: list[RecordedMessage], copies: list[PrimaryCopy],
                      propagate_deletions: bool) -> list[Action]:
    """History the primary already has: replay the user's flag changes, moves and deletions."""
    message_id = group[0].message_id
    before = {row.folder: row for row in group if row.in_baseline}
    now = {row.folder: row for row in group if row.present}
    on_primary = {copy.folder: copy for copy in copies}
    actions: list[Action] = []
    for folder in sorted(before.keys() & now.keys()):
        base_flags = before[folder].base_flags or ()
        add = _gained(now[folder].flags, base_flags)
        remove = _gained(base_flags, now[folder].flags)
        copy = on_primary.get(folder)
        if (add or remove) and copy is not None:
            add, remove = _gained(add, copy.flags), tuple(f for f in remove if f in copy.flags)
            if add or remove:
                actions.append(Action("flags", folder, key, message_id, uid=copy.uid, add=add,
                                      remove=remove))
    removed = [folder for folder in sorted(before.keys() - now.keys()) if folder in on_primary]
    moves: list[Action] = []
    for folder in sorted(now.keys() - before.keys()):
        row = now[folder]
        if folder in on_primary:
            # Placed there already (an earlier pass): only the flags may still be owed.
            lacking = _gained(row.flags, on_primary[folder].flags)
            if lacking:
                actions.append(Action("flags", folder, key, message_id,
                                      uid=on_primary[folder].uid, add=lacking))
            continue
        if removed:
            origin = removed.pop(0)
            copy = on_primary[origin]
            base_flags = before[origin].base_flags or ()
            moves.append(Action("move", folder, key, message_id, uid=copy.uid,
                                from_folder=origin, add=_gained(row.flags, base_flags),
                                remove=tuple(f for f in _gained(base_flags, row.flags)
                                             if f in copy.flags)))
        elif copies:
            # The copy gets the row's flags whatever the source has by then (a flag change
            # planned for the source runs first).
            actions.append(Action("copy", folder, key, message_id, uid=copies[0].uid,
                                  from_folder=copies[0].folder, add=row.flags))
        else:
            actions.append(Action("report", folder, key, message_id, reason="not_on_primary"))
    # Copies first: a copy is made from a message that one of the moves may take away.
    actions += moves
    for folder in removed:
        if propagate_deletions:
            actions.append(Action("delete", folder, key, message_id, uid=on_primary[folder].uid))
        else:
            actions.append(Action("report", folder, key, message_id,
                                  reason="deleted_on_standby_kept_on_primary"))
    return actions
