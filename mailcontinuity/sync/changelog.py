"""The outage change log in the state store: what the standby held when the outage began, what
it holds now, and how far failback got.

The record is a mirror of the standby's message files (one row per user, folder and Maildir base
name) plus the baseline taken when the outage began. A mirror rather than an event list, because
events can be lost (a queue overflow, an agent restart) while the disk cannot: a rescan simply
brings the mirror back in line, and every change failback needs (new mail, flag changes, moves,
deletions, new folders) is the difference between the baseline and the mirror.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal

import sqlite_utils

from mailcontinuity.lab.process import is_alive
from mailcontinuity.state import StateStore
from mailcontinuity.sync.maildir_scan import MessageFile

OutageStatus = Literal["recording", "merging", "merged"]
LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class Outage:
    id: int
    started_at: float
    baseline_at: float | None
    status: OutageStatus
    merged_at: float | None
    summary: dict[str, Any]


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


def _flags(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(text.split())


class LeaseHeld(Exception):
    """Another process is merging; the message names it."""


class ChangeLog:
    """Queries on the sync tables, over one process's StateStore connection."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.db = store.db

    # --- outages -------------------------------------------------------------------------
    def open_outage(self) -> Outage | None:
        """The outage not merged yet, if any."""
        row = self.db.execute(
            "SELECT * FROM sync_outage WHERE status != 'merged' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return self._outage(row)

    def last_outage(self) -> Outage | None:
        row = self.db.execute("SELECT * FROM sync_outage ORDER BY id DESC LIMIT 1").fetchone()
        return self._outage(row)

    def start_outage(self) -> Outage:
        """The open outage, created now if there is none (idempotent, race-free)."""
        with self.store.transaction() as db:
            existing = self.open_outage()
            if existing is not None:
                return existing
            db.execute("INSERT INTO sync_outage (started_at, status) VALUES (?, 'recording')",
                       [time.time()])
        outage = self.open_outage()
        assert outage is not None
        return outage

    def set_outage(self, outage_id: int, **fields: Any) -> None:
        if "summary" in fields:
            fields["summary"] = json.dumps(fields["summary"], sort_keys=True)
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.store.transaction() as db:
            db.execute(f"UPDATE sync_outage SET {assignments} WHERE id = ?",
                       [*fields.values(), outage_id])

    @staticmethod
    def _outage(row: tuple[Any, ...] | None) -> Outage | None:
        if row is None:
            return None
        return Outage(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))

    # --- the mirror ----------------------------------------------------------------------
    def messages(self, outage_id: int, user: str | None = None) -> list[RecordedMessage]:
        sql = ("SELECT user, folder, basename, filename, path, key, kind, flags, size, mtime,"
               " message_id, present, in_baseline, base_flags FROM sync_message"
               " WHERE outage_id = ?")
        args: list[Any] = [outage_id]
        if user is not None:
            sql += " AND user = ?"
            args.append(user)
        rows = self.db.execute(sql + " ORDER BY user, folder, mtime, basename", args).fetchall()
        return [
            RecordedMessage(*row[:7], _flags(row[7]) or (), row[8], row[9], row[10],
                            bool(row[11]), bool(row[12]), _flags(row[13]))
            for row in rows
        ]

    def users(self, outage_id: int) -> list[str]:
        rows = self.db.execute(
            "SELECT DISTINCT user FROM sync_message WHERE outage_id = ? UNION"
            " SELECT DISTINCT user FROM sync_folder WHERE outage_id = ? ORDER BY 1",
            [outage_id, outage_id],
        ).fetchall()
        return [row[0] for row in rows]

    def known_files(self, outage_id: int, user: str) -> dict[tuple[str, str], tuple[str, bool]]:
        """(folder, basename) -> (filename, present), to skip re-reading unchanged files."""
        rows = self.db.execute(
            "SELECT folder, basename, filename, present FROM sync_message"
            " WHERE outage_id = ? AND user = ?", [outage_id, user],
        ).fetchall()
        return {(row[0], row[1]): (row[2], bool(row[3])) for row in rows}

    def kind_of(self, outage_id: int, user: str, found: MessageFile) -> str:
        """``outage`` for mail that exists only because of this outage, else ``existing``.

        Journal copies are history, never outage mail. A non-journal message merged in an
        earlier outage is history now, so a later outage never merges it a second time.
        """
        if found.journal:
            return "existing"
        earlier = self.db.execute(
            "SELECT 1 FROM sync_message WHERE user = ? AND key = ? AND kind = 'outage'"
            " AND outage_id < ? LIMIT 1", [user, found.key, outage_id],
        ).fetchone()
        return "existing" if earlier else "outage"

    def upsert_file(self, db: sqlite_utils.Database, outage_id: int, user: str,
                    found: MessageFile, baseline: bool) -> None:
        """Record a file seen on disk (new, or renamed by a flag change)."""
        flags = " ".join(found.flags)
        updated = db.execute(
            "UPDATE sync_message SET filename = ?, path = ?, flags = ?, present = 1,"
            " updated_at = ? WHERE outage_id = ? AND user = ? AND folder = ? AND basename = ?",
            [found.filename, str(found.path), flags, time.time(), outage_id, user, found.folder,
             found.basename],
        ).rowcount
        if updated:
            return
        db.execute(
            "INSERT INTO sync_message (outage_id, user, folder, basename, filename, path, key,"
            " kind, flags, size, mtime, message_id, present, in_baseline, base_flags, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
            [outage_id, user, found.folder, found.basename, found.filename, str(found.path),
             found.key, self.kind_of(outage_id, user, found), flags, found.size, found.mtime,
             found.message_id, int(baseline), flags if baseline else None, time.time()],
        )

    def mark_gone(self, db: sqlite_utils.Database, outage_id: int, user: str, folder: str,
                  basename: str, filename: str | None = None) -> None:
        """A file left the folder; with ``filename``, only if that is still its recorded name
        (a flag-change rename's MOVED_FROM may arrive after its MOVED_TO)."""
        sql = ("UPDATE sync_message SET present = 0, updated_at = ? WHERE outage_id = ?"
               " AND user = ? AND folder = ? AND basename = ?")
        args: list[Any] = [time.time(), outage_id, user, folder, basename]
        if filename is not None:
            sql += " AND filename = ?"
            args.append(filename)
        db.execute(sql, args)

    def record_folder(self, db: sqlite_utils.Database, outage_id: int, user: str, folder: str,
                      present: bool, baseline: bool) -> None:
        db.execute(
            "INSERT INTO sync_folder (outage_id, user, folder, in_baseline, present)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (outage_id, user, folder)"
            " DO UPDATE SET present = excluded.present",
            [outage_id, user, folder, int(baseline), int(present)],
        )

    def folders(self, outage_id: int, user: str) -> dict[str, tuple[bool, bool]]:
        """folder -> (in_baseline, present)."""
        rows = self.db.execute(
            "SELECT folder, in_baseline, present FROM sync_folder WHERE outage_id = ?"
            " AND user = ?", [outage_id, user],
        ).fetchall()
        return {row[0]: (bool(row[1]), bool(row[2])) for row in rows}

    def activity(self, outage_id: int) -> dict[str, int]:
        """Counts of what users did on the standby during the outage, for ``status``."""
        one = self.db.execute(
            "SELECT"
            " SUM(kind = 'outage' AND present),"
            " SUM(kind = 'existing' AND in_baseline AND present AND flags != base_flags),"
            " SUM(kind = 'existing' AND NOT in_baseline AND present),"
            " SUM(in_baseline AND NOT present),"
            " SUM(kind = 'outage' AND NOT present)"
            " FROM sync_message WHERE outage_id = ?", [outage_id],
        ).fetchone()
        new_folders = self.db.execute(
            "SELECT COUNT(*) FROM sync_folder WHERE outage_id = ? AND NOT in_baseline"
            " AND present", [outage_id],
        ).fetchone()[0]
        names = ("new_messages", "flag_changes", "moved_or_copied", "removed_from_folder",
                 "outage_messages_deleted")
        return {name: int(value or 0) for name, value in zip(names, one)} | {
            "new_folders": int(new_folders)}

    # --- checkpoints ---------------------------------------------------------------------
    def done_actions(self, outage_id: int, user: str) -> dict[str, str]:
        rows = self.db.execute(
            "SELECT action, status FROM sync_progress WHERE outage_id = ? AND user = ?",
            [outage_id, user],
        ).fetchall()
        return {row[0]: row[1] for row in rows}

    def checkpoint(self, outage_id: int, user: str,
                   results: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Record finished actions (action id, status, detail) in one transaction."""
        now = time.time()
        with self.store.transaction() as db:
            for action, status, detail in results:
                db.execute(
                    "INSERT OR REPLACE INTO sync_progress (outage_id, user, action, status,"
                    " detail, at) VALUES (?, ?, ?, ?, ?, ?)",
                    [outage_id, user, action, status, json.dumps(detail, sort_keys=True), now],
                )

    def progress_counts(self, outage_id: int) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT status, COUNT(*) FROM sync_progress WHERE outage_id = ? GROUP BY status",
            [outage_id],
        ).fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def refused(self, outage_id: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT user, action, detail FROM sync_progress WHERE outage_id = ?"
            " AND status = 'refused' ORDER BY user, action", [outage_id],
        ).fetchall()
        return [{"user": row[0], "action": row[1], **json.loads(row[2])} for row in rows]

    # --- the merge lease -----------------------------------------------------------------
    def acquire_lease(self, name: str, holder: str) -> None:
        """Take the lease, or raise LeaseHeld naming the live holder.

        A holder on this host whose process is gone (kill -9) loses the lease at once, so a
        re-run after a crash never waits for the expiry.
        """
        now, host, pid = time.time(), socket.gethostname(), os.getpid()
        with self.store.transaction() as db:
            row = db.execute("SELECT holder, pid, host, expires_at FROM sync_lease"
                             " WHERE name = ?", [name]).fetchone()
            if row is not None and row[0] != holder and row[3] > now:
                if not (row[2] == host and not is_alive(row[1])):
                    raise LeaseHeld(f"{name} is in progress in process {row[1]} on {row[2]}"
                                    f" ({row[0]}); wait for it to finish")
            db.execute("INSERT OR REPLACE INTO sync_lease (name, holder, pid, host, expires_at)"
                       " VALUES (?, ?, ?, ?, ?)", [name, holder, pid, host, now + LEASE_SECONDS])

    def release_lease(self, name: str, holder: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM sync_lease WHERE name = ? AND holder = ?", [name, holder])

    # --- the agent's heartbeat -----------------------------------------------------------
    def heartbeat(self, started_at: float) -> None:
        with self.store.transaction() as db:
            db.execute("INSERT OR REPLACE INTO sync_agent (id, pid, started_at, heartbeat_at)"
                       " VALUES (1, ?, ?, ?)", [os.getpid(), started_at, time.time()])

    def agent_heartbeat(self) -> tuple[int, float, float] | None:
        """(pid, started_at, heartbeat_at) of the last agent to report."""
        row = self.db.execute("SELECT pid, started_at, heartbeat_at FROM sync_agent").fetchone()
        return None if row is None else (int(row[0]), float(row[1]), float(row[2]))



def outage_status(store: StateStore) -> dict[str, Any] | None:
    """``status``'s ``outage``: the open outage's recorded activity and failback progress."""
    changelog = ChangeLog(store)
    outage = changelog.open_outage()
    if outage is None:
        return None
    beat = changelog.agent_heartbeat()
    return {"id": outage.id, "started_at": outage.started_at, "status": outage.status,
            "baseline_at": outage.baseline_at, "activity": changelog.activity(outage.id),
            "failback_progress": changelog.progress_counts(outage.id),
            "sync_agent_heartbeat": beat[2] if beat else None}
