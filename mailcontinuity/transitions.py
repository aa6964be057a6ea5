"""Changing the continuity state: the one place where state, routing and audit move together.

The health monitor, ``mailcontinuity failover`` and failback all call ``change_state``; none of
them writes the state table or the transport map on its own. Every hook run is audited too
(``audit_hooks``): what ran for which transition, its exit status, how long, its last lines.
On a site with several hosts the state is shared (PostgreSQL) and each gateway's policyd
applies its routing to its own Postfix (``monitor.follower``); ``change_state`` routes at once
only where it runs on a gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.deploy.proxy import switch_proxy
from mailcontinuity.deploy.routing import Route, switch_route
from mailcontinuity.hooks.runner import HookQueue, HookResult, Transition, run_hooks
from mailcontinuity.mail.tools import CommandError
from mailcontinuity.store.audit import record_command
from mailcontinuity.store.db import StateStore, open_store
from mailcontinuity.store.state import Guard, State, StateName, current_state, transition

log = logging.getLogger(__name__)

ROUTE_IN_STATE: dict[StateName, Route] = {
    "normal": "primary",
    "failover": "standby",
    "failback": "primary",
}
HOOK_EVENT = "hook"
AUDITED_OUTPUT_LINES = 10
AUDITED_OUTPUT_CHARS = 1000


def change_state(
    config: Config,
    store: StateStore,
    to_state: StateName,
    cause: str,
    actor: str,
    expect: tuple[StateName, ...] | None = None,
    hooks: HookQueue | None = None,
    detail: dict[str, Any] | None = None,
    guard: Guard | None = None,
    recorded: Callable[[State], None] | None = None,
) -> bool:
    """Record the transition, route mail accordingly, then run the hooks; False if ``expect``
    did not hold. ``detail`` is audited with the transition.

    The state is written first: if routing then fails, ``status`` already shows the state the
    operator asked for and the error says which Postfix command to fix. Hooks run last, even if
    routing failed (the administrators want to hear about that most of all), and can never
    delay the routing. With ``hooks`` (the daemons' ``HookQueue``) they run in its thread and
    the caller goes on at once; without, here, each bounded by its timeout (an operator's
    command, which shows what they did). ``guard`` (a quorum of gateways) is checked inside
    the transition's transaction (``store.state.transition``).

    A host that routes no mail (the standby host of a site with several hosts) only records
    the transition; the gateways' policyds see it and switch their own Postfix. ``recorded``
    is told the new state as soon as it is committed, before routing (policyd's own view).
    """
    old = transition(store, to_state, cause=cause, actor=actor, expect=expect, detail=detail,
                     guard=guard)
    if old is None:
        return False
    if recorded is not None:  # before routing: policyd's answers must not lag behind the route
        recorded(current_state(store))
    try:
        if config.routes_mail and ROUTE_IN_STATE[old.name] != ROUTE_IN_STATE[to_state]:
            apply_route(config, ROUTE_IN_STATE[to_state])
    finally:
        done = Transition(old.name, to_state, cause, actor, current_state(store).since)
        if hooks is not None:
            hooks.submit(done)
        else:
            audit_hooks(store, done, run_hooks(config.hooks_dir, done,
                                               config.hooks_timeout_seconds,
                                               hooks_env(config)))
    return True


def apply_route(config: Config, route: Route) -> None:
    """Steer users' clients (the client proxy, when ``[proxy]`` is set) and mail (the gateway's
    transport table) to ``route``. The proxy goes first: it takes tens of milliseconds where a
    Postfix reload and queue flush take seconds, which connected clients would otherwise spend
    without service (bench/proxy_gap.py); each is done even if the other failed."""
    steer_clients(config, route)
    switch_route(config, route)


def steer_clients(config: Config, route: Route) -> None:
    """The client proxy (when ``[proxy]`` is set) to ``route``. A failure is logged, never
    raised: mail routing must not wait on it, the route file is written first (new logins go
    to the right side), and sessions still on the old side move when their client reconnects."""
    if config.proxy is None:
        return
    try:
        switch_proxy(config, route)
    except (CommandError, OSError) as exc:
        log.error("event=proxy_switch_failed route=%s error=%r action=run 'doveadm -c %s proxy"
                  " kick -h HOST' for the side left", route, str(exc),
                  config.proxy.doveadm_config)


def hooks_env(config: Config) -> dict[str, str]:
    return {"MAILCONTINUITY_CONFIG": str(config.source)}


def audit_hooks(store: StateStore, done: Transition, results: list[HookResult]) -> None:
    """One audit record per hook run: which, for which transition, and how it ended."""
    for result in results:
        outcome = ("timed out (killed)" if result.timed_out
                   else "could not start" if result.exit_code is None
                   else "ok" if result.exit_code == 0 else f"exit {result.exit_code}")
        lines = result.output.strip().splitlines()[-AUDITED_OUTPUT_LINES:]
        record_command(store, f"{result.hook.name} on-{done.new_state}", done.actor, {
            "hook": str(result.hook), "transition": f"{done.old_state} -> {done.new_state}",
            "outcome": outcome, "exit_code": result.exit_code, "seconds": result.seconds,
            "output": "\n".join(lines)[-AUDITED_OUTPUT_CHARS:]}, event=HOOK_EVENT)


def hook_queue(config: Config) -> HookQueue:
    """The daemons' queue: hooks in a thread of their own, audited over its own connection
    (a store connection serves one thread)."""

    def done(transition_done: Transition, results: list[HookResult]) -> None:
        if not results:
            return
        store = open_store(config)
        try:
            audit_hooks(store, transition_done, results)
        finally:
            store.close()

    return HookQueue(config.hooks_dir, config.hooks_timeout_seconds, hooks_env(config), done)
