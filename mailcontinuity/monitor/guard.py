"""No failover to a standby that cannot take over.

Failing over routes the protected domains to the standby. If the standby fails its own checks
(its LMTP does not take mail, its IMAP does not serve it), that would only move the mail from
Postfix's queue for the primary to Postfix's queue for the standby, bound there and invisible to
users either way, and start an outage record nobody can work in. So the monitor holds the
failover: mail waits in Postfix's queue for the primary, as it would without us, ``status`` says
both are down, and as soon as the standby answers again (the primary still down) the failover
proceeds. Each hold is audited when it begins and when it ends, for the incident report.
"""

from __future__ import annotations

import logging

from mailcontinuity.monitor.detector import MONITOR_ACTOR, Decision
from mailcontinuity.monitor.watch import standby_ready
from mailcontinuity.store.audit import record_command
from mailcontinuity.store.checks import Check
from mailcontinuity.store.db import StateStore

log = logging.getLogger(__name__)

HELD = "failover_held"
HOLD_ENDED = "failover_hold_ended"


class FailoverGuard:
    """Reviews the Detector's decisions against the standby's latest checks."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.held_since: float | None = None

    def review(self, decision: Decision | None, checks: list[Check] | None,
               now: float) -> Decision | None:
        """The decision to apply now: ``decision``, or None while a failover is held."""
        if decision is None or decision.to_state != "failover" or checks is None:
            if self.held_since is not None:
                self._end(now, "the primary answers again: no failover needed")
            return decision
        ready, why = standby_ready(checks)
        if ready:
            if self.held_since is not None:
                self._end(now, "the standby answers again: failing over")
            return decision
        if self.held_since is None:
            self.held_since = now
            log.error("event=failover_held reason=%r primary=%r action=%r", why, decision.cause,
                      "mail waits in Postfix's queue for the primary; bring back the standby"
                      " (failover then proceeds) or the primary")
            record_command(self.store, "failover held: the standby fails its checks too",
                           MONITOR_ACTOR, {"standby": why, "primary": decision.cause},
                           event=HELD)
        return None

    def _end(self, now: float, outcome: str) -> None:
        assert self.held_since is not None
        held = now - self.held_since
        self.held_since = None
        log.warning("event=failover_hold_ended held_seconds=%.1f outcome=%r", held, outcome)
        record_command(self.store, outcome, MONITOR_ACTOR, {"held_seconds": round(held, 1)},
                       event=HOLD_ENDED)
