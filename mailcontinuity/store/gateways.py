"""What each gateway tells the others through the store: its vote on the primary's health, and
the route its own Postfix has.

A site with several MX gateways runs policyd on each. Every probe round a gateway records its
vote: ``down`` once its own probes have failed long enough to fail over (the thresholds of
``[health]``), ``up`` once they have succeeded long enough to fail back, else ``undecided``. A
transition needs a quorum of fresh votes (``monitor.quorum``), counted in the transition's own
write transaction. After applying a state's routing, a gateway records which route its Postfix
has and for which state (``state_since``), so ``status`` on any host shows every gateway's
routing and whether it has caught up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mailcontinuity.store.db import StateStore

Vote = Literal["down", "up", "undecided"]


@dataclass(frozen=True)
class GatewayVote:
    """A gateway's latest vote; ``healthy`` is its last round's result, ``since`` when its
    current run of healthy (or failed) rounds began, ``detail`` the failures' reasons."""

    host: str
    at: float
    vote: Vote
    healthy: bool
    since: float | None
    detail: str


@dataclass(frozen=True)
class GatewayRoute:
    """The route a gateway's Postfix has, since when, for the state that began at
    ``state_since``; ``error`` is why the last attempt to route failed (empty if it did not)."""

    host: str
    route: str
    at: float
    state_since: float
    error: str


def record_vote(store: StateStore, vote: GatewayVote) -> None:
    """The caller holds a transaction (the round's)."""
    store.execute(
        "INSERT INTO gateway_vote (host, at, vote, healthy, since, detail)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET at = excluded.at,"
        " vote = excluded.vote, healthy = excluded.healthy, since = excluded.since,"
        " detail = excluded.detail",
        [vote.host, vote.at, vote.vote, int(vote.healthy), vote.since, vote.detail])


def votes(store: StateStore) -> list[GatewayVote]:
    rows = store.query("SELECT host, at, vote, healthy, since, detail FROM gateway_vote"
                       " ORDER BY host")
    return [GatewayVote(host, at, vote, bool(healthy), since, detail)
            for host, at, vote, healthy, since, detail in rows]


def record_route(store: StateStore, route: GatewayRoute) -> None:
    with store.transaction():
        store.execute(
            "INSERT INTO gateway_route (host, route, at, state_since, error)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET route = excluded.route,"
            " at = excluded.at, state_since = excluded.state_since, error = excluded.error",
            [route.host, route.route, route.at, route.state_since, route.error])


def routes(store: StateStore) -> dict[str, GatewayRoute]:
    rows = store.query("SELECT host, route, at, state_since, error FROM gateway_route")
    return {row[0]: GatewayRoute(*row) for row in rows}
