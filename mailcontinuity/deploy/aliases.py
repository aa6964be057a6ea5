"""Aliases during an outage: the primary's ``virtual(5)`` table, applied by the gateway.

In normal times the primary expands its own aliases (lists, shared addresses, ``postmaster@``):
the gateway passes them through. The standby knows only mailboxes, so during an outage an alias
would be refused. With ``gateway.outage_aliases`` (a copy of the primary's virtual alias table,
the format a Postfix administrator already keeps) the gateway expands those aliases itself while
the route is the standby's: mailcontinuity writes them into ``gateway.outage_alias_map``
(``virtual_alias_maps``) on failover and empties it on failback, so that the primary's own
expansion is never second-guessed in normal times. ``postmaster@`` and ``abuse@`` of every
protected domain reach ``gateway.outage_postmaster`` unless the table names them.

Postfix expands virtual aliases when it receives a message (cleanup), so mail already queued when
the route changes keeps its recipients; the standby's delivery transport defers what it cannot
take (``deploy.routing``), and it reaches the primary after failback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mailcontinuity.config import Config, ConfigError
from mailcontinuity.mail.postfix import write_indexed_map

# The role addresses RFC 5321 (postmaster) and RFC 2142 (abuse) expect in every mail domain.
ROLE_ADDRESSES = ("postmaster", "abuse")


def read_address_table(path: Path, key: str, example: str) -> dict[str, tuple[str, ...]]:
    """A Postfix table source (``postmap``/``texthash`` format): ``address value, value``.

    As ``postmap`` reads it: ``#`` comments and blank lines are skipped, a line starting with
    whitespace continues the previous entry, values are separated by commas or whitespace.
    Addresses are lower-cased (Postfix looks them up that way). ``key`` and ``example`` name the
    config key and the expected line in errors.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}; create it (lines"
                          f" '{example}') or unset the key") from None
    entries: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}")
        else:
            entries.append((number, line.strip()))
    table: dict[str, tuple[str, ...]] = {}
    for number, entry in entries:
        name, *rest_of_line = re.split(r"\s+", entry, maxsplit=1)
        rest = rest_of_line[0] if rest_of_line else ""
        values = tuple(dict.fromkeys(v.lower() for v in re.split(r"[,\s]+", rest) if v))
        if not values:
            raise ConfigError(f"{key}: {path} line {number}: {name!r} has nothing after it;"
                              f" write '{example}'")
        table[name.lower()] = values
    return table


@dataclass(frozen=True)
class OutageAliases:
    """The aliases the gateway expands during an outage: ``covers(address)`` for policyd,
    ``map_lines()`` for Postfix. Both come from the same entries, so they cannot disagree."""

    entries: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, config: Config) -> OutageAliases:
        gateway = config.gateway
        table: dict[str, tuple[str, ...]] = {}
        if gateway.outage_aliases is not None:
            table = read_address_table(gateway.outage_aliases, "gateway.outage_aliases",
                                       "alias@domain target@domain, target@domain")
        if gateway.outage_postmaster is not None:
            for role in ROLE_ADDRESSES:
                for domain in config.domains.protected:
                    table.setdefault(f"{role}@{domain.lower()}",
                                     (gateway.outage_postmaster.lower(),))
        return cls(table)

    def covers(self, address: str) -> bool:
        """Whether Postfix expands ``address`` with this table (exact address, then the
        ``@domain`` catch-all, as virtual(5) looks them up)."""
        address = address.lower()
        return address in self.entries or f"@{address.rpartition('@')[2]}" in self.entries

    def map_lines(self) -> list[str]:
        return [f"{alias}\t{', '.join(targets)}" for alias, targets in self.entries.items()]


def outage_aliases_configured(config: Config) -> bool:
    """Whether the gateway has an outage alias table (``virtual_alias_maps`` names it). Decided
    by the keys, not by reading the file: check-config must work on a host where the copy of
    the primary's table is not there yet."""
    gateway = config.gateway
    return gateway.outage_aliases is not None or gateway.outage_postmaster is not None


def outage_alias_lines(aliases: OutageAliases, outage: bool) -> list[str]:
    """The table's lines: the aliases during an outage, none in normal times."""
    if not outage:
        return ["# written by mailcontinuity: normal times, the primary expands its aliases"]
    return ["# written by mailcontinuity: an outage, the gateway expands the primary's aliases",
            *aliases.map_lines()]


def write_outage_alias_map(config: Config, outage: bool,
                           aliases: OutageAliases | None = None) -> None:
    """Rewrite ``gateway.outage_alias_map`` (the caller reloads Postfix); nothing to do when
    no aliases are configured (main.cf then does not name the table)."""
    if not outage_aliases_configured(config):
        return
    aliases = aliases if aliases is not None else OutageAliases.of(config)
    write_indexed_map(config.gateway.postfix_config_dir, config.gateway.outage_alias_map,
                      outage_alias_lines(aliases, outage))

