"""The nftables rules that bound trust by address to the peers that need it.

LMTP has no client authentication and XCLIENT trusts its client's word, so who may connect is
the whole of their security: the standby's journal LMTP listener takes connections from the
gateways only (``standby.journal_clients``) and, on the standby host itself, from the milter's
and Postfix's users only; the gateway's standby relay listener (XCLIENT) takes them from the
standby only and, locally, from the standby's mail user (Dovecot's submission runs as it); the
monitor's probe source address (``health.probe_source_address``) is the monitor's alone, so
that no local user can spoil its login penalty. Everything else is left as it was (policy
accept): these rules only take away, in a table of their own (``inet mailcontinuity``).
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from mailcontinuity.config import Config, ConfigError

TABLE = "inet mailcontinuity"
# The daemons' user, as the Ansible role creates it (mailcontinuity_user).
DAEMON_USER = "mailcontinuity"
Host = Literal["standby", "gateway"]


def nft_ruleset(config: Config, host: Host) -> str | None:
    """The ruleset for ``host`` (``nft -f`` it; it replaces an earlier one), or None when
    the configuration gives that host nothing to restrict."""
    inputs: list[str] = []
    outputs: list[str] = []
    if host == "standby":
        journal = config.milter.lmtp
        if journal is not None and config.standby.journal_clients:
            family = _family(journal.host)
            inputs.append(f"# the journal LMTP listener: the gateways only\n    {family} daddr"
                          f" {journal.host} tcp dport {journal.port} {family} saddr !="
                          f" {_set(config.standby.journal_clients)} drop")
            lmtp = config.standby.lmtp
            inputs.append(f"# the normal LMTP listener (failover deliveries, recipient checks):"
                          f" the gateways only\n    {_family(lmtp.host)} daddr {lmtp.host} tcp"
                          f" dport {lmtp.port} {_family(lmtp.host)} saddr !="
                          f" {_set(config.standby.journal_clients)} drop")
            outputs.append(f"# ...and on this host the milter's and Postfix's users only\n"
                           f"    {family} daddr {journal.host} tcp dport {journal.port} meta"
                           f' skuid != {{ "{DAEMON_USER}", "postfix" }}'
                           " reject with tcp reset")
    else:
        relay = config.gateway.standby_relay
        if relay is not None:
            standby = config.standby.lmtp.host
            family = _family(relay.host)
            inputs.append(f"# the standby relay (XCLIENT): the standby only\n    tcp dport"
                          f" {relay.port} {family} daddr {relay.host} {family} saddr !="
                          f" {standby} drop")
            outputs.append(f"# ...and on this host the standby's mail user only\n    {family}"
                           f" daddr {relay.host} tcp dport {relay.port} meta skuid !="
                           f' "{config.milter.mail_owner}" reject with tcp reset')
        source = config.health.probe_source_address
        if source is not None:
            outputs.append(f"# the monitor's probe source address: the monitor's alone\n"
                           f"    {_family(source)} saddr {source} meta skuid !="
                           f' "{DAEMON_USER}" reject')
    if not inputs and not outputs:
        return None
    chains = "".join(
        f"  chain {name} {{\n    type filter hook {name} priority filter; policy accept;\n"
        + "".join(f"    {rule}\n" for rule in rules) + "  }\n"
        for name, rules in (("input", inputs), ("output", outputs)) if rules)
    return (f"# written by mailcontinuity for the {host}: see docs/security.md\n"
            f"table {TABLE} {{}}\nflush table {TABLE}\ntable {TABLE} {{\n{chains}}}\n")


def _family(address: str) -> str:
    try:
        return "ip6" if ipaddress.ip_address(address).version == 6 else "ip"
    except ValueError:
        raise ConfigError(f"{address!r}: the firewall rules (check-config --json 'nftables')"
                          " need IP addresses, not host names; write the address") from None


def _set(addresses: list[str]) -> str:
    return "{ " + ", ".join(addresses) + " }"
