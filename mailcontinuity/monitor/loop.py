"""The health monitor: probe the primary each round, record it, and act on the Detector.

``HealthMonitor`` runs the probes, writes them, its vote and its heartbeat to the state store,
and calls ``change_state`` (the one path that moves state, routing and audit together) when the
Detector (``monitor.detector``) says the state should change. The same round checks the other
watched parts (``monitor.watch``: the standby, the milter, the webmail) and adds the messages
policyd saw accepted for protected domains (``monitor.accepted``), for ``status`` to compare with
the journal. On a site with several gateways the change also needs a quorum of the gateways'
votes (``monitor.quorum``), counted inside the transition. If the store cannot be reached the
monitor goes on probing and counting, but decides nothing: the routing stays as it is
(fail-open) until the store answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mailcontinuity.config import Config
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.mail.tools import CommandError
from mailcontinuity.monitor.accepted import AcceptedMessages
from mailcontinuity.monitor.detector import MONITOR_ACTOR, Decision, Detector
from mailcontinuity.monitor.guard import FailoverGuard
from mailcontinuity.monitor.probes import LoginProbe, probe_primary
from mailcontinuity.monitor.quorum import QuorumGuard
from mailcontinuity.monitor.watch import check_watched_parts
from mailcontinuity.store.accepted import add_accepted, prune_accepted
from mailcontinuity.store.checks import Check, record_checks
from mailcontinuity.store.db import StateStore, StateStoreError
from mailcontinuity.store.gateways import GatewayVote, record_vote
from mailcontinuity.store.heartbeats import policyd_beat
from mailcontinuity.store.probes import ProbeResult, prune_probes, record_probes
from mailcontinuity.store.state import State, StateName, current_state
from mailcontinuity.transitions import ROUTE_IN_STATE, apply_route, change_state, hook_queue

log = logging.getLogger(__name__)

PRUNE_EVERY_ROUNDS = 500
# What the Detector counts against before the store has ever answered: nothing is decided then.
UNKNOWN_STATE = State("normal", 0.0, "state store not read yet", "")


class HealthMonitor:
    """Probes every ``interval_seconds`` and changes the state when the Detector (and, with
    several gateways, the quorum) says so."""

    def __init__(self, config: Config, store: StateStore,
                 accepted: AcceptedMessages | None = None,
                 recorded: Callable[[State], None] | None = None) -> None:
        """``recorded`` is told each state this monitor commits, before it routes (policyd's
        ``StateFollower.seen``)."""
        self.config = config
        self.store = store
        self.host = config.host_name
        self.primary_tls = TLSPolicy.of(config, "primary")
        self.standby_tls = TLSPolicy.of(config, "standby")
        # The probe account's LOGIN, waited for across rounds: slow to log in is not down.
        self.login_probe = LoginProbe(config, self.primary_tls)
        self.accepted = accepted
        self.recorded = recorded
        self.detector = Detector(config.health, config.failback)
        self.guard = FailoverGuard(store)
        # Hooks run in a thread of their own: a slow one never stalls probes or heartbeats.
        self.hooks = hook_queue(config)
        # Read at the first round: the daemon starts (and mail flows) while the store is away.
        self.state: State | None = None
        self.started_at = time.time()
        self.rounds = 0
        self.store_error: str | None = None
        self._route_pending = False
        cluster = config.cluster
        self.guards: dict[StateName, QuorumGuard] = {} if cluster is None else {
            "failover": QuorumGuard(config, cluster, "down"),
            "failback": QuorumGuard(config, cluster, "up"),
        }
        self._quorum_waiting: StateName | None = None

    @property
    def stale_after(self) -> float:
        """How long without a heartbeat before ``status`` calls policyd down."""
        health = self.config.health
        return max(5.0, 3 * (health.interval_seconds + health.timeout_seconds))

    async def run(self, stopping: asyncio.Event) -> None:
        interval = self.config.health.interval_seconds
        while not stopping.is_set():
            started = time.monotonic()
            results, watched = await asyncio.gather(
                probe_primary(self.config, self.primary_tls, self.login_probe),
                check_watched_parts(self.config, self.standby_tls))
            try:
                await asyncio.to_thread(self.after_round, results, watched)
            except Exception:
                log.exception("event=monitor_round_failed")
            try:
                async with asyncio.timeout(max(0.0, started + interval - time.monotonic())):
                    await stopping.wait()
            except TimeoutError:
                pass
        self.login_probe.close()

    def after_round(self, results: list[ProbeResult], watched: list[Check] | None = None) -> None:
        """Record a round and act on it; runs in a worker thread, the store's only user."""
        now = time.time()
        failures = [f"{r.probe} {r.target}: {r.error}" for r in results if not r.ok]
        if failures:  # the first failure of a run is news; the rest are only repetitions
            level = logging.WARNING if self.detector.failed == 0 else logging.DEBUG
            log.log(level, "event=probe_failed failures=%s", "; ".join(failures))
        elif self.detector.failed:
            log.warning("event=primary_answering after_failed_rounds=%d", self.detector.failed)
        try:
            state = current_state(self.store)
        except StateStoreError as exc:
            self._store_unreachable(exc)
            # Keep counting, so that the rounds seen while the store was away still count
            # once it is back; but decide nothing without it.
            self.detector.observe(now, not failures, self.state or UNKNOWN_STATE,
                                  "; ".join(failures))
            return
        decision = self.detector.observe(now, not failures, state, "; ".join(failures))
        try:
            self._record(now, results, watched or [], not failures, "; ".join(failures))
            decision = self.guard.review(decision, watched, now)
        except StateStoreError as exc:
            self._store_unreachable(exc)
            return
        if self.store_error is not None:
            log.info("event=store_reachable state=%s", state.name)
            self.store_error = None
        if decision is not None:
            self._apply(decision)
            state = current_state(self.store)
        else:
            self._quorum_waiting = None
            if self._route_pending:
                self._retry_route(state)
        self.state = state
        self.rounds += 1
        if self.rounds % PRUNE_EVERY_ROUNDS == 0:
            prune_probes(self.store, now - self.config.health.probe_retention_hours * 3600)
            prune_accepted(self.store, now - max(
                self.config.health.probe_retention_hours * 3600,
                2 * self.config.watch.journal_pace_seconds))

    def _record(self, now: float, results: list[ProbeResult], watched: list[Check],
                healthy: bool, reasons: str) -> None:
        """This round's probes, checks and vote in one transaction, then the heartbeat."""
        with self.store.transaction():
            record_probes(self.store, self.host, results)
            since = self.detector.healthy_since if healthy else self.detector.failing_since
            record_vote(self.store, GatewayVote(self.host, now, self.detector.vote(now),
                                                healthy, since, reasons))
        record_checks(self.store, self.host, watched)
        if self.accepted is not None:
            add_accepted(self.store, now, self.accepted.take())
        policyd_beat(self.store, self.host, self.started_at, now, self.stale_after)

    def _store_unreachable(self, exc: StateStoreError) -> None:
        if self.store_error is None:
            log.warning("event=store_unreachable error=%r action=no_decisions_keep_routing",
                        str(exc))
        self.store_error = str(exc)

    def _apply(self, decision: Decision) -> None:
        # What the monitor knew, audited with the transition (the incident report's timeline).
        detector = self.detector
        detail = ({"first_failed_probe": detector.failing_since, "failed_rounds": detector.failed}
                  if decision.to_state == "failover" else
                  {"healthy_since": detector.healthy_since, "healthy_rounds": detector.succeeded})
        guard = self.guards.get(decision.to_state)
        if guard is not None:
            guard.last = None
        try:
            changed = change_state(self.config, self.store, decision.to_state, decision.cause,
                                   MONITOR_ACTOR, expect=decision.expect, hooks=self.hooks,
                                   detail=detail, guard=guard, recorded=self.recorded)
        except (CommandError, StateStoreError) as exc:
            self._route_pending = True
            log.error("event=route_switch_failed to=%s error=%r action=retry_next_round",
                      decision.to_state, str(exc))
            return
        if changed:
            self._quorum_waiting = None
            if guard is not None and guard.last is not None:
                log.info("event=quorum_reached to=%s %s", decision.to_state,
                            guard.last.describe())
        elif guard is not None and guard.last is not None and not guard.last.met:
            # Once per wait: every round repeats it until the others agree (or never do).
            level = logging.INFO if self._quorum_waiting != decision.to_state else logging.DEBUG
            log.log(level, "event=quorum_not_reached to=%s %s action=wait", decision.to_state,
                    guard.last.describe())
            self._quorum_waiting = decision.to_state

    def close(self) -> None:
        """Give hooks still queued or running up to their timeout, then stop them."""
        self.hooks.close(self.config.hooks_timeout_seconds + 5)

    def _retry_route(self, state: State) -> None:
        if not self.config.routes_mail:
            self._route_pending = False
            return
        try:
            apply_route(self.config, ROUTE_IN_STATE[state.name])
        except CommandError as exc:
            log.error("event=route_switch_failed state=%s error=%r action=retry_next_round",
                      state.name, str(exc))
            return
        self._route_pending = False
        log.info("event=route_switched state=%s after=retry", state.name)
