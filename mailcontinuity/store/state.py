"""The continuity state: one row, moved only by ``transition`` (through ``change_state``).

``transition`` is a compare-and-set: with ``expect`` it happens only if the state is one of
those, in the same write transaction that records it in the audit trail, so two deciders (the
health monitor and an operator) racing each other produce exactly one transition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mailcontinuity.audit import announce
from mailcontinuity.store.audit import insert_audit
from mailcontinuity.store.db import StateStore

StateName = Literal["normal", "failover", "failback"]
STATES: tuple[StateName, ...] = ("normal", "failover", "failback")


@dataclass(frozen=True)
class State:
    """The current continuity state and how it came about."""

    name: StateName
    since: float
    cause: str
    actor: str


def current_state(store: StateStore) -> State:
    row = store.one("SELECT name, since, cause, actor FROM state WHERE id = 1")
    assert row is not None, "migration 1 creates the state row"
    name, since, cause, actor = row
    return State(name, since, cause, actor)


Guard = Callable[[StateStore, State], dict[str, Any] | None]


def transition(store: StateStore, to_state: StateName, cause: str, actor: str,
               expect: tuple[StateName, ...] | None = None,
               origin: str | None = None,
               detail: dict[str, Any] | None = None,
               guard: Guard | None = None) -> State | None:
    """Move to ``to_state`` and audit it; returns the old state, or None if not applied.

    ``expect`` guards against a race between two deciders (the health monitor and an
    operator, or the monitors of several gateways): the transition happens only if the current
    state is one of these. ``guard``, when given, is asked inside the same write transaction
    (a quorum of gateways' votes, read where no other writer can change them): None refuses
    the transition, a dict allows it and is added to the audit record's detail. ``origin``
    defaults to this process's (``audit.origin``); ``detail`` goes into the audit record (what
    the decider knew: the first failed probe, the journal's backlog...).
    """
    if to_state not in STATES:
        raise ValueError(f"unknown state {to_state!r}")
    with store.transaction():
        old = current_state(store)
        if expect is not None and old.name not in expect:
            return None
        audited: dict[str, Any] = dict(detail or {})
        if guard is not None:
            allowed = guard(store, old)
            if allowed is None:
                return None
            audited.update(allowed)
        now = time.time()
        store.execute("UPDATE state SET name = ?, since = ?, cause = ?, actor = ? WHERE id = 1",
                      [to_state, now, cause, actor])
        entry = insert_audit(store, now, "transition", old.name, to_state, cause, actor,
                             audited, origin)
    announce(entry)
    return old


def outage_start(store: StateStore) -> dict[str, Any] | None:
    """The outage in progress: from the last entry into ``failover`` until back to ``normal``.

    ``failback`` still belongs to the outage: mail goes to the primary again, but the outage's
    activity is not merged yet.
    """
    if current_state(store).name == "normal":
        return None
    row = store.one(
        "SELECT at, cause, actor FROM audit WHERE event = 'transition' AND to_state = 'failover'"
        " ORDER BY id DESC LIMIT 1"
    )
    if row is None:
        return None
    return {"start": row[0], "cause": row[1], "actor": row[2]}
