"""How many gateways must agree before the health monitor changes the state.

With one gateway its own Detector decides. With several (``[cluster] gateways``), each gateway's
policyd votes every round on what its own probes see (``Detector.vote``: ``down``, ``up`` or
``undecided``) and a gateway whose Detector wants a transition asks the store: the transition
happens only if enough *fresh* votes agree (``[cluster] quorum``: a majority of the gateways that
reported within ``report_rounds`` probe rounds, and at least two, or a fixed number). The count
is taken inside the transition's own write transaction, so it cannot change between the count
and the state change, and however many gateways race, the compare-and-set lets exactly one
transition through.

What follows: one gateway's network glitch towards the primary does not fail the site over (the
others vote ``undecided``); a gateway cut off from the store cannot count votes nor move the
state, so it never acts alone (its routing stays as it was: fail-open); a gateway that has
stopped reporting (its host is down) no longer counts towards the majority, so the survivors can
still act, as long as two of them agree (one alone never does: on a site of two gateways with
one of them down, failing over is the operator's ``failover``). ``tally`` is pure and tested
without servers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mailcontinuity.config import ClusterSection, Config
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.gateways import GatewayVote, Vote, votes
from mailcontinuity.store.state import State


@dataclass(frozen=True)
class Tally:
    """The votes for one transition: who reported lately, who agrees, how many must."""

    want: Vote
    needed: int
    fresh: tuple[str, ...]
    agreeing: tuple[str, ...]
    silent: tuple[str, ...]
    """Gateways of the configuration without a fresh vote (stopped, cut off, or lagging)."""

    @property
    def met(self) -> bool:
        return len(self.agreeing) >= self.needed

    def as_detail(self) -> dict[str, Any]:
        """What the audit record keeps of it."""
        return {"quorum": {"want": self.want, "needed": self.needed, "agreeing":
                           list(self.agreeing), "fresh": list(self.fresh),
                           "silent": list(self.silent)}}

    def describe(self) -> str:
        return (f"{len(self.agreeing)} of {len(self.fresh)} reporting gateways see the primary"
                f" {self.want} ({', '.join(self.agreeing) or 'none'}), {self.needed} needed")


def needed_votes(cluster: ClusterSection, fresh: int) -> int:
    """``majority``: more than half of the gateways reporting now, and never fewer than two
    on a site that lists two or more: a gateway whose peers are silent (cut off from the store,
    just started, their hosts down) never acts alone. A fixed number is taken as given (an
    administrator who writes ``quorum = 1`` chose to let any gateway decide)."""
    if cluster.quorum == "majority":
        return max(fresh // 2 + 1, min(2, len(cluster.gateways)))
    return cluster.quorum


def fresh_seconds(config: Config, cluster: ClusterSection) -> float:
    """How old a vote may be and still count: ``report_rounds`` rounds, each at most the
    interval plus a probe's timeout long."""
    health = config.health
    return cluster.report_rounds * (health.interval_seconds + health.timeout_seconds)


def tally(cluster: ClusterSection, recorded: list[GatewayVote], want: Vote, now: float,
          max_age: float) -> Tally:
    """Count the fresh votes of the configured gateways for ``want``."""
    fresh = [vote for vote in recorded
             if vote.host in cluster.gateways and now - vote.at <= max_age]
    names = tuple(sorted(vote.host for vote in fresh))
    return Tally(
        want=want,
        needed=needed_votes(cluster, len(fresh)),
        fresh=names,
        agreeing=tuple(sorted(vote.host for vote in fresh if vote.vote == want)),
        silent=tuple(sorted(set(cluster.gateways) - set(names))),
    )


class QuorumGuard:
    """The ``guard`` of a monitor's transition on a site with several gateways; keeps the last
    count so the monitor can say why it did not act."""

    def __init__(self, config: Config, cluster: ClusterSection, want: Vote) -> None:
        self.config = config
        self.cluster = cluster
        self.want = want
        self.last: Tally | None = None

    def __call__(self, store: StateStore, current: State) -> dict[str, Any] | None:
        count = tally(self.cluster, votes(store), self.want, time.time(),
                      fresh_seconds(self.config, self.cluster))
        self.last = count
        return count.as_detail() if count.met else None
