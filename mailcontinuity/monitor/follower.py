"""Following the shared state: the state policy answers use, and this gateway's routing.

A thread of policyd with its own store connection. It reads the continuity state every
``STATE_POLL_SECONDS``, at once when PostgreSQL announces a change, and

- keeps the state ``RecipientPolicy`` answers with: no store query per policy request, so
  policyd's latency owes nothing to the store, and a store that hangs or is gone never stalls
  Postfix's policy lookups;
- on a gateway, makes this host's Postfix route as the state says (``deploy.routing``) when its
  transport table says otherwise: the transition was decided on another gateway, or by an
  operator on another host, or here but the routing failed. The route and the state it belongs
  to go into the store (``store.gateways``), so ``status`` on every host shows every gateway's
  routing. A route that cannot be switched (Postfix refuses) is retried every
  ``ROUTE_RETRY_SECONDS``.

When the store cannot be reached nothing changes: the last known state and this host's routing
stay as they are (fail-open), one warning says so, and the thread retries until it returns.
"""

from __future__ import annotations

import logging
import threading
import time

from mailcontinuity.config import Config
from mailcontinuity.deploy.routing import ensure_route, installed_route
from mailcontinuity.mail.tools import CommandError
from mailcontinuity.store.db import StateStore, StateStoreError
from mailcontinuity.store.gateways import GatewayRoute, record_route
from mailcontinuity.store.state import State, StateName, current_state
from mailcontinuity.transitions import ROUTE_IN_STATE, steer_clients

log = logging.getLogger(__name__)

STATE_POLL_SECONDS = 0.25
ROUTE_RETRY_SECONDS = 2.0
STORE_RETRY_SECONDS = 1.0


class StateFollower(threading.Thread):
    """Follows the state in the store; ``state_name`` is what policy answers read."""

    def __init__(self, config: Config, store: StateStore) -> None:
        super().__init__(name="state-follower", daemon=True)
        self.config = config
        self.store = store
        self.host = config.host_name
        self.state: State | None = None
        self.store_error: str | None = None
        self._stopping = threading.Event()
        self._route_retry_at = 0.0
        self._recorded: tuple[str, float, str] | None = None

    def state_name(self) -> StateName:
        """The last state read; ``normal`` until one was (policy answers are then DUNNO)."""
        return self.state.name if self.state is not None else "normal"

    def seen(self, state: State) -> None:
        """A state this process has just committed (the monitor's own transition): answer by it
        at once, before the routing changes, rather than at the next poll."""
        self.state = state

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            self.follow_once()
            self._wait()
        log.debug("event=state_follower_stopped")

    def follow_once(self) -> None:
        """Read the state; route this gateway by it. Never raises for a store problem."""
        try:
            state = current_state(self.store)
        except StateStoreError as exc:
            if self.store_error is None:
                log.warning("event=store_unreachable error=%r action=keep_last_routing"
                            " routing=%s", str(exc), installed_route(self.config))
            self.store_error = str(exc)
            return
        if self.store_error is not None:
            log.info("event=store_reachable state=%s", state.name)
            self.store_error = None
        if self.state is not None and self.state.since != state.since:
            log.info("event=state_seen state=%s since=%.3f seen_after=%.3fs", state.name,
                     state.since, time.time() - state.since)
        self.state = state
        if self.config.routes_mail:
            self._route(state)

    def _route(self, state: State) -> None:
        route = ROUTE_IN_STATE[state.name]
        error = ""
        if time.monotonic() >= self._route_retry_at:
            try:
                if ensure_route(self.config, route):
                    steer_clients(self.config, route)  # this gateway's client proxy too
                    log.info("event=route_switched state=%s route=%s after_transition=%.3fs",
                             state.name, route, time.time() - state.since)
            except CommandError as exc:
                error = str(exc)
                self._route_retry_at = time.monotonic() + ROUTE_RETRY_SECONDS
                log.error("event=route_switch_failed state=%s route=%s error=%r"
                          " action=retry_in_%.0fs", state.name, route, error,
                          ROUTE_RETRY_SECONDS)
        installed = installed_route(self.config) or "none"
        if error == "" and installed != route:
            return  # waiting for a retry: the last record (with its error) stands
        key = (installed, state.since, error)
        if key != self._recorded:
            try:
                record_route(self.store, GatewayRoute(self.host, installed, time.time(),
                                                      state.since, error))
            except StateStoreError:
                return  # the next round records it
            self._recorded = key

    def _wait(self) -> None:
        if self.store_error is not None:
            self._stopping.wait(STORE_RETRY_SECONDS)
            return
        try:
            self.store.wait_for_change(STATE_POLL_SECONDS)
        except StateStoreError:
            self._stopping.wait(STATE_POLL_SECONDS)
