"""The audit table: state transitions, operator commands and other audited actions.

Written in the same transaction as what it records (``store.state.transition``) or right after
it (``record_command``); each record is also announced as a log line (``audit.announce``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from mailcontinuity.audit import AuditEntry, announce
from mailcontinuity.audit import origin as process_origin
from mailcontinuity.store.db import StateStore


def insert_audit(store: StateStore, at: float, event: str, from_state: str | None,
                 to_state: str | None, cause: str, actor: str, detail: dict[str, Any],
                 origin: str | None) -> AuditEntry:
    """Add one record inside the caller's transaction; ``origin`` defaults to this process's."""
    origin = process_origin() if origin is None else origin
    row = store.one(
        "INSERT INTO audit (at, event, from_state, to_state, cause, actor, detail, origin)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [at, event, from_state, to_state, cause, actor, json.dumps(detail, sort_keys=True),
         origin],
    )
    assert row is not None
    return AuditEntry(int(row[0]), at, event, from_state, to_state, cause, actor, detail, origin)


def record_command(store: StateStore, command: str, actor: str, detail: dict[str, Any],
                   origin: str | None = None, event: str = "command") -> None:
    """Audit an operator command (or, with ``event``, another audited action such as a merge)
    that is not itself a transition, and announce it."""
    with store.transaction():
        entry = insert_audit(store, time.time(), event, None, None, command, actor, detail,
                             origin)
    announce(entry)


def forget_before(store: StateStore, before: float) -> int:
    """Delete audit records older than ``before``; how many."""
    with store.transaction():
        return store.execute("DELETE FROM audit WHERE at < ?", [before])


def audit_between(store: StateStore, since: float, until: float) -> list[AuditEntry]:
    """The records from ``since`` to ``until``, oldest first (the incident report's window)."""
    return _entries(store, "WHERE at >= ? AND at <= ?", [since, until])


def last_transition(store: StateStore, to_state: str, before: float) -> AuditEntry | None:
    """The latest transition into ``to_state`` at or before ``before``."""
    found = _entries(store, "WHERE event = 'transition' AND to_state = ? AND at <= ?"
                     " ORDER BY id DESC LIMIT 1", [to_state, before], order=False)
    return found[0] if found else None


def first_transition(store: StateStore, to_state: str, after: float) -> AuditEntry | None:
    """The earliest transition into ``to_state`` at or after ``after``."""
    found = _entries(store, "WHERE event = 'transition' AND to_state = ? AND at >= ?"
                     " ORDER BY id LIMIT 1", [to_state, after], order=False)
    return found[0] if found else None


def _entries(store: StateStore, where: str, params: list[Any],
             order: bool = True) -> list[AuditEntry]:
    rows = store.query(
        "SELECT id, at, event, from_state, to_state, cause, actor, detail, origin FROM audit "
        + where + (" ORDER BY id" if order else ""), params)
    return [AuditEntry(id=row[0], at=row[1], event=row[2], from_state=row[3], to_state=row[4],
                       cause=row[5], actor=row[6], detail=json.loads(row[7]), origin=row[8])
            for row in rows]


def audit_log(store: StateStore, since: float = 0.0) -> list[AuditEntry]:
    return _entries(store, "WHERE at >= ?", [since])
