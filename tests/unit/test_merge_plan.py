"""The merge core without servers: plans applied to a model primary, planned again, verified.

A generated outage record (history the user moved, flagged, copied or deleted on the standby;
mail that arrived during the outage, read, filed or deleted; a queued copy the primary got on
its own) is planned against a model of the primary, the plan applied to the model as the IMAP
steps would apply it, then planned again: nothing may be left to do but reports, and ``verify``
must find the primary as the record says.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from mailcontinuity.mail.imap import SPECIAL_FOLDERS, FolderNames
from mailcontinuity.outage.merge import APPEND_BATCH_BYTES, APPEND_BATCH_MESSAGES, _batches
from mailcontinuity.outage.plan import Action, older_copies_needed, plan_user
from mailcontinuity.outage.primary import SEARCH_KEYS_MAX, PrimaryCopy, key_searches
from mailcontinuity.outage.verify import to_repair, verify_user
from mailcontinuity.store.outages import RecordedMessage

FOLDERS = ("INBOX", "Archive", "Projekte/Übersicht", "Sent")
FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "$Important")


@dataclass
class ModelPrimary:
    """One user's mailbox on the primary: folder -> uid -> (key, flags), and when saved."""

    folders: set[str] = field(default_factory=lambda: {"INBOX", "Sent"})
    messages: dict[tuple[str, int], tuple[str, frozenset[str], bool]] = field(default_factory=dict)
    """(folder, uid) -> (key, flags, saved since the outage began)."""
    uids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def add(self, folder: str, key: str, flags: frozenset[str], recent: bool) -> None:
        self.messages[(folder, next(self.uids))] = (key, flags, recent)

    def index(self, saved_since_outage_only: bool = False, whole: set[str] | None = None,
              keys: set[str] | None = None) -> dict[str, list[PrimaryCopy]]:
        """As ``PrimaryMailbox.index`` reads it: with ``saved_since_outage_only``, what was
        saved since the outage began, the ``whole`` folders, and ``keys`` in any folder."""
        index: dict[str, list[PrimaryCopy]] = {}
        for (folder, uid), (key, flags, recent) in sorted(self.messages.items()):
            if (saved_since_outage_only and not recent and folder not in (whole or set())
                    and key not in (keys or set())):
                continue
            index.setdefault(key, []).append(PrimaryCopy(folder, uid, tuple(sorted(flags)), key))
        return index

    def apply(self, action: Action, arrived_since: float | None = None) -> None:
        """What failback's IMAP steps do to the mailbox. With ``arrived_since``, the model's
        "recent" is INTERNALDATE's (a primary without SAVEDATE): an APPEND carries the standby
        file's date, a MOVE or COPY keeps the source's."""
        if action.kind == "create_folder":
            self.folders.add(action.folder)
        elif action.kind == "append":
            assert action.source is not None and action.folder in self.folders
            recent = arrived_since is None or action.source.mtime >= arrived_since
            self.add(action.folder, action.key, frozenset(action.source.flags), recent)
        elif action.kind == "flags":
            key, flags, recent = self.messages[(action.folder, action.uid)]
            self.messages[(action.folder, action.uid)] = (
                key, (flags | set(action.add)) - set(action.remove), recent)
        elif action.kind in ("move", "copy"):
            assert action.folder in self.folders
            key, flags, recent = self.messages[(action.from_folder, action.uid)]
            if action.kind == "move":
                del self.messages[(action.from_folder, action.uid)]
            self.add(action.folder, key, (flags | set(action.add)) - set(action.remove),
                     recent if arrived_since is not None else True)
        elif action.kind == "delete":
            del self.messages[(action.folder, action.uid)]


def row(key: str, folder: str, kind: str, flags: tuple[str, ...], present: bool,
        in_baseline: bool, base_flags: tuple[str, ...] | None,
        first_flags: tuple[str, ...] | None = None) -> RecordedMessage:
    return RecordedMessage(user="alice@example.test", folder=folder, basename=f"{key}-{folder}",
                           filename=f"{key}-{folder}:2,", path=f"/standby/{key}", key=key,
                           kind=kind, flags=tuple(sorted(flags)), size=1000, mtime=0.0,
                           message_id=f"<{key}@test>", present=present, in_baseline=in_baseline,
                           base_flags=None if base_flags is None else tuple(sorted(base_flags)),
                           first_flags=first_flags)


# A message's rows in the record, and the copies the primary holds of it: (folder, flags,
# saved since the outage began).
Drawn = tuple[list[RecordedMessage], list[tuple[str, tuple[str, ...], bool]]]
flag_sets = st.sets(st.sampled_from(FLAGS)).map(lambda flags: tuple(sorted(flags)))


@st.composite
def history(draw: st.DrawFn, key: str) -> Drawn:
    """A message the primary had before the outage, and what the user did with its standby
    copy: nothing, flags, a move, a copy, a deletion. The primary's copy may be filed elsewhere
    (a journal copy stays in the standby's INBOX while the user filed the original in Archive)
    with other flags (the standby's copy is older), and may have changed on the primary during
    the outage too (split brain: flags, a move, a deletion by a client that still reached it).
    """
    folder = draw(st.sampled_from(FOLDERS))
    base = draw(flag_sets)
    now = draw(st.lists(st.sampled_from(FOLDERS), unique=True, max_size=2))
    rows = [] if folder in now else [row(key, folder, "existing", base, False, True, base)]
    rows += [row(key, there, "existing", draw(flag_sets), True, there == folder,
                 base if there == folder else None) for there in now]
    return rows, [primary_side(draw, folder, base)] if draw(st.integers(0, 9)) else []


def primary_side(draw: st.DrawFn, folder: str,
                 base: tuple[str, ...]) -> tuple[str, tuple[str, ...], bool]:
    """(folder, flags, saved since the outage) of the primary's copy of a history message."""
    filed = draw(st.sampled_from(FOLDERS)) if draw(st.booleans()) else folder
    flags = draw(flag_sets) if draw(st.booleans()) else base
    if draw(st.booleans()):  # moved on the primary during the outage: saved anew there
        return draw(st.sampled_from(FOLDERS)), flags, True
    return filed, flags, False


@st.composite
def outage_mail(draw: st.DrawFn, key: str) -> Drawn:
    """A message that reached the standby during the outage, where the user filed and flagged
    it (or deleted it); maybe a journal copy beside it (accepted just before the failover,
    delivered from the queue afterwards), maybe a copy the primary got from Postfix's queue."""
    now = draw(st.lists(st.sampled_from(FOLDERS), unique=True, max_size=2))
    arrived = draw(flag_sets)  # what it arrived with (a Sieve addflag), maybe on both sides

    def first() -> tuple[str, ...] | None:
        # First seen in its folder with the flags it had by then; None: before migration 8.
        if draw(st.integers(0, 9)) == 0:
            return None
        return tuple(sorted(set(arrived) | set(draw(flag_sets))))

    rows = [row(key, there, "outage", draw(flag_sets), True, False, None, first())
            for there in now]
    if draw(st.booleans()):
        # Its journal copy, in the baseline or shipped a moment after it, which the user may
        # have flagged (or deleted) too.
        late = draw(st.booleans())
        rows.append(row(key, "INBOX", "existing", draw(flag_sets), draw(st.booleans()),
                        not late, None if late else (), () if late else None))
    # The queued copy the primary got, changed there too (split brain).
    queued = [("INBOX", draw(flag_sets), True)] if now and draw(st.booleans()) else []
    return rows, queued


@st.composite
def late_journal_copy(draw: st.DrawFn, key: str) -> Drawn:
    """Mail the primary got before the failover whose journal copy the record first saw after
    the baseline (shipped a moment late): the user may flag it (and copy it elsewhere) on the
    standby, and the primary's copy may be filed elsewhere and changed there too."""
    first = draw(flag_sets) if draw(st.integers(0, 9)) else None
    now = draw(st.lists(st.sampled_from(FOLDERS), unique=True, max_size=2))
    rows = [row(key, there, "existing", draw(flag_sets), there in now, False, None, first)
            for there in {"INBOX", *now}]
    copies = [primary_side(draw, "INBOX", first or ()) for _ in range(draw(st.integers(0, 2)))]
    return rows, copies


@st.composite
def outages(draw: st.DrawFn) -> tuple[list[RecordedMessage], dict[str, tuple[bool, bool]],
                                      ModelPrimary]:
    primary = ModelPrimary()
    rows: list[RecordedMessage] = []
    for number in range(draw(st.integers(1, 8))):
        key = f"id:{number}"
        made, copies = draw(draw(st.sampled_from((outage_mail, history, late_journal_copy)))(key))
        rows += made
        for folder, flags, recent in copies:
            primary.folders.add(folder)
            primary.add(folder, key, frozenset(flags), recent)
    used = {r.folder for r in rows if r.present}
    folders = {folder: (folder in primary.folders, folder in used) for folder in FOLDERS}
    return rows, folders, primary


def plan(rows: list[RecordedMessage], folders: dict[str, tuple[bool, bool]],
         primary: ModelPrimary, propagate: bool) -> list[Action]:
    return plan_user(rows, folders, primary.index(), set(primary.folders), propagate)


@settings(max_examples=300, deadline=None)
@given(outages(), st.booleans())
def test_a_plan_applied_leaves_nothing_to_do_and_verify_agrees(
        outage: tuple[list[RecordedMessage], dict[str, tuple[bool, bool]], ModelPrimary],
        propagate: bool) -> None:
    rows, folders, primary = outage
    for action in plan(rows, folders, primary, propagate):
        primary.apply(action)
    again = plan(rows, folders, primary, propagate)
    assert [a for a in again if a.kind != "report"] == []
    found = verify_user(rows, primary.index())
    assert found == {"missing": [], "duplicated": [], "flag_mismatches": []}
    before = {key: len(copies) for key, copies in outage[2].index().items()}
    for key in {r.key for r in rows if r.kind == "outage"}:
        on_standby = sum(1 for r in rows if r.key == key and r.kind == "outage" and r.present)
        on_primary = len(primary.index().get(key, []))
        # Once per copy the user kept on the standby; one deleted there is not added back.
        assert on_primary == (on_standby or before.get(key, 0)), key


@settings(max_examples=200, deadline=None)
@given(outages(), st.booleans())
def test_action_ids_are_stable_across_plans(
        outage: tuple[list[RecordedMessage], dict[str, tuple[bool, bool]], ModelPrimary],
        propagate: bool) -> None:
    rows, folders, primary = outage
    first = plan(rows, folders, primary, propagate)
    assert [a.id for a in first] == [a.id for a in plan(rows, folders, primary, propagate)]
    assert len({a.id for a in first}) == len(first), "two actions share a checkpoint id"


@settings(max_examples=200, deadline=None)
@given(outages())
def test_reading_only_recent_mail_changed_folders_and_changed_keys_plans_the_same(
        outage: tuple[list[RecordedMessage], dict[str, tuple[bool, bool]], ModelPrimary]) -> None:
    """Failback reads the primary since the outage began, the folders of changed history, and
    the copies of changed history wherever they are filed (found by id): the plan is the one
    the whole primary gives."""
    rows, folders, primary = outage
    keys, whole = older_copies_needed(rows, OUTAGE_BEGAN)
    partial = primary.index(saved_since_outage_only=True, whole=whole, keys=keys)
    assert (plan_user(rows, folders, partial, set(primary.folders), False)
            == plan_user(rows, folders, primary.index(), set(primary.folders), False))


OUTAGE_BEGAN = 1_000_000.0


@settings(max_examples=300, deadline=None)
@given(outages(), st.booleans(), st.data())
def test_reading_by_arrival_date_without_savedate_plans_the_same_on_every_pass(
        outage: tuple[list[RecordedMessage], dict[str, tuple[bool, bool]], ModelPrimary],
        propagate: bool, data: st.DataObject) -> None:
    """Without SAVEDATE failback reads what arrived (INTERNALDATE) since the outage began: a
    queued delivery is new, history keeps its old date wherever it is moved or copied, and an
    APPEND carries the standby file's date, which a client may have set long before the
    outage (``older_copies_needed``'s ``dated_before``). The plan from that partial read is the
    one the whole primary gives, on the first pass and on a re-run after it was applied."""
    rows, folders, primary = outage
    dated = {r.key: data.draw(st.sampled_from([OUTAGE_BEGAN - 90 * 86400.0,
                                               OUTAGE_BEGAN + 3600.0]), label=r.key)
             for r in rows if r.kind == "outage"}
    rows = [replace(r, mtime=dated[r.key]) if r.kind == "outage" else r for r in rows]
    outage_keys = set(dated)
    primary.messages = {where: (key, flags, key in outage_keys and recent)
                        for where, (key, flags, recent) in primary.messages.items()}
    for _ in range(2):
        keys, whole = older_copies_needed(rows, OUTAGE_BEGAN)
        partial = primary.index(saved_since_outage_only=True, whole=whole, keys=keys)
        full = plan_user(rows, folders, primary.index(), set(primary.folders), propagate)
        assert plan_user(rows, folders, partial, set(primary.folders), propagate) == full
        for action in full:
            primary.apply(action, arrived_since=OUTAGE_BEGAN)
    assert [a for a in plan(rows, folders, primary, propagate) if a.kind != "report"] == []


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FOLDERS), flag_sets, st.sampled_from(["stay", "move", "delete"]),
       st.sampled_from(FOLDERS), flag_sets, st.sampled_from(FOLDERS), flag_sets, st.booleans(),
       st.booleans())
def test_history_changes_reach_the_primarys_copy_wherever_it_is_filed(
        standby_folder: str, base: tuple[str, ...], change: str, target: str,
        now: tuple[str, ...], filed: str, primary_flags: tuple[str, ...], moved_there: bool,
        propagate: bool) -> None:
    """Reconcile by identity, and the split-brain rule (docs/failback.md): the standby's
    copy was in ``standby_folder`` with ``base`` at failover; the primary's is in ``filed``
    with ``primary_flags`` (filed there before the outage, or ``moved_there`` during it).
    A move on the standby moves the primary's copy from wherever it is (never a copy, and the
    standby's folder wins over a move on the primary); no move keeps the primary's folder; a
    flag the user changed on the standby takes the standby's value, every other flag keeps the
    primary's; a deletion deletes it where it is (with ``propagate_deletions``)."""
    if change == "move" and target == standby_folder:
        change = "stay"
    rows = [row("id:1", standby_folder, "existing", base, change == "stay", True, base)]
    if change == "stay":
        rows = [row("id:1", standby_folder, "existing", now, True, True, base)]
    elif change == "move":
        rows.append(row("id:1", target, "existing", now, True, False, None))
    primary = ModelPrimary(folders={"INBOX", "Sent", filed})
    primary.add(filed, "id:1", frozenset(primary_flags), moved_there)
    folders = {folder: (folder in primary.folders, any(r.present and r.folder == folder
                                                        for r in rows)) for folder in FOLDERS}
    for action in plan(rows, folders, primary, propagate):
        primary.apply(action)
    copies = primary.index().get("id:1", [])
    if change == "delete":
        assert [c.folder for c in copies] == ([] if propagate else [filed])
        return
    assert [c.folder for c in copies] == [target if change == "move" else filed]
    changed = set(base) ^ set(now)
    expected = {flag for flag in FLAGS
                if (flag in now if flag in changed else flag in primary_flags)}
    assert set(copies[0].flags) == expected


@settings(max_examples=300, deadline=None)
@given(outages(), st.booleans(), st.data())
def test_failback_again_after_verify_mends_what_verify_found(
        outage: tuple[list[RecordedMessage], dict[str, tuple[bool, bool]], ModelPrimary],
        propagate: bool, data: st.DataObject) -> None:
    """Verify's advice works: after a merge, a copy too many (as an older failback made them,
    copying a moved message), then ``failback`` again on what verify names (its ``to_repair``):
    verify is clean."""
    rows, folders, primary = outage
    for action in plan(rows, folders, primary, propagate):
        primary.apply(action)
    index = primary.index()
    if index:
        key = data.draw(st.sampled_from(sorted(index)))
        folder = data.draw(st.sampled_from(sorted(primary.folders)))
        primary.add(folder, key, frozenset(index[key][0].flags), True)
    found = verify_user(rows, primary.index())
    wanted = to_repair({"alice": found}).get("alice", {"keys": [], "duplicated": []})
    for action in plan_user(rows, folders, primary.index(), set(primary.folders), propagate,
                            set(wanted["duplicated"])):
        if action.key in wanted["keys"]:
            primary.apply(action)
    assert verify_user(rows, primary.index()) == {"missing": [], "duplicated": [],
                                                  "flag_mismatches": []}


def test_outage_mail_on_both_sides_merges_flags_against_what_it_arrived_with() -> None:
    """A message flagged by Sieve on arrival on both sides during a split brain: read on the
    primary (a client still reached it), unflagged on the standby: read, not flagged."""
    rows = [row("id:1", "INBOX", "outage", (), True, False, None, ("\\Flagged",))]
    primary = ModelPrimary()
    primary.add("INBOX", "id:1", frozenset({"\\Flagged", "\\Seen"}), True)
    for action in plan(rows, {"INBOX": (True, True)}, primary, False):
        primary.apply(action)
    assert [c.flags for c in primary.index()["id:1"]] == [("\\Seen",)]
    assert verify_user(rows, primary.index())["flag_mismatches"] == []


def test_a_flag_set_on_a_journal_copy_first_seen_after_the_baseline_reaches_the_primary(
) -> None:
    """Mail the primary got before the failover, whose journal copy was shipped a moment
    after the baseline: read and flagged on the standby, it is read and flagged on the
    primary's copy, wherever it is filed; a flag set on the primary meanwhile stays."""
    rows = [row("id:1", "INBOX", "existing", ("\\Flagged", "\\Seen"), True, False, None, ())]
    primary = ModelPrimary(folders={"INBOX", "Archive"})
    primary.add("Archive", "id:1", frozenset({"$Important"}), False)
    assert [item["lacking"] for item in verify_user(rows, primary.index())["flag_mismatches"]
            ] == [["\\Flagged", "\\Seen"]]
    keys, whole = older_copies_needed(rows)
    assert (keys, whole) == ({"id:1"}, set())
    [action] = plan(rows, {"INBOX": (True, True)}, primary, False)
    assert (action.kind, action.folder, action.add) == ("flags", "Archive", ("\\Flagged", "\\Seen"))
    primary.apply(action)
    assert [c.flags for c in primary.index()["id:1"]] == [("$Important", "\\Flagged", "\\Seen")]
    assert verify_user(rows, primary.index())["flag_mismatches"] == []
    assert plan(rows, {"INBOX": (True, True)}, primary, False) == []


def test_a_flag_set_on_the_journal_copy_beside_outage_mail_goes_with_the_delivered_copy(
) -> None:
    """Accepted just before the failover: its journal copy and its delivery from the queue sit
    side by side in the standby's INBOX; the user flagged the journal copy. Only the delivered
    copy is merged, with that flag."""
    rows = [row("id:1", "INBOX", "outage", (), True, False, None, ()),
            row("id:1", "INBOX", "existing", ("\\Flagged",), True, False, None, ())]
    primary = ModelPrimary()
    [append] = plan(rows, {"INBOX": (True, True)}, primary, False)
    assert append.kind == "append" and append.source is not None
    assert append.source.flags == ("\\Flagged",)
    primary.apply(append)
    assert [c.flags for c in primary.index()["id:1"]] == [("\\Flagged",)]
    assert verify_user(rows, primary.index()) == {"missing": [], "duplicated": [],
                                                  "flag_mismatches": []}


def test_appends_are_batched_by_count_and_size_in_order() -> None:
    source = row("id:x", "INBOX", "outage", (), True, False, None)
    big = replace(source, size=APPEND_BATCH_BYTES // 2 + 1)
    actions = [Action("append", "INBOX", f"id:{n}", source=source)
               for n in range(APPEND_BATCH_MESSAGES + 3)]
    batches = _batches(actions)
    assert [len(batch) for batch in batches] == [APPEND_BATCH_MESSAGES, 3]
    assert [a for batch in batches for a in batch] == actions
    heavy = [Action("append", "INBOX", f"id:{n}", source=big) for n in range(3)]
    assert [len(batch) for batch in _batches(heavy)] == [1, 1, 1]
    assert _batches([]) == []


def test_a_deletion_on_the_standby_is_reported_unless_propagation_is_asked() -> None:
    rows = [row("id:1", "Archive", "existing", (), False, True, ())]
    primary = ModelPrimary(folders={"INBOX", "Archive"})
    primary.add("Archive", "id:1", frozenset(), False)
    folders = {"Archive": (True, True)}
    [kept] = plan(rows, folders, primary, propagate=False)
    assert (kept.kind, kept.reason) == ("report", "deleted_on_standby_kept_on_primary")
    [deleted] = plan(rows, folders, primary, propagate=True)
    assert (deleted.kind, deleted.folder) == ("delete", "Archive")


# -- the same merge against real servers' layouts and capabilities ------------------------------
@dataclass(frozen=True)
class Layout:
    """How a kind of server names and lists folders: personal prefix, separator, the folders
    every mailbox has with their LIST attributes, and whether it offers MOVE and UIDPLUS."""

    name: str
    prefix: str
    separator: str
    fixed: dict[str, tuple[str, ...]]
    all_mail: str | None = None


LAYOUTS = [
    Layout("dovecot", "", "/", {"INBOX": (), "Sent": ("\\Sent",), "Parent": ("\\Noselect",),
                                "Parent/Child": ()}),
    Layout("cyrus", "INBOX.", ".", {"INBOX": (), "INBOX.Sent": ("\\sent",),
                                    "INBOX.Drafts": ("\\drafts",), "INBOX.Trash": ("\\trash",)}),
    Layout("exchange", "", "/", {"INBOX": (), "Sent Items": (), "Deleted Items": (),
                                 "Junk Email": (), "Drafts": ()}),
    Layout("gmail", "", "/", {"INBOX": (), "[Gmail]": ("\\Noselect",),
                              "[Gmail]/Sent Mail": ("\\Sent",), "[Gmail]/Drafts": ("\\Drafts",),
                              "[Gmail]/Spam": ("\\Junk",), "[Gmail]/Trash": ("\\Trash",),
                              "[Gmail]/All Mail": ("\\All",)}, all_mail="[Gmail]/All Mail"),
]


@dataclass
class ServerPrimary:
    """A primary holding messages under its own folder names; failback's steps reach it through
    FolderNames (as mail.imap.Mailbox does), and without MOVE as COPY, \\Deleted, EXPUNGE."""

    layout: Layout
    has_move: bool
    uidplus: bool
    folders: dict[str, tuple[str, ...]] = field(default_factory=dict)
    messages: dict[tuple[str, int], tuple[str, frozenset[str], bool]] = field(default_factory=dict)
    uids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.folders = dict(self.layout.fixed)

    @property
    def names(self) -> FolderNames:
        return FolderNames([(attrs, self.layout.separator, name)
                            for name, attrs in self.folders.items()], self.layout.prefix)

    def add(self, native: str, key: str, flags: frozenset[str], recent: bool) -> None:
        assert native in self.folders and "\\Noselect" not in self.folders[native]
        self.messages[(native, next(self.uids))] = (key, flags, recent)
        if self.layout.all_mail and native != self.layout.all_mail:
            self.messages[(self.layout.all_mail, next(self.uids))] = (key, flags, recent)

    def index(self) -> dict[str, list[PrimaryCopy]]:
        names = self.names
        index: dict[str, list[PrimaryCopy]] = {}
        for (native, uid), (key, flags, _) in sorted(self.messages.items()):
            if names.ours(native) in names.folders and native not in names.hidden:
                index.setdefault(key, []).append(
                    PrimaryCopy(names.ours(native), uid, tuple(sorted(flags)), key))
        return index

    def apply(self, action: Action) -> None:
        names = self.names
        native = names.theirs(action.folder)
        if action.kind == "create_folder":
            self.folders.setdefault(native, ())
        elif action.kind == "append":
            assert action.source is not None
            self.add(native, action.key, frozenset(action.source.flags), True)
        elif action.kind == "flags":
            key, flags, recent = self.messages[(native, action.uid)]
            self.messages[(native, action.uid)] = (
                key, (flags | set(action.add)) - set(action.remove), recent)
        elif action.kind in ("move", "copy"):
            source = names.theirs(action.from_folder)
            key, flags, _ = self.messages[(source, action.uid)]
            self.add(native, key, (flags | set(action.add)) - set(action.remove), True)
            if action.kind == "move" and self.has_move:
                del self.messages[(source, action.uid)]
            elif action.kind == "move":  # COPY done; then \Deleted and an expunge
                self._expunge(source, action.uid)
        elif action.kind == "delete":
            self._expunge(native, action.uid)

    def _expunge(self, native: str, uid: int) -> None:
        """\\Deleted then UID EXPUNGE, or EXPUNGE of every \\Deleted message there."""
        key, flags, recent = self.messages[(native, uid)]
        self.messages[(native, uid)] = (key, flags | {"\\Deleted"}, recent)
        for place in [place for place, (_, got, _) in self.messages.items()
                      if place[0] == native and "\\Deleted" in got
                      and (place[1] == uid or not self.uidplus)]:
            del self.messages[place]


@settings(max_examples=300, deadline=None)
@given(outages(), st.booleans(), st.sampled_from(LAYOUTS), st.booleans(), st.booleans())
def test_a_plan_applied_to_any_server_layout_leaves_nothing_to_do(
        outage: tuple[list[RecordedMessage], dict[str, tuple[bool, bool]], ModelPrimary],
        propagate: bool, layout: Layout, has_move: bool, uidplus: bool) -> None:
    """The same outage against Cyrus' INBOX. namespace, Exchange's names, Gmail's [Gmail]
    folders and All Mail, a Dovecot primary with a \\Noselect parent; with and without MOVE and
    UIDPLUS: applied once, nothing is left to do, verify agrees, All Mail never duplicates."""
    rows, folders, model = outage
    server = ServerPrimary(layout, has_move, uidplus)
    names = server.names
    for folder in model.folders:
        server.folders.setdefault(names.theirs(folder), ())
    for (folder, _), (key, flags, recent) in sorted(model.messages.items()):
        server.add(names.theirs(folder), key, flags, recent)
    present = server.names.folders
    folders = {folder: (folder in present, used) for folder, (_, used) in folders.items()}
    for action in plan_user(rows, folders, server.index(), set(present), propagate):
        server.apply(action)
    again = plan_user(rows, folders, server.index(), set(server.names.folders), propagate)
    assert [a for a in again if a.kind != "report"] == []
    assert verify_user(rows, server.index()) == {"missing": [], "duplicated": [],
                                                 "flag_mismatches": []}
    if layout.name in ("exchange", "gmail"):  # no Sent beside the service's own
        assert "Sent" not in server.folders


def test_folder_names_follow_each_servers_layout() -> None:
    cyrus = FolderNames([((b"\\HasChildren",), b".", "INBOX"),
                         ((b"\\HasNoChildren", b"\\sent"), b".", "INBOX.Sent"),
                         ((), b".", "INBOX.Parent.Child")], "INBOX.")
    assert cyrus.folders == {"INBOX", "Sent", "Parent/Child"}
    assert (cyrus.theirs("Projekte/Übersicht"), cyrus.theirs("INBOX")) == (
        "INBOX.Projekte.Übersicht", "INBOX")
    exchange = FolderNames([((), "/", "INBOX"), ((), "/", "Sent Items"),
                            ((), "/", "Deleted Items"), ((), "/", "Junk Email")])
    assert exchange.folders == {"INBOX", "Sent", "Trash", "Junk"}
    assert (exchange.theirs("Sent"), exchange.theirs("Archive")) == ("Sent Items", "Archive")
    gmail = FolderNames([((), "/", "INBOX"), (("\\Noselect",), "/", "[Gmail]"),
                         (("\\Sent",), "/", "[Gmail]/Sent Mail"),
                         (("\\All",), "/", "[Gmail]/All Mail"),
                         ((), "/", "Sent")])
    assert gmail.folders == {"INBOX", "Sent"} and gmail.theirs("Sent") == "[Gmail]/Sent Mail"
    assert gmail.unselectable == {"[Gmail]"}
    assert gmail.hidden == {"[Gmail]/All Mail", "Sent"}  # the plain Sent is shadowed
    dovecot = FolderNames([((), "/", "INBOX"), (("\\Noselect",), "/", "Parent"),
                           ((), "/", "Parent/Child")])
    assert (dovecot.folders, dovecot.unselectable) == ({"INBOX", "Parent/Child"}, {"Parent"})


@given(st.lists(st.text(st.characters(categories=["L", "N"], include_characters=" -_"),
                        min_size=1, max_size=8), min_size=1, max_size=3),
       st.sampled_from(LAYOUTS))
def test_our_folder_names_survive_the_round_trip(parts: list[str], layout: Layout) -> None:
    folder = "/".join(parts)
    names = ServerPrimary(layout, True, True).names
    if folder.upper() != "INBOX" and folder not in SPECIAL_FOLDERS:
        assert names.ours(names.theirs(folder)) == folder


def test_copies_of_older_history_are_searched_by_id_while_few() -> None:
    """Few keys: one SEARCH per folder per 50 ids, ORed; a key no header search finds, or too
    many keys: None (one FETCH of the id headers per folder instead)."""
    keys = [f"id:{n}" for n in range(60)] + ["mid:<a:b@x>:1234"]
    searches = key_searches(keys, "X-Mailcontinuity-Id")
    assert searches is not None and len(searches) == 2
    first = searches[0]
    assert first[:49] == ["OR"] * 49 and first[49:52] == ["HEADER", "X-Mailcontinuity-Id", "0"]
    assert len(first) == 49 + 50 * 3
    assert searches[1][-3:] == ["HEADER", "Message-ID", "<a:b@x>"]
    assert key_searches([], "X-Id") == []
    assert key_searches(["hdr:abc:12"], "X-Id") is None
    assert key_searches([f"id:{n}" for n in range(SEARCH_KEYS_MAX + 1)], "X-Id") is None
    assert key_searches(['id:a"b'], "X-Id") is None
