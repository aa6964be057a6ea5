"""Changing the continuity state: the one place where state, routing and the audit log move together.

The health monitor, ``mailcontinuity failover`` and failback all call ``change_state``; none of
them writes the state table or the transport map on its own.
"""

from __future__ import annotations

from mailcontinuity.config import Config
from mailcontinuity.hooks.runner import Transition, run_hooks
from mailcontinuity.routing import Route, switch_route
from mailcontinuity.state import StateName, StateStore

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
    old = store.transition(to_state, cause=cause, actor=actor, expect=expect)
    if old is None:
        return False
    try:
        if ROUTE_IN_STATE[old.name] != ROUTE_IN_STATE[to_state]:
            switch_route(config, ROUTE_IN_STATE[to_state])
    finally:
        transition = Transition(old.name, to_state, cause, actor, store.current_state().since)
        run_hooks(config.hooks_dir, transition, config.hooks_timeout_seconds,
                  {"MAILCONTINUITY_CONFIG": str(config.source)})
    return True
