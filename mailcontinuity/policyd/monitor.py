"""The health monitor: probe the primary, and fail over or back exactly as the design says.

- ``failover`` after N consecutive failed rounds spanning at least T seconds, from ``normal`` or
  ``failback`` alike (a new outage while the merge is pending is still an outage).
- ``failback`` after M consecutive healthy rounds *and* an unbroken healthy stretch of at least
  the hold-down, if ``[failback] mode`` allows it now. A primary that flaps never stays healthy
  for the hold-down, so it never pulls mail back and forth.
- The monitor never reverses its own decision within the hold-down, and never undoes an
  operator's forced failover: that stays until the operator runs ``failback``.

``Detector`` is the pure decision; ``HealthMonitor`` runs the probes, writes them to the state
store and calls ``change_state`` (the one path that moves state, routing and audit together).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from mailcontinuity.commands import CommandError
from mailcontinuity.config import Config, FailbackSection, HealthSection
from mailcontinuity.policyd.health import ProbeResult, probe_primary
from mailcontinuity.policyd.queries import beat, prune_probes, record_probes
from mailcontinuity.routing import switch_route
from mailcontinuity.state import State, StateName, StateStore, StateStoreError
from mailcontinuity.tls import TLSPolicy
from mailcontinuity.transitions import ROUTE_IN_STATE, change_state

log = logging.getLogger(__name__)

MONITOR_ACTOR = "health-monitor"
PRUNE_EVERY_ROUNDS = 500


@dataclass(frozen=True)
class Decision:
    """A transition the monitor wants; ``expect`` guards against a concurrent operator."""

    to_state: StateName
    cause: str
    expect: tuple[StateName, ...]


class Detector:
    """The thresholds applied to a stream of probe rounds (no I/O, no clock of its own)."""

    def __init__(self, health: HealthSection, failback: FailbackSection) -> None:
        self.health = health
        self.failback = failback
        self.failed = 0
        self.failing_since: float | None = None
        self.succeeded = 0
        self.healthy_since: float | None = None
        self._announced_ready = False

    def observe(self, at: float, healthy: bool, state: State, reasons: str = "") -> Decision | None:
        """Count this round, then say whether the state should change now."""
        if healthy:
            self.failed, self.failing_since = 0, None
            self.succeeded += 1
            self.healthy_since = self.healthy_since if self.healthy_since is not None else at
        else:
            self.succeeded, self.healthy_since = 0, None
            self.failed += 1
            self.failing_since = self.failing_since if self.failing_since is not None else at
        health = self.health
        if state.actor == MONITOR_ACTOR and at - state.since < health.hold_down_seconds:
            return None  # never reverse our own decision within the hold-down
        if state.name in ("normal", "failback"):
            self._announced_ready = False
            if healthy or self.failed < health.failures:
                return None
            span = at - (at if self.failing_since is None else self.failing_since)
            if span < health.failure_window_seconds:
                return None
            return Decision("failover", f"primary failed {self.failed} probe rounds over"
                            f" {span:.1f}s: {reasons}", ("normal", "failback"))
        if not healthy or state.actor != MONITOR_ACTOR or self.succeeded < health.successes:
            return None
        stretch = at - (at if self.healthy_since is None else self.healthy_since)
        if stretch < health.hold_down_seconds or not self._failback_allowed(at):
            return None
        return Decision("failback", f"primary healthy for {self.succeeded} probe rounds over"
                        f" {stretch:.1f}s", ("failover",))

    def _failback_allowed(self, at: float) -> bool:
        mode = self.failback.mode
        allowed = mode == "auto" or (
            mode == "window" and self.failback.window is not None
            and in_window(self.failback.window, at)
        )
        if not allowed and not self._announced_ready:
            log.warning("event=failback_ready mode=%s window=%s action=wait hint=%s", mode,
                        self.failback.window, "run 'mailcontinuity failback' to return mail to"
                        " the primary now")
            self._announced_ready = True
        return allowed


def in_window(window: str, at: float) -> bool:
    """Whether local time ``at`` falls in ``HH:MM-HH:MM`` (which may span midnight)."""
    start, end = (int(hh) * 60 + int(mm)
                  for hh, mm in (part.split(":") for part in window.split("-")))
    now = time.localtime(at)
    minute = now.tm_hour * 60 + now.tm_min
    return start <= minute < end if start <= end else minute >= start or minute < end


class HealthMonitor:
    """Probes every ``interval_seconds`` and changes the state when the Detector says so."""

    def __init__(self, config: Config, store: StateStore) -> None:
        self.config = config
        self.store = store
        self.primary_tls = TLSPolicy.of(config, "primary")
        self.detector = Detector(config.health, config.failback)
        self.state: State = store.current_state()
        self.started_at = time.time()
        self.rounds = 0
        self._route_pending = False

    @property
    def stale_after(self) -> float:
        """How long without a heartbeat before ``status`` calls policyd down."""
        health = self.config.health
        return max(5.0, 3 * (health.interval_seconds + health.timeout_seconds))

    async def run(self, stopping: asyncio.Event) -> None:
        interval = self.config.health.interval_seconds
        while not stopping.is_set():
            started = time.monotonic()
            results = await probe_primary(self.config, self.primary_tls)
            try:
                await asyncio.to_thread(self.after_round, results)
            except Exception:  # noqa: BLE001 - the monitor outlives a bad round, and says so
                log.exception("event=monitor_round_failed")
            try:
                async with asyncio.timeout(max(0.0, started + interval - time.monotonic())):
                    await stopping.wait()
            except TimeoutError:
                pass

    def after_round(self, results: list[ProbeResult]) -> None:
        """Record a round and act on it; runs in a worker thread, the store's only user."""
        now = time.time()
        record_probes(self.store, results)
        beat(self.store, self.started_at, now, self.stale_after)
        failures = [f"{r.probe} {r.target}: {r.error}" for r in results if not r.ok]
        if failures:  # the first failure of a run is news; the rest are only repetitions
            level = logging.WARNING if self.detector.failed == 0 else logging.DEBUG
            log.log(level, "event=probe_failed failures=%s", "; ".join(failures))
        elif self.detector.failed:
            log.warning("event=primary_answering after_failed_rounds=%d", self.detector.failed)
        state = self.store.current_state()
        decision = self.detector.observe(now, not failures, state, "; ".join(failures))
        if decision is not None:
            self._apply(decision)
            state = self.store.current_state()
        elif self._route_pending:
            self._retry_route(state)
        self.state = state
        self.rounds += 1
        if self.rounds % PRUNE_EVERY_ROUNDS == 0:
            prune_probes(self.store, now - self.config.health.probe_retention_hours * 3600)

    def _apply(self, decision: Decision) -> None:
        try:
            change_state(self.config, self.store, decision.to_state, decision.cause,
                         MONITOR_ACTOR, expect=decision.expect)
        except (CommandError, StateStoreError) as exc:
            self._route_pending = True
            log.error("event=route_switch_failed to=%s error=%r action=retry_next_round",
                      decision.to_state, str(exc))

    def _retry_route(self, state: State) -> None:
        try:
            switch_route(self.config, ROUTE_IN_STATE[state.name])
        except CommandError as exc:
            log.error("event=route_switch_failed state=%s error=%r action=retry_next_round",
                      state.name, str(exc))
            return
        self._route_pending = False
        log.info("event=route_switched state=%s after=retry", state.name)
