"""The follow pass's plan without servers: journal copies made to look like the primary."""

from __future__ import annotations

import itertools
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from mailcontinuity.mail.doveadm import JournalCopy
from mailcontinuity.outage.follow import StandbyChange, follow_changes
from mailcontinuity.store.follow import FolderSeen

WINDOW = date(2026, 11, 1)
FOLDERS = ("INBOX", "Archive", "Projekte/Übersicht")
FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "$Important")


def seen(**folders: dict[str, tuple[tuple[str, ...], str]]) -> dict[str, FolderSeen]:
    return {name.replace("_", "/"): FolderSeen.from_uids(1, 5, {
        uid: (key, flags, day) for uid, (key, (flags, day)) in enumerate(msgs.items(), 1)})
        for name, msgs in folders.items()}


def test_a_copy_filed_and_read_on_the_primary_is_filed_and_read_on_the_standby() -> None:
    copies = [JournalCopy("INBOX", 7, (), "id:a")]
    after = seen(Archive={"id:a": (("\\Seen",), "2026-11-20")})
    assert follow_changes(copies, {}, after, WINDOW) == [
        StandbyChange("flags", "INBOX", (7,), add=("\\Seen",)),
        StandbyChange("move", "INBOX", (7,), to="Archive")]


def test_deleted_on_the_primary_goes_only_if_seen_there_and_inside_the_window() -> None:
    copies = [JournalCopy("INBOX", 1, (), "id:a"), JournalCopy("INBOX", 2, (), "id:b"),
              JournalCopy("INBOX", 3, (), "id:c")]
    before = seen(INBOX={"id:a": ((), "2026-11-20"), "id:c": ((), "2026-10-01")})
    # a: deleted on the primary; b: never seen there (still queued for it); c: aged out.
    assert follow_changes(copies, before, seen(INBOX={}), WINDOW) == [
        StandbyChange("expunge", "INBOX", (1,))]


Model = dict[tuple[str, int], tuple[str, frozenset[str]]]


def apply(standby: Model, changes: list[StandbyChange], uids: itertools.count) -> None:
    for change in changes:
        for uid in change.uids:
            key, flags = standby[(change.folder, uid)]
            if change.kind == "flags":
                standby[(change.folder, uid)] = (key, (flags | set(change.add))
                                                 - set(change.remove))
            elif change.kind == "move":
                del standby[(change.folder, uid)]
                standby[(change.to, next(uids))] = (key, flags)
            else:
                del standby[(change.folder, uid)]


flag_sets = st.frozensets(st.sampled_from(FLAGS)).map(lambda f: tuple(sorted(f)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FOLDERS), flag_sets), min_size=1, max_size=6),
       st.lists(st.lists(st.tuples(st.sampled_from(FOLDERS), flag_sets), max_size=2),
                min_size=6, max_size=6),
       st.lists(st.booleans(), min_size=6, max_size=6))
def test_applied_changes_leave_nothing_to_do_and_the_standby_looks_like_the_primary(
        standby_side: list[tuple[str, tuple[str, ...]]],
        primary_side: list[list[tuple[str, tuple[str, ...]]]], earlier: list[bool]) -> None:
    uids = itertools.count(100)
    standby: Model = {(folder, next(uids)): (f"id:{n}", frozenset(flags))
                      for n, (folder, flags) in enumerate(standby_side)}
    after: dict[str, dict[int, tuple[str, tuple[str, ...], str]]] = {f: {} for f in FOLDERS}
    before: dict[str, dict[int, tuple[str, tuple[str, ...], str]]] = {"INBOX": {}}
    for n, places in enumerate(primary_side[:len(standby_side)]):
        for folder, flags in places:
            after[folder][next(uids)] = (f"id:{n}", flags, "2026-11-20")
        if earlier[n]:
            before["INBOX"][next(uids)] = (f"id:{n}", (), "2026-11-20")
    now = {f: FolderSeen.from_uids(1, 1, m) for f, m in after.items()}
    then = {f: FolderSeen.from_uids(1, 1, m) for f, m in before.items()}

    def copies() -> list[JournalCopy]:
        return [JournalCopy(folder, uid, tuple(sorted(flags)), key)
                for (folder, uid), (key, flags) in sorted(standby.items())]

    apply(standby, follow_changes(copies(), then, now, WINDOW), uids)
    assert follow_changes(copies(), then, now, WINDOW) == []
    for n, places in enumerate(primary_side[:len(standby_side)]):
        mine = [(folder, flags) for (folder, _), (key, flags) in standby.items()
                if key == f"id:{n}"]
        if places:
            [(folder, flags)] = mine
            assert (folder, frozenset(flags)) in {(f, frozenset(fl)) for f, fl in places}
        elif earlier[n]:
            assert mine == [], "deleted on the primary, still on the standby"
        else:
            assert len(mine) == 1, "never seen on the primary: kept"
