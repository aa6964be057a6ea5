"""Which mail store the gateway delivers protected domains to, as a Postfix transport table.

The table is an indexed ``hash:`` file that mailcontinuity rewrites on each transition. If the
process that writes it dies, the last routing simply stays in force and Postfix keeps delivering:
routing fails open (see docs/routing.md for the measured comparison with the alternatives).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Literal

from mailcontinuity.config import Config, ConfigError, DeliveryEndpoint, PeerSection
from mailcontinuity.deploy.aliases import write_outage_alias_map
from mailcontinuity.mail.postfix import (
    PostfixError,
    reload_postfix,
    run_postfix,
    write_indexed_map,
)

log = logging.getLogger(__name__)

Route = Literal["primary", "standby"]
ROUTES: dict[str, Route] = {"primary": "primary", "standby": "standby"}

# The master.cf service that delivers to the standby: Postfix's lmtp client with soft_bounce, so
# that the standby's refusals (an address only the primary knows, a full standby mailbox) keep
# mail queued for the primary instead of bouncing it (see standby_delivery_service).
STANDBY_TRANSPORT = "mailcontinuity-standby"


def nexthop(config: Config, route: Route) -> DeliveryEndpoint:
    """The store that receives protected mail on this route."""
    if route == "primary":
        return config.primary.delivery
    return DeliveryEndpoint("lmtp", config.standby.lmtp)


def transport_value(config: Config, route: Route) -> str:
    """The transport(5) value for the route: the primary's as configured, the standby's through
    ``STANDBY_TRANSPORT``."""
    if route == "primary":
        return config.primary.delivery.postfix_nexthop
    host, port = config.standby.lmtp
    return f"{STANDBY_TRANSPORT}:inet:[{host}]:{port}"


def standby_delivery_service() -> str:
    """The master.cf line of ``STANDBY_TRANSPORT``.

    ``soft_bounce = yes`` for this transport only: the standby is never the last word on an
    address. A ``5xx`` from its LMTP (a user, list or shared mailbox it does not have, mail
    already queued for the primary when the site failed over) becomes a deferral; after
    failback the route is the primary's again and the queued mail goes there. Postfix still
    returns mail it could not deliver within ``maximal_queue_lifetime`` (5 days by default).
    """
    return f"{STANDBY_TRANSPORT} unix - - n - - lmtp -o soft_bounce=yes"


def transport_entries(config: Config, route: Route,
                      overrides: Mapping[str, Route] | None = None) -> list[str]:
    """transport(5) lines sending every protected domain to the route's store.

    ``overrides`` routes single addresses elsewhere (the drill's probe address): Postfix looks up
    the full address before the domain, so production traffic keeps the domain's route.
    """
    lines = [f"{address} {transport_value(config, target)}"
             for address, target in sorted((overrides or {}).items())]
    target = transport_value(config, route)
    return lines + [f"{domain} {target}" for domain in config.domains.protected]


def tls_policy_entries(config: Config) -> list[str]:
    """tls_policy(5) lines for Postfix's own deliveries to the two stores.

    Inbound mail crosses to the standby (and, normally, to the primary) as the gateway's LMTP or
    SMTP client, so it is held to the side's ``tls`` setting like mailcontinuity's own
    connections: ``secure``, the certificate checked against the endpoint's host and, with
    ``tls_ca_file``, against that CA only (``tafile``). A side with ``tls = "none"`` is left to
    Postfix's defaults. A delivery that cannot be verified is deferred, never sent in the clear.
    """
    lines = []
    sides: tuple[tuple[Route, PeerSection], ...] = (("primary", config.primary),
                                                    ("standby", config.standby))
    for route, side in sides:
        if side.tls == "none":
            continue
        host, port = nexthop(config, route).endpoint
        anchor = f" tafile={side.tls_ca_file}" if side.tls_ca_file else ""
        lines.append(f"[{host}]:{port} secure match=nexthop{anchor}")
    return lines


def write_tls_policy_map(config: Config) -> None:
    """Install the TLS policy table (it depends on the configuration only, not on the state)."""
    write_indexed_map(config.gateway.postfix_config_dir, config.gateway.tls_policy_map,
                      ["# written by mailcontinuity: TLS for deliveries to the mail stores",
                       *tls_policy_entries(config)])


ROUTE_HEADER = "# written by mailcontinuity: protected domains routed to the "


def installed_route(config: Config) -> Route | None:
    """The route the gateway's transport table says (its first line), or None if there is no
    table of ours: what this host's Postfix does now, whichever process wrote it."""
    try:
        with config.gateway.transport_map.open(encoding="utf-8") as table:
            first = table.readline().strip()
    except OSError:
        return None
    if not first.startswith(ROUTE_HEADER):
        return None
    return ROUTES.get(first.removeprefix(ROUTE_HEADER))


def write_transport_map(config: Config, route: Route,
                        overrides: Mapping[str, Route] | None = None) -> None:
    """Point the gateway's transport table at ``route`` (the caller reloads Postfix)."""
    header = f"{ROUTE_HEADER}{route}"
    write_indexed_map(
        config.gateway.postfix_config_dir,
        config.gateway.transport_map,
        [header, *transport_entries(config, route, overrides)],
    )


# One switch at a time in a process: policyd's monitor (its own decision) and its follower
# (another host's decision) may both want the same route at the same moment.
_switching = threading.RLock()


def switch_route(config: Config, route: Route,
                 overrides: Mapping[str, Route] | None = None) -> None:
    """Route new and already-queued mail for protected domains to ``route`` now.

    ``postfix reload`` makes every process re-read the table at once (without it, trivial-rewrite
    notices the change only after tens of seconds); ``postqueue -f`` retries deferred mail
    immediately, so mail queued for a dead primary moves to the standby too. The outage alias
    table (``deploy.aliases``) follows the route: expanded by the gateway on the standby's.
    """
    with _switching:
        write_transport_map(config, route, overrides)
        try:
            write_outage_alias_map(config, outage=route == "standby")
        except (ConfigError, PostfixError, OSError) as exc:
            # The route matters more: an alias Postfix does not expand reaches the standby
            # unexpanded, which defers it (soft_bounce) until failback.
            log.error("event=outage_aliases_not_written route=%s error=%r", route, str(exc))
        reload_postfix(config.gateway.postfix_config_dir)
        run_postfix(config.gateway.postfix_config_dir, "postqueue", "-f")


def ensure_route(config: Config, route: Route) -> bool:
    """Switch to ``route`` unless the transport table has it already; True if it switched."""
    with _switching:
        if installed_route(config) == route:
            return False
        switch_route(config, route)
        return True
