"""Changing the continuity state: the one place where state, routing and audit move together.

The health monitor, ``mailcontinuity failover`` and failback all call ``change_state``; none of
them writes the state table or the transport map on its own.
"""

from __future__ import annotations

from mailcontinuity.config import Config
from mailcontinuity.deploy.routing import Route, switch_route
from mailcontinuity.hooks.runner import Transition, run_hooks
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.state import StateName, current_state, transition

ROUTE_IN_STATE: dict[StateName, Route] = {
    "normal": "primary",
    "failover": "standby",
    "failback": "primary",
}


def change_state(
    config: Config,
    store: StateStore,
    to_state: StateName,
    cause: str,
    actor: str,
    expect: tuple[StateName, ...] | None = None,
) -> bool:
    """Record the transition, route mail accordingly, then run the hooks; False if ``expect``
    did not hold.

    The state is written first: if routing then fails, ``status`` already shows the state the
    operator asked for and the error says which Postfix command to fix. Hooks run last, even if
    routing failed (the administrators want to hear about that most of all), and can only
    delay the caller by their timeout, never the routing.
    """
    old = transition(store, to_state, cause=cause, actor=actor, expect=expect)
    if old is None:
        return False
    try:
        if ROUTE_IN_STATE[old.name] != ROUTE_IN_STATE[to_state]:
            switch_route(config, ROUTE_IN_STATE[to_state])
    finally:
        done = Transition(old.name, to_state, cause, actor, current_state(store).since)
        run_hooks(config.hooks_dir, done, config.hooks_timeout_seconds,
                  {"MAILCONTINUITY_CONFIG": str(config.source)})
    return True
