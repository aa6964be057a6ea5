"""The outage record: what the standby held when the outage began, what it holds now, and how
far failback got.

The record is a mirror of the standby's message files (one row per user, folder and Maildir base
name) plus the baseline taken when the outage began. A mirror rather than an event list, because
events can be lost (a queue overflow, an agent restart) while the disk cannot: a rescan simply
brings the mirror back in line, and every change failback needs (new mail, flag changes, moves,
deletions, new folders) is the difference between the baseline and the mirror.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from mailcontinuity.mail.headers import FIELD_KEYS, SIZED_KEYS
from mailcontinuity.mail.maildir import MessageFile
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.state import StateName, current_state

OutageStatus = Literal["recording", "merging", "merged"]

ACTIVITY_FIELDS: dict[str, str] = {
    "new_messages": "outage mail: messages new on the standby (received plus written)",
    "outage_received": "outage mail the gateway routed to the standby (one per recipient)",
    "outage_written": "outage mail users wrote there: drafts, copies of what they sent",
    "outage_moved": "outage mail moved (or copied) to another folder, and still there",
    "outage_deleted": "outage mail deleted on the standby (in no folder any more)",
    "outage_flagged": "outage mail still there whose flags users changed (read, flagged,"
                      " keywords)",
    "history_moved": "history (what the standby held when the outage began) moved or copied",
    "history_deleted": "history deleted on the standby (in no folder any more)",
    "history_flagged": "history still there whose flags users changed",
    "new_folders": "folders that appeared on the standby: created by users, or used for the"
                   " first time (Dovecot creates an auto-created folder such as Drafts on"
                   " disk only then)",
}
"""The activity counts (contract: these names in ``status --json``, the metric's ``kind``
label and the incident report), in the order they are reported."""

_IS_OUTAGE = "CASE WHEN kind = 'outage' THEN 1 ELSE 0 END"
# A file's flags now against what they were first: the baseline's for history, else when the
# record first saw the file (NULL for files recorded before migration 8: not counted).
_FLAGS_FIRST = "CASE WHEN in_baseline = 1 THEN base_flags ELSE first_flags END"
# Only files still there: Dovecot sets \Deleted on a file just before it expunges it.
_FLAGS_CHANGED = f"CASE WHEN present = 1 AND flags != {_FLAGS_FIRST} THEN 1 ELSE 0 END"
# The activity counts from one row per (user, message) of ``_PER_MESSAGE``, in the order of
# ACTIVITY_FIELDS (new_folders, the last, from sync_folder).
_COUNTS = (
    "SELECT SUM(is_outage), SUM(is_outage * is_received),"
    " SUM(is_outage * (1 - is_received)),"
    " SUM(CASE WHEN is_outage = 1 AND any_present = 1 AND folders > 1 THEN 1 ELSE 0 END),"
    " SUM(is_outage * (1 - any_present)), SUM(is_outage * any_present * is_flagged),"
    " SUM(is_history * any_present * is_moved), SUM(is_history * (1 - any_present)),"
    " SUM(is_history * any_present * is_flagged),"
    " (SELECT COUNT(*) FROM sync_folder WHERE outage_id = ? AND in_baseline = 0"
    " AND present = 1)"
)
# What one message (all the files of one user's message in the outage's record) was.
_PER_MESSAGE = (
    "SELECT"
    f" MAX({_IS_OUTAGE}) AS is_outage,"
    f" MAX(in_baseline) * (1 - MAX({_IS_OUTAGE})) AS is_history,"
    " MAX(CASE WHEN key LIKE 'id:%' THEN 1 ELSE 0 END) AS is_received,"
    " MAX(present) AS any_present,"
    " COUNT(DISTINCT folder) AS folders,"
    " MAX(CASE WHEN present = 1 AND in_baseline = 0 THEN 1 ELSE 0 END) AS is_moved,"
    f" CASE WHEN MAX({_FLAGS_CHANGED}) = 1 OR COUNT(DISTINCT {_FLAGS_FIRST}) > 1"
    " THEN 1 ELSE 0 END AS is_flagged"
)

# One message's classification as a bitmask over ACTIVITY_FIELDS' message counts (bit i for
# the i-th field; new_folders, the last, is no message's), from a ``_PER_MESSAGE`` row.
_BITS = (
    "is_outage + 2 * is_outage * is_received + 4 * is_outage * (1 - is_received)"
    " + 8 * (CASE WHEN is_outage = 1 AND any_present = 1 AND folders > 1 THEN 1 ELSE 0 END)"
    " + 16 * is_outage * (1 - any_present) + 32 * is_outage * any_present * is_flagged"
    " + 64 * is_history * any_present * is_moved + 128 * is_history * (1 - any_present)"
    " + 256 * is_history * any_present * is_flagged"
)
_MESSAGE_FIELDS = list(ACTIVITY_FIELDS)[:-1]


def rebuild_activity_counts(store: StateStore, outage_id: int | None = None) -> None:
    """Fill the kept activity counts (migration 15: ``sync_activity_message``, one bitmask
    per classified message, and ``sync_activity``, the sums) from a full read of the record,
    for one outage or all: what the migration runs once, and what ``forget_merged_before``
    runs for an outage whose history rows it deleted. The recorder keeps them from then on."""
    where, args = ("", []) if outage_id is None else (" WHERE outage_id = ?", [outage_id])
    store.execute(f"DELETE FROM sync_activity_message{where}", args)
    store.execute(f"DELETE FROM sync_activity{where}", args)
    store.execute(
        'INSERT INTO sync_activity_message (outage_id, "user", key, bits)'
        f" SELECT outage_id, message_user, message_key, bits FROM (SELECT outage_id,"
        f' message_user, message_key, {_BITS} AS bits FROM ({_PER_MESSAGE}, outage_id,'
        ' "user" AS message_user, key AS message_key FROM sync_message'
        f' {where} GROUP BY outage_id, "user", key) AS per_message) AS classified'
        " WHERE bits != 0", args)
    sums = ", ".join(f"SUM(CASE WHEN (bits & {1 << i}) != 0 THEN 1 ELSE 0 END) AS {name}"
                     for i, name in enumerate(_MESSAGE_FIELDS))
    kept = ", ".join(f"COALESCE(m.{name}, 0)" for name in _MESSAGE_FIELDS)
    store.execute(
        f"INSERT INTO sync_activity (outage_id, {', '.join(ACTIVITY_FIELDS)})"
        f" SELECT id, {kept}, (SELECT COUNT(*) FROM sync_folder"
        " WHERE sync_folder.outage_id = sync_outage.id AND in_baseline = 0 AND present = 1)"
        f" FROM sync_outage LEFT JOIN (SELECT outage_id, {sums} FROM sync_activity_message"
        f"{where} GROUP BY outage_id) AS m ON m.outage_id = sync_outage.id"
        + ("" if outage_id is None else " WHERE sync_outage.id = ?"),
        args + args)


@dataclass(frozen=True)
class Outage:
    id: int
    started_at: float
    baseline_at: float | None
    status: OutageStatus
    merged_at: float | None
    summary: dict[str, Any]
    key_scheme: int = SIZED_KEYS
    """How its messages are keyed, on the standby and the primary alike
    (``headers.message_key``; migration 13): fixed when the outage is opened."""


@dataclass(frozen=True)
class RecordedMessage:
    """One row of the mirror: a message file of a user's folder, now or at the baseline."""

    user: str
    folder: str
    basename: str
    filename: str
    path: str
    key: str
    kind: str
    flags: tuple[str, ...]
    size: int
    mtime: float
    message_id: str
    present: bool
    in_baseline: bool
    base_flags: tuple[str, ...] | None
    first_flags: tuple[str, ...] | None = None
    """The flags the file had when the record first saw it (None: recorded before
    migration 8)."""


def _flags(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(text.split())


class ChangeLog:
    """Queries on the outage tables (``sync_*``), over one process's store connection."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    # --- outages -------------------------------------------------------------------------
    def open_outage(self) -> Outage | None:
        """The outage not merged yet, if any."""
        row = self.store.one(
            "SELECT * FROM sync_outage WHERE status != 'merged' ORDER BY id DESC LIMIT 1"
        )
        return self._outage(row)

    def last_outage(self) -> Outage | None:
        row = self.store.one("SELECT * FROM sync_outage ORDER BY id DESC LIMIT 1")
        return self._outage(row)

    def outage(self, outage_id: int) -> Outage | None:
        return self._outage(self.store.one("SELECT * FROM sync_outage WHERE id = ?",
                                           [outage_id]))

    def add_to_summary(self, outage_id: int, **fields: Any) -> None:
        """Add facts to the outage's summary (the verify result...), keeping the rest."""
        with self.store.transaction():
            row = self.store.one("SELECT summary FROM sync_outage WHERE id = ?", [outage_id])
            if row is None:
                return
            summary = {**json.loads(row[0]), **fields}
            self.store.execute("UPDATE sync_outage SET summary = ? WHERE id = ?",
                               [json.dumps(summary, sort_keys=True), outage_id])

    def start_outage(self, while_in: tuple[StateName, ...] | None = None) -> Outage | None:
        """The open outage, created now if there is none (idempotent, race-free); with
        ``while_in``, only while the continuity state is one of those, checked in the same
        transaction: a recorder that saw ``failover`` a moment ago must not open a record for
        an outage an operator has closed since (it would stay open, and a later outage would
        inherit its stale baseline)."""
        with self.store.transaction():
            existing = self.open_outage()
            if existing is not None:
                return existing
            if while_in is not None and current_state(self.store).name not in while_in:
                return None
            self.store.execute(
                "INSERT INTO sync_outage (started_at, status, key_scheme)"
                " VALUES (?, 'recording', ?)", [time.time(), FIELD_KEYS])
        return self.open_outage()

    def set_outage(self, outage_id: int, **fields: Any) -> None:
        with self.store.transaction():
            self.update_outage(outage_id, **fields)

    def update_outage(self, outage_id: int, **fields: Any) -> None:
        """``set_outage`` inside a write transaction the caller holds: failback marks the
        record merged in the transaction that returns the state to ``normal``
        (``outage.merge``), so that nobody reads one without the other."""
        if "summary" in fields:
            fields["summary"] = json.dumps(fields["summary"], sort_keys=True)
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.store.execute(f"UPDATE sync_outage SET {assignments} WHERE id = ?",
                           [*fields.values(), outage_id])

    @staticmethod
    def _outage(row: tuple[Any, ...] | None) -> Outage | None:
        if row is None:
            return None
        return Outage(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6])

    # --- the mirror ----------------------------------------------------------------------
    def messages(self, outage_id: int, user: str | None = None) -> list[RecordedMessage]:
        sql = ('SELECT "user", folder, basename, filename, path, key, kind, flags, size, mtime,'
               " message_id, present, in_baseline, base_flags, first_flags FROM sync_message"
               " WHERE outage_id = ?")
        args: list[Any] = [outage_id]
        if user is not None:
            sql += ' AND "user" = ?'
            args.append(user)
        rows = self.store.query(sql + ' ORDER BY "user", folder, mtime, basename', args)
        return [
            RecordedMessage(user=row[0], folder=row[1], basename=row[2], filename=row[3],
                            path=row[4], key=row[5], kind=row[6], flags=_flags(row[7]) or (),
                            size=row[8], mtime=row[9], message_id=row[10],
                            present=bool(row[11]), in_baseline=bool(row[12]),
                            base_flags=_flags(row[13]), first_flags=_flags(row[14]))
            for row in rows
        ]

    def users(self, outage_id: int) -> list[str]:
        rows = self.store.query(
            'SELECT DISTINCT "user" FROM sync_message WHERE outage_id = ? UNION'
            ' SELECT DISTINCT "user" FROM sync_folder WHERE outage_id = ? ORDER BY 1',
            [outage_id, outage_id],
        )
        return [row[0] for row in rows]

    def known_files(self, outage_id: int, user: str) -> dict[tuple[str, str], tuple[str, bool]]:
        """(folder, basename) -> (filename, present), to skip re-reading unchanged files."""
        rows = self.store.query(
            "SELECT folder, basename, filename, present FROM sync_message"
            ' WHERE outage_id = ? AND "user" = ?', [outage_id, user],
        )
        return {(row[0], row[1]): (row[2], bool(row[3])) for row in rows}

    def kind_of(self, outage_id: int, user: str, found: MessageFile) -> str:
        """``outage`` for mail that exists only because of this outage, else ``existing``.

        Journal copies are history, never outage mail. A non-journal message merged in an
        earlier outage is history now, so a later outage never merges it a second time.
        """
        if found.journal:
            return "existing"
        keys = list(dict.fromkeys((found.key, *found.keys)))  # earlier outages' schemes too
        earlier = self.store.one(
            "SELECT 1 FROM sync_message WHERE \"user\" = ? AND key IN"
            f" ({', '.join('?' * len(keys))}) AND kind = 'outage' AND outage_id < ? LIMIT 1",
            [user, *keys, outage_id],
        )
        return "existing" if earlier else "outage"

    def upsert_file(self, outage_id: int, user: str,
                    found: MessageFile, baseline: bool) -> None:
        """Record a file seen on disk (new, or renamed by a flag change)."""
        flags = " ".join(found.flags)
        # ``touched`` (migration 14): the row shows activity; the incident report's
        # ``routed_mail`` and ``activity_span`` read it.
        updated = self.store.execute(
            "UPDATE sync_message SET filename = ?, path = ?, flags = ?, present = 1,"
            " updated_at = ?, touched = CASE WHEN base_flags != ? THEN 1 ELSE touched END"
            ' WHERE outage_id = ? AND "user" = ? AND folder = ? AND basename = ?',
            [found.filename, str(found.path), flags, time.time(), flags, outage_id, user,
             found.folder, found.basename],
        )
        if updated:
            self._reclassify_file(outage_id, user, found.folder, found.basename)
            return
        kind = self.kind_of(outage_id, user, found)
        # Every file new since the baseline is activity; a baseline file only if it is outage
        # mail (the kept counts judge a message from all its rows, touched or not).
        touched = not baseline or kind != "existing"
        self.store.execute(
            'INSERT INTO sync_message (outage_id, "user", folder, basename, filename, path, key,'
            " kind, flags, size, mtime, message_id, present, in_baseline, base_flags, updated_at,"
            " first_flags, touched)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
            [outage_id, user, found.folder, found.basename, found.filename, str(found.path),
             found.key, kind, flags, found.size, found.mtime, found.message_id, int(baseline),
             flags if baseline else None, time.time(), flags, int(touched)],
        )
        self._reclassify(outage_id, user, found.key)

    def mark_gone(self, outage_id: int, user: str, folder: str,
                  basename: str, filename: str | None = None) -> None:
        """A file left the folder; with ``filename``, only if that is still its recorded name
        (a flag-change rename's MOVED_FROM may arrive after its MOVED_TO)."""
        sql = ("UPDATE sync_message SET present = 0, touched = 1, updated_at = ?"
               ' WHERE outage_id = ? AND "user" = ? AND folder = ? AND basename = ?')
        args: list[Any] = [time.time(), outage_id, user, folder, basename]
        if filename is not None:
            sql += " AND filename = ?"
            args.append(filename)
        if self.store.execute(sql, args):
            self._reclassify_file(outage_id, user, folder, basename)

    def _reclassify_file(self, outage_id: int, user: str, folder: str, basename: str) -> None:
        row = self.store.one(
            'SELECT key FROM sync_message WHERE outage_id = ? AND "user" = ? AND folder = ?'
            " AND basename = ?", [outage_id, user, folder, basename])
        if row is not None:
            self._reclassify(outage_id, user, row[0])

    def _reclassify(self, outage_id: int, user: str, key: str) -> None:
        """Keep the activity counts (migration 15) as the recorder writes: classify the one
        message (user, key) again from its rows (an indexed read of a few rows), and move the
        outage's counts by the difference from its last classification. Called in the
        recorder's transaction (outage/scan.py), so counts and rows change together; reading
        them (``activity``) is then one row, however large the outage."""
        row = self.store.one(
            f"SELECT {_BITS} FROM ({_PER_MESSAGE} FROM sync_message WHERE outage_id = ?"
            ' AND "user" = ? AND key = ?) AS per_message', [outage_id, user, key])
        bits = int(row[0] or 0) if row is not None else 0
        kept = self.store.one(
            'SELECT bits FROM sync_activity_message WHERE outage_id = ? AND "user" = ?'
            " AND key = ?", [outage_id, user, key])
        before = int(kept[0]) if kept is not None else 0
        if bits == before:
            return
        if bits == 0:
            self.store.execute('DELETE FROM sync_activity_message WHERE outage_id = ?'
                               ' AND "user" = ? AND key = ?', [outage_id, user, key])
        else:
            self.store.execute(
                'INSERT INTO sync_activity_message (outage_id, "user", key, bits)'
                ' VALUES (?, ?, ?, ?) ON CONFLICT (outage_id, "user", key)'
                " DO UPDATE SET bits = excluded.bits", [outage_id, user, key, bits])
        self._count(outage_id, {
            name: ((bits >> i) & 1) - ((before >> i) & 1)
            for i, name in enumerate(_MESSAGE_FIELDS)})

    def _count(self, outage_id: int, deltas: dict[str, int]) -> None:
        """Add ``deltas`` to the outage's row of kept activity counts (made at its first)."""
        changed = {name: delta for name, delta in deltas.items() if delta}
        if not changed:
            return
        names = list(changed)
        self.store.execute(
            f"INSERT INTO sync_activity (outage_id, {', '.join(names)})"
            f" VALUES (?{', ?' * len(names)}) ON CONFLICT (outage_id) DO UPDATE SET "
            + ", ".join(f"{name} = sync_activity.{name} + excluded.{name}" for name in names),
            [outage_id, *changed.values()])

    def record_folder(self, outage_id: int, user: str, folder: str,
                      present: bool, baseline: bool) -> None:
        """Record a folder seen (or gone); ``new_folders`` kept as it changes."""
        known = self.store.one(
            'SELECT in_baseline, present FROM sync_folder WHERE outage_id = ? AND "user" = ?'
            " AND folder = ?", [outage_id, user, folder])
        was_new = known is not None and not known[0] and bool(known[1])
        is_new = present and not (bool(known[0]) if known is not None else baseline)
        self._count(outage_id, {"new_folders": int(is_new) - int(was_new)})
        self.store.execute(
            'INSERT INTO sync_folder (outage_id, "user", folder, in_baseline, present)'
            ' VALUES (?, ?, ?, ?, ?) ON CONFLICT (outage_id, "user", folder)'
            " DO UPDATE SET present = excluded.present",
            [outage_id, user, folder, int(baseline), int(present)],
        )

    def folders(self, outage_id: int, user: str) -> dict[str, tuple[bool, bool]]:
        """folder -> (in_baseline, present)."""
        rows = self.store.query(
            "SELECT folder, in_baseline, present FROM sync_folder WHERE outage_id = ?"
            ' AND "user" = ?', [outage_id, user],
        )
        return {row[0]: (bool(row[1]), bool(row[2])) for row in rows}

    def activity(self, outage_id: int) -> dict[str, int]:
        """What users did on the standby during the outage, counted in messages (one per user
        and message, however many files it took), for ``status``, the metrics and ``report``.

        Outage mail (what exists because of the outage) and history (what the standby held
        when it began) apart, since failback treats them apart: ``ACTIVITY_FIELDS`` says what
        each count means. A message moved and flagged counts in both; a message moved twice
        once; a deleted one is not also "flagged". Flag changes are measured against the flags
        a file had when first recorded (the baseline's for history), so mail that arrived
        flagged (a Sent copy) is not "flagged".
        Kept as the recorder writes (migration 15, ``_reclassify``), so reading them is one
        row however large the outage (each scrape reads them); a property test checks they
        equal ``activity_full_read`` after every write.
        """
        row = self.store.one(f"SELECT {', '.join(ACTIVITY_FIELDS)} FROM sync_activity"
                             " WHERE outage_id = ?", [outage_id])
        return {name: int(row[i]) if row is not None else 0
                for i, name in enumerate(ACTIVITY_FIELDS)}

    def activity_full_read(self, outage_id: int) -> dict[str, int]:
        """``activity`` as defined, over every row of the outage's record, baseline included
        (how it was read before migrations 14 and 15): the benchmark's comparison, the property
        test's reference."""
        one = self.store.one(
            f"{_COUNTS} FROM ({_PER_MESSAGE}"
            ' FROM sync_message WHERE outage_id = ? GROUP BY "user", key) AS per_message',
            [outage_id, outage_id],
        )
        assert one is not None, "an aggregate query returns one row"
        return {name: int(value or 0) for name, value in zip(ACTIVITY_FIELDS, one, strict=True)}

    def routed_mail(self, outage_id: int) -> tuple[float | None, int, int]:
        """(when the first arrived, messages, deliveries) of the mail the gateway routed to
        the standby during the outage: outage mail with the gateway's id (a user's draft or
        saved copy has none)."""
        row = self.store.one(
            "SELECT MIN(mtime), COUNT(DISTINCT key), COUNT(DISTINCT \"user\" || ' ' || key)"
            " FROM sync_message WHERE outage_id = ? AND touched = 1"
            " AND kind = 'outage' AND key LIKE 'id:%'",
            [outage_id])
        assert row is not None, "an aggregate query returns one row"
        return (None if row[0] is None else float(row[0])), int(row[1]), int(row[2])

    def activity_span(self, outage_id: int) -> tuple[float | None, float | None]:
        """When users first and last changed something on the standby, as the record saw it:
        flags and removals of what was there, messages moved or copied, mail they wrote."""
        # Every row it takes is a touched one: read through the index, not the baseline.
        row = self.store.one(
            "SELECT MIN(updated_at), MAX(updated_at) FROM sync_message m"
            " WHERE outage_id = ? AND touched = 1 AND ("
            "(m.in_baseline = 1 AND (m.present = 0 OR m.flags != m.base_flags))"
            " OR (m.kind = 'existing' AND m.in_baseline = 0 AND EXISTS (SELECT 1 FROM"
            " sync_message b WHERE b.outage_id = m.outage_id AND b.user = m.user"
            " AND b.key = m.key AND b.in_baseline = 1))"
            " OR (m.kind = 'outage' AND (m.key NOT LIKE 'id:%' OR m.folder != 'INBOX')))",
            [outage_id])
        assert row is not None, "an aggregate query returns one row"
        return row[0], row[1]

    # --- checkpoints ---------------------------------------------------------------------
    def done_actions(self, outage_id: int, user: str) -> dict[str, str]:
        rows = self.store.query(
            'SELECT action, status FROM sync_progress WHERE outage_id = ? AND "user" = ?',
            [outage_id, user],
        )
        return {row[0]: row[1] for row in rows}

    def checkpoint(self, outage_id: int, user: str,
                   results: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Record finished actions (action id, status, detail) in one transaction."""
        now = time.time()
        with self.store.transaction():
            for action, status, detail in results:
                self.store.execute(
                    'INSERT INTO sync_progress (outage_id, "user", action, status, detail, at)'
                    ' VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (outage_id, "user", action)'
                    " DO UPDATE SET status = excluded.status, detail = excluded.detail,"
                    " at = excluded.at",
                    [outage_id, user, action, status, json.dumps(detail, sort_keys=True), now],
                )

    def refused(self, outage_id: int, user: str | None = None) -> dict[tuple[str, str],
                                                                        dict[str, Any]]:
        """The actions the primary refused and no later pass merged: (user, action) -> detail."""
        rows = self.store.query(
            'SELECT "user", action, detail FROM sync_progress WHERE outage_id = ?'
            " AND status = 'refused'" + (' AND "user" = ?' if user is not None else "")
            + ' ORDER BY "user", action', [outage_id] + ([user] if user is not None else []))
        return {(row[0], row[1]): json.loads(row[2] or "{}") for row in rows}

    def clear_refused(self, outage_id: int, user: str, actions: dict[str, str]) -> None:
        """A later pass found refused messages on the primary (an APPEND whose answer was lost,
        or one the operator made): they are merged, no longer refused. ``actions``: action id
        -> why it is cleared (kept in the row's detail)."""
        with self.store.transaction():
            for action, why in actions.items():
                row = self.store.one("SELECT detail FROM sync_progress WHERE outage_id = ?"
                                     ' AND "user" = ? AND action = ? AND status = \'refused\'',
                                     [outage_id, user, action])
                if row is None:
                    continue
                detail = {**json.loads(row[0] or "{}"), "cleared": why}
                self.store.execute(
                    "UPDATE sync_progress SET status = 'done', detail = ?, at = ?"
                    ' WHERE outage_id = ? AND "user" = ? AND action = ?',
                    [json.dumps(detail, sort_keys=True), time.time(), outage_id, user, action])

    def forget_merged_before(self, before: float) -> int:
        """Delete the per-message detail of outages merged before ``before``: the mirror of
        the standby, folders and checkpoints; the outage's row and summary stay (``report``).
        Rows of outage mail stay too: they are how a later outage knows that a message still
        on the standby was merged already (``kind_of``)."""
        with self.store.transaction():
            old = [row[0] for row in self.store.query(
                "SELECT id FROM sync_outage WHERE status = 'merged' AND merged_at < ?", [before])]
            deleted = 0
            for outage_id in old:
                rows = self.store.execute("DELETE FROM sync_message WHERE outage_id = ?"
                                          " AND kind != 'outage'", [outage_id])
                rows += self.store.execute("DELETE FROM sync_folder WHERE outage_id = ?",
                                           [outage_id])
                deleted += rows
                deleted += self.store.execute("DELETE FROM sync_progress WHERE outage_id = ?",
                                              [outage_id])
                if rows:  # its history and folders went: its kept counts, from what is left
                    rebuild_activity_counts(self.store, outage_id)
        return deleted

    def progress_counts(self, outage_id: int) -> dict[str, int]:
        rows = self.store.query(
            "SELECT status, COUNT(*) FROM sync_progress WHERE outage_id = ? GROUP BY status",
            [outage_id],
        )
        return {row[0]: int(row[1]) for row in rows}
