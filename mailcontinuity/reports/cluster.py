"""What ``status`` says about a site with several hosts: each gateway's policyd, what it sees of
the primary, how it votes, which route its Postfix has; the quorum; and the problems among them,
each with the next step. Read from the shared store, so every host gives the same answer
(``host`` alone says where it was asked)."""

from __future__ import annotations

import time
from typing import Any

from mailcontinuity.config import ClusterSection, Config
from mailcontinuity.monitor.quorum import Tally, fresh_seconds, needed_votes, tally
from mailcontinuity.reports.problems import policyd_status
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.gateways import GatewayVote, routes, votes
from mailcontinuity.store.heartbeats import policyd_heartbeats
from mailcontinuity.store.state import State
from mailcontinuity.transitions import ROUTE_IN_STATE

# How long a gateway may take to route by a new state before status calls it lagging: the
# follower polls every quarter second; a Postfix reload takes a second or two.
ROUTE_LAG_SECONDS = 10.0


def quorum_health(config: Config, cluster: ClusterSection, recorded: list[GatewayVote],
                  now: float) -> bool | None:
    """The primary's health as the gateways see it together: unknown without fresh reports;
    failing when as many fresh gateways see it fail as a failover would need; else healthy."""
    fresh = [vote for vote in recorded if vote.host in cluster.gateways
             and now - vote.at <= fresh_seconds(config, cluster)]
    if not fresh:
        return None
    failing = sum(1 for vote in fresh if not vote.healthy)
    return failing < needed_votes(cluster, len(fresh))


def cluster_status(config: Config, store: StateStore, state: State,
                   now: float | None = None) -> dict[str, Any]:
    cluster = config.cluster
    assert cluster is not None
    now = time.time() if now is None else now
    beats = policyd_heartbeats(store)
    recorded = votes(store)
    by_host = {vote.host: vote for vote in recorded}
    applied = routes(store)
    max_age = fresh_seconds(config, cluster)
    route = ROUTE_IN_STATE[state.name]
    gateways = []
    for name in cluster.gateways:
        vote = by_host.get(name)
        fresh = vote is not None and now - vote.at <= max_age
        has = applied.get(name)
        gateways.append({
            "name": name,
            "policyd": policyd_status(config, beats.get(name), now),
            "fresh": fresh,
            "reported_at": vote.at if vote else None,
            "sees_primary": (vote.healthy if fresh else None) if vote else None,
            "since": vote.since if vote else None,
            "vote": vote.vote if vote and fresh else None,
            "probe_failures": vote.detail if vote else "",
            "route": has.route if has else None,
            "routed_at": has.at if has else None,
            "route_current": has is not None and has.route == route
            and has.state_since == state.since,
            "route_error": has.error if has else "",
        })
    down = tally(cluster, recorded, "down", now, max_age)
    up = tally(cluster, recorded, "up", now, max_age)
    return {
        "host": cluster.host,
        "standby_host": cluster.standby_host,
        "route": route,
        "gateways": gateways,
        "quorum": {"rule": cluster.quorum, "reporting": list(down.fresh), "needed": down.needed,
                   "down": list(down.agreeing), "up": list(up.agreeing),
                   "silent": list(down.silent)},
        "problems": cluster_problems(cluster, state, gateways, down, now),
    }


def cluster_problems(cluster: ClusterSection, state: State, gateways: list[dict[str, Any]],
                     down: Tally, now: float) -> list[dict[str, Any]]:
    """Each problem as ``{"part", "since", "detail", "action"}`` (the shape of the status
    contract's problem list)."""
    problems = []
    for gateway in gateways:
        name = gateway["name"]
        if not gateway["fresh"]:
            last = gateway["reported_at"]
            when = "never" if last is None else f"for {now - last:.0f}s"
            problems.append({
                "part": "policyd", "since": last,
                "detail": f"{name}'s policyd has not reported {when}"
                          f" ({gateway['policyd']['detail']}): it does not vote, and its Postfix"
                          " does not follow transitions (it keeps its last routing)",
                "action": f"start 'mailcontinuity policyd' on {name}, or restore its path to"
                          " the state store"})
        elif gateway["sees_primary"] is False and not down.met:
            problems.append({
                "part": "primary", "since": gateway["since"],
                "detail": f"{name} cannot reach the primary ({gateway['probe_failures']}) while"
                          f" the other gateways can: no failover ({down.describe()}); mail"
                          f" {name} accepts for the primary waits in its queue, none bounced",
                "action": f"check the network between {name} and the primary; {name}"
                          " delivers its queue as soon as the path is back"})
        if (gateway["fresh"] and not gateway["route_current"]
                and now - state.since > ROUTE_LAG_SECONDS):
            error = f": {gateway['route_error']}" if gateway["route_error"] else ""
            problems.append({
                "part": "routing", "since": state.since,
                "detail": f"{name} routes protected mail to the {gateway['route'] or 'unknown'}"
                          f" while the state is {state.name}{error}",
                "action": f"check Postfix and policyd's log on {name}"
                          " (event=route_switch_failed)"})
    if len(down.fresh) < down.needed:
        problems.append({
            "part": "quorum", "since": None,
            "detail": f"only {len(down.fresh)} gateway(s) report and {down.needed} must agree"
                      f" (quorum {cluster.quorum}): the monitor cannot fail over nor back"
                      " ('mailcontinuity failover' by an operator still can)",
            "action": "start policyd on the silent gateways"
                      f" ({', '.join(down.silent) or 'none'}) or lower [cluster] quorum"})
    return problems


def render_cluster(cluster: dict[str, Any]) -> list[str]:
    """Lines for the human-readable status."""
    if "gateways" not in cluster:  # the store did not answer: status says so on its own
        return []
    quorum = cluster["quorum"]
    lines = [f"cluster:  this host is {cluster['host']}; merge on {cluster['standby_host']};"
             f" quorum {quorum['rule']}: {quorum['needed']} of"
             f" {len(quorum['reporting'])} reporting gateway(s)"]
    for gateway in cluster["gateways"]:
        daemon = gateway["policyd"]
        sees = {None: "unknown", True: "healthy", False: "FAILING"}[gateway["sees_primary"]]
        route = gateway["route"] or "unknown"
        lag = "" if gateway["route_current"] else " (not yet for this state)"
        lines.append(f"  {gateway['name']}: policyd {daemon['detail']}, sees the primary {sees},"
                     f" votes {gateway['vote'] or '-'}, routes to the {route}{lag}")
    return lines  # the problems are in the verdict at the top
