"""Who may send as which address: the one rule for both submissions.

A logged-in user sends as their own address (the address is the login, as Dovecot's passdb
has it) and as the aliases the administrator gives them in ``gateway.sender_aliases`` (a Postfix
``texthash`` table: ``alias  owner-login, owner-login``). Postfix enforces the envelope sender
(``smtpd_sender_login_maps`` with ``reject_sender_login_mismatch``) on the gateway's submission
and on the listener the standby's submission relays through (XCLIENT carries the user's login:
Dovecot's submission has no such check of its own); the journal milter enforces the From:
header, which Postfix does not look at, with the same rule (``SenderOwners``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path

from mailcontinuity.config import Config
from mailcontinuity.deploy.aliases import read_address_table


def sender_identity_lines(config: Config) -> list[str]:
    """The regexp table: an address of a protected domain is owned by the login of that name.

    It must be a file: Postfix expands ``${1}`` in an inline table as one of its own macros."""
    lines = ["# written by mailcontinuity: each address is owned by the login of the same name"]
    for domain in config.domains.protected:
        lines.append(f"/^(.+@{re.escape(domain.lower())})$/\t${{1}}")
    return lines


def write_sender_login_map(config: Config) -> None:
    path = config.gateway.sender_login_map
    path.write_text("\n".join(sender_identity_lines(config)) + "\n")
    path.chmod(0o644)


def sender_login_maps(config: Config) -> str:
    """The ``smtpd_sender_login_maps`` value: the administrator's aliases first (first match
    wins), then the identity rule."""
    maps = [f"regexp:{config.gateway.sender_login_map}"]
    if config.gateway.sender_aliases is not None:
        maps.insert(0, f"texthash:{config.gateway.sender_aliases}")
    return ",".join(maps)  # no space: it goes into a master.cf -o option


def sender_restriction_options(config: Config) -> dict[str, str]:
    """``-o`` options that make a submission listener refuse a sender the login does not own."""
    return {"smtpd_sender_login_maps": sender_login_maps(config),
            "smtpd_sender_restrictions": "reject_sender_login_mismatch"}


@dataclass(frozen=True)
class SenderOwners:
    """The same rule in Python, for the From: header (the milter)."""

    protected_domains: frozenset[str]
    aliases: dict[str, frozenset[str]]

    @classmethod
    def of(cls, config: Config) -> SenderOwners:
        aliases: dict[str, frozenset[str]] = {}
        path = config.gateway.sender_aliases
        if path is not None:
            aliases = read_aliases(path)
        return cls(frozenset(d.lower() for d in config.domains.protected), aliases)

    def owns(self, login: str, address: str) -> bool:
        address, login = address.lower(), login.lower()
        if address in self.aliases:  # as in Postfix: the first table that answers decides
            return login in self.aliases[address]
        return address == login and address.rpartition("@")[2] in self.protected_domains

    def foreign_from(self, login: str, from_values: list[str]) -> list[str]:
        """The From: addresses ``login`` does not own (an unparsable one counts as foreign)."""
        foreign = []
        for _name, address in getaddresses(from_values):
            if not address or not self.owns(login, address):
                foreign.append(address or "(unparsable)")
        return foreign


def read_aliases(path: Path) -> dict[str, frozenset[str]]:
    """A Postfix ``texthash`` table of ``alias owner, owner`` lines (# comments, blank lines)."""
    table = read_address_table(path, "gateway.sender_aliases", "alias@domain owner-login")
    return {alias: frozenset(owners) for alias, owners in table.items()}
