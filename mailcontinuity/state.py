"""The state store: one SQLite file per host, shared by every mailcontinuity process.

Each process opens its own connection. WAL lets readers (``status``) run while a daemon writes,
and the busy timeout turns a concurrent writer into a short wait instead of an error. Schema
changes are numbered migrations tracked in ``PRAGMA user_version``, so an upgraded package
brings an old database forward the first time any process opens it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from mailcontinuity import identity
from mailcontinuity.auditlog import announce

StateName = Literal["normal", "failover", "failback"]
STATES: tuple[StateName, ...] = ("normal", "failover", "failback")
BUSY_TIMEOUT_SECONDS = 30.0


class StateStoreError(Exception):
    """The state store cannot be opened or written; the message says where and why."""


@dataclass(frozen=True)
class State:
    """The current continuity state and how it came about."""

    name: StateName
    since: float
    cause: str
    actor: str


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log: a state transition or an operator command."""

    id: int
    at: float
    event: str
    from_state: str | None
    to_state: str | None
    cause: str
    actor: str
    detail: dict[str, Any]
    origin: str = ""


def _migration_1(db: sqlite_utils.Database) -> None:
    """State and audit log: the minimum every other part builds on."""
    db.execute(
        "CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL,"
        " since REAL NOT NULL, cause TEXT NOT NULL, actor TEXT NOT NULL)"
    )
    db.execute(
        "INSERT INTO state (id, name, since, cause, actor) VALUES (1, 'normal', ?, ?, ?)",
        [time.time(), "state store created", "mailcontinuity"],
    )
    db.execute(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
        " event TEXT NOT NULL, from_state TEXT, to_state TEXT, cause TEXT NOT NULL,"
        " actor TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}')"
    )
    db.execute("CREATE INDEX audit_at ON audit (at)")


def _migration_journal(db: sqlite_utils.Database) -> None:
    """Journal index: one row per journal copy (shipped, unknown recipient, failed, pruned),
    and the milter's alarms (spool write failures, shipping errors) for ``status``."""
    db.execute(
        "CREATE TABLE journal (message_id TEXT NOT NULL, address TEXT NOT NULL,"
        " folder TEXT NOT NULL, status TEXT NOT NULL, received REAL NOT NULL,"
        " recorded REAL NOT NULL, location TEXT, detail TEXT NOT NULL DEFAULT '',"
        " PRIMARY KEY (message_id, address, folder))"
    )
    db.execute("CREATE INDEX journal_status ON journal (status, received)")
    db.execute(
        "CREATE TABLE journal_alarm (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
        " kind TEXT NOT NULL, detail TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX journal_alarm_kind ON journal_alarm (kind, at)")


def _migration_sync(db: sqlite_utils.Database) -> None:
    """Outages, the standby mirror, folders, failback checkpoints, the merge lease, heartbeat."""
    db.execute(
        "CREATE TABLE sync_outage (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL,"
        " baseline_at REAL, status TEXT NOT NULL, merged_at REAL, summary TEXT NOT NULL"
        " DEFAULT '{}')"
    )
    db.execute(
        "CREATE TABLE sync_message (outage_id INTEGER NOT NULL, user TEXT NOT NULL,"
        " folder TEXT NOT NULL, basename TEXT NOT NULL, filename TEXT NOT NULL,"
        " path TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, flags TEXT NOT NULL,"
        " size INTEGER NOT NULL, mtime REAL NOT NULL, message_id TEXT NOT NULL,"
        " present INTEGER NOT NULL, in_baseline INTEGER NOT NULL, base_flags TEXT,"
        " updated_at REAL NOT NULL, PRIMARY KEY (outage_id, user, folder, basename))"
    )
    db.execute("CREATE INDEX sync_message_key ON sync_message (user, key, kind)")
    db.execute(
        "CREATE TABLE sync_folder (outage_id INTEGER NOT NULL, user TEXT NOT NULL,"
        " folder TEXT NOT NULL, in_baseline INTEGER NOT NULL, present INTEGER NOT NULL,"
        " PRIMARY KEY (outage_id, user, folder))"
    )
    db.execute(
        "CREATE TABLE sync_progress (outage_id INTEGER NOT NULL, user TEXT NOT NULL,"
        " action TEXT NOT NULL, status TEXT NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL,"
        " PRIMARY KEY (outage_id, user, action))"
    )
    db.execute(
        "CREATE TABLE sync_lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, pid INTEGER NOT NULL,"
        " host TEXT NOT NULL, expires_at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE sync_agent (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL,"
        " started_at REAL NOT NULL, heartbeat_at REAL NOT NULL)"
    )


def _migration_policyd_health(db: sqlite_utils.Database) -> None:
    """The primary's health probes and policyd's heartbeat, written by policyd, read by status."""
    db.execute(
        "CREATE TABLE health_probes (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
        " probe TEXT NOT NULL, target TEXT NOT NULL, ok INTEGER NOT NULL,"
        " latency_ms REAL NOT NULL, error TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX health_probes_at ON health_probes (at)")
    db.execute(
        "CREATE TABLE policyd_heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1),"
        " pid INTEGER NOT NULL, started_at REAL NOT NULL, beat_at REAL NOT NULL,"
        " stale_after REAL NOT NULL, stopped_at REAL)"
    )


def _migration_audit_origin(db: sqlite_utils.Database) -> None:
    """Where each audited action came from (``ssh:IP``, ``tty:...``, ``daemon:NAME@HOST``);
    records from before this migration have an empty origin."""
    db.execute("ALTER TABLE audit ADD COLUMN origin TEXT NOT NULL DEFAULT ''")


# Append only: a released migration is never edited, a change is a new entry.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migration_1,
    _migration_journal,
    _migration_sync,
    _migration_policyd_health,
    _migration_audit_origin,
]


def _create_shared(path: Path) -> None:
    """Create the database file group-writable: the daemons run as different users (the milter
    as the mail user, policyd as root) and share it through a group. SQLite gives the -wal and
    -shm files the database file's mode, so this one mode covers all three, whatever the umask
    of the process that happens to create it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o660)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o660)
    finally:
        os.close(fd)


class StateStore:
    """One process's connection to the shared state database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_shared(path)
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            self.db = sqlite_utils.Database(conn)
            self._enable_wal()
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StateStoreError(
                f"state store {path}: {exc}; check that the directory exists and is writable"
                " by this user"
            ) from None

    def _enable_wal(self) -> None:
        """Switch to WAL once per database. Changing the journal mode needs a lock SQLite does
        not wait for (no busy handler), so processes opening a new store together retry."""
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self.db.execute("PRAGMA journal_mode=wal")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self.db.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction that takes the lock up front, so two writers never deadlock."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StateStoreError(
                    f"state store {self.path} has schema version {version}, newer than this"
                    f" mailcontinuity knows ({len(MIGRATIONS)}); upgrade the package"
                )
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                migration(db)
                db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def current_state(self) -> State:
        name, since, cause, actor = self.db.execute(
            "SELECT name, since, cause, actor FROM state WHERE id = 1"
        ).fetchone()
        return State(name, since, cause, actor)

    def transition(
        self,
        to_state: StateName,
        cause: str,
        actor: str,
        expect: tuple[StateName, ...] | None = None,
        origin: str | None = None,
    ) -> State | None:
        """Move to ``to_state`` and audit it; returns the old state, or None if not applied.

        ``expect`` guards against a race between two deciders (the health monitor and an
        operator): the transition happens only if the current state is one of these.
        ``origin`` defaults to this process's (``identity.origin``).
        """
        if to_state not in STATES:
            raise ValueError(f"unknown state {to_state!r}")
        with self.transaction() as db:
            old = self.current_state()
            if expect is not None and old.name not in expect:
                return None
            now = time.time()
            db.execute(
                "UPDATE state SET name = ?, since = ?, cause = ?, actor = ? WHERE id = 1",
                [to_state, now, cause, actor],
            )
            entry = self._audit(db, now, "transition", old.name, to_state, cause, actor, {},
                                origin)
        announce(entry)
        return old

    def record_command(self, command: str, actor: str, detail: dict[str, Any],
                       origin: str | None = None, event: str = "command") -> None:
        """Audit an operator command (or, with ``event``, another audited action such as a
        merge) that is not itself a transition."""
        with self.transaction() as db:
            entry = self._audit(db, time.time(), event, None, None, command, actor, detail,
                                origin)
        announce(entry)

    @staticmethod
    def _audit(
        db: sqlite_utils.Database,
        at: float,
        event: str,
        from_state: str | None,
        to_state: str | None,
        cause: str,
        actor: str,
        detail: dict[str, Any],
        origin: str | None,
    ) -> AuditEntry:
        origin = identity.origin() if origin is None else origin
        cursor = db.execute(
            "INSERT INTO audit (at, event, from_state, to_state, cause, actor, detail, origin)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [at, event, from_state, to_state, cause, actor, json.dumps(detail, sort_keys=True),
             origin],
        )
        return AuditEntry(int(cursor.lastrowid or 0), at, event, from_state, to_state, cause,
                          actor, detail, origin)

    def audit_log(self, since: float = 0.0) -> list[AuditEntry]:
        rows = self.db.execute(
            "SELECT id, at, event, from_state, to_state, cause, actor, detail, origin FROM audit"
            " WHERE at >= ? ORDER BY id",
            [since],
        ).fetchall()
        return [AuditEntry(*row[:7], json.loads(row[7]), row[8]) for row in rows]
