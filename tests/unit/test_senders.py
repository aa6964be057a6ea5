"""The sender rule (deploy.senders): the same answer for Postfix's tables and the milter."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcontinuity.config import ConfigError
from mailcontinuity.deploy.senders import SenderOwners, read_aliases

OWNERS = SenderOwners(frozenset({"example.test"}),
                      {"sales@example.test": frozenset({"alice@example.test"})})


def test_a_user_owns_their_address_in_any_case() -> None:
    assert OWNERS.owns("alice@example.test", "Alice@Example.TEST")
    assert not OWNERS.owns("alice@example.test", "bob@example.test")
    assert not OWNERS.owns("alice@elsewhere.test", "alice@elsewhere.test")  # not protected


def test_an_alias_belongs_to_its_owners_only() -> None:
    assert OWNERS.owns("alice@example.test", "sales@example.test")
    assert not OWNERS.owns("bob@example.test", "sales@example.test")


def test_from_headers_name_the_foreign_addresses() -> None:
    assert OWNERS.foreign_from("alice@example.test", [' "Sales" <sales@example.test>']) == []
    assert OWNERS.foreign_from("alice@example.test",
                               [" Alice <alice@example.test>, CEO <ceo@example.test>"]) \
        == ["ceo@example.test"]
    assert OWNERS.foreign_from("alice@example.test", [" <>"]) == ["(unparsable)"]


def test_the_aliases_table_is_read_as_postfix_reads_texthash(tmp_path: Path) -> None:
    table = tmp_path / "aliases"
    table.write_text("# comment\n\nsales@example.test alice@example.test, Bob@example.test\n"
                     "info@example.test\tcarol@example.test\n")
    assert read_aliases(table) == {
        "sales@example.test": frozenset({"alice@example.test", "bob@example.test"}),
        "info@example.test": frozenset({"carol@example.test"})}
    table.write_text("lonely@example.test\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_aliases(table)
    with pytest.raises(ConfigError, match="cannot read"):
        read_aliases(tmp_path / "missing")


def test_the_firewall_rules_need_addresses() -> None:
    """standby.journal_clients are IP addresses (nft matches addresses, not names)."""
    from mailcontinuity.config import StandbySection
    with pytest.raises(ValueError, match="not an IP address"):
        StandbySection(imap="127.0.0.1:143", lmtp="127.0.0.1:24",  # type: ignore[arg-type]
                       journal_clients=["gateway.example"])
