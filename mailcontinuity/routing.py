"""Which mail store the gateway delivers protected domains to, as a Postfix transport table.

The table is an indexed ``hash:`` file that mailcontinuity rewrites on each transition. If the
process that writes it dies, the last routing simply stays in force and Postfix keeps delivering:
routing fails open (see docs/routing.md for the measured comparison with the alternatives).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from mailcontinuity.config import Config, DeliveryEndpoint
from mailcontinuity.postfix import reload_postfix, run_postfix, write_indexed_map

Route = Literal["primary", "standby"]


def nexthop(config: Config, route: Route) -> DeliveryEndpoint:
    """The store that receives protected mail on this route."""
    if route == "primary":
        return config.primary.delivery
    return DeliveryEndpoint("lmtp", config.standby.lmtp)


def transport_entries(config: Config, route: Route,
                      overrides: Mapping[str, Route] | None = None) -> list[str]:
    """transport(5) lines sending every protected domain to the route's store.

    ``overrides`` routes single addresses elsewhere (the drill's probe address): Postfix looks up
    the full address before the domain, so production traffic keeps the domain's route.
    """
    lines = [f"{address} {nexthop(config, target).postfix_nexthop}"
             for address, target in sorted((overrides or {}).items())]
    target = nexthop(config, route).postfix_nexthop
    return lines + [f"{domain} {target}" for domain in config.domains.protected]


def write_transport_map(config: Config, route: Route,
                        overrides: Mapping[str, Route] | None = None) -> None:
    """Point the gateway's transport table at ``route`` (the caller reloads Postfix)."""
    header = f"# written by mailcontinuity: protected domains routed to the {route}"
    write_indexed_map(
        config.gateway.postfix_config_dir,
        config.gateway.transport_map,
        [header, *transport_entries(config, route, overrides)],
    )


def switch_route(config: Config, route: Route,
                 overrides: Mapping[str, Route] | None = None) -> None:
    """Route new and already-queued mail for protected domains to ``route`` now.

    ``postfix reload`` makes every process re-read the table at once (without it, trivial-rewrite
    notices the change only after tens of seconds); ``postqueue -f`` retries deferred mail
    immediately, so mail queued for a dead primary moves to the standby too.
    """
    write_transport_map(config, route, overrides)
    reload_postfix(config.gateway.postfix_config_dir)
    run_postfix(config.gateway.postfix_config_dir, "postqueue", "-f")
