"""When the continuity state should change: the thresholds applied to a stream of probe rounds.

- ``failover`` after N consecutive failed rounds spanning at least T seconds, from ``normal`` or
  ``failback`` alike (a new outage while the merge is pending is still an outage).
- ``failback`` after M consecutive healthy rounds *and* an unbroken healthy stretch of at least
  the hold-down, if ``[failback] mode`` allows it now. A primary that flaps never stays healthy
  for the hold-down, so it never pulls mail back and forth.
- The monitor never reverses its own decision within the hold-down, and never undoes an
  operator's forced failover: that stays until the operator runs ``failback``.

Pure: no I/O, and time is passed in, so every rule is tested without servers or clocks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from mailcontinuity.config import FailbackSection, HealthSection
from mailcontinuity.store.gateways import Vote
from mailcontinuity.store.state import State, StateName

log = logging.getLogger(__name__)

MONITOR_ACTOR = "health-monitor"


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

    def vote(self, at: float) -> Vote:
        """What this gateway's own probes say, for the quorum of a site with several gateways
        (``monitor.quorum``): ``down`` once the failover thresholds are met (N failed rounds
        over at least T seconds), ``up`` once the failback ones are (M healthy rounds over at
        least the hold-down), else ``undecided``. Independent of the state: a gateway votes
        on what it sees, and the transition checks the votes against where the state is."""
        health = self.health
        if (self.failed >= health.failures and self.failing_since is not None
                and at - self.failing_since >= health.failure_window_seconds):
            return "down"
        if (self.succeeded >= health.successes and self.healthy_since is not None
                and at - self.healthy_since >= health.hold_down_seconds):
            return "up"
        return "undecided"

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
