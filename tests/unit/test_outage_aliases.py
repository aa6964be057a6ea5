"""Aliases and unknown addresses in an outage (issue 19): the RCPT answer, the alias table, the
standby's transport. No servers: the standby's answer is given by a stand-in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailcontinuity.config import Config, ConfigError, load_config
from mailcontinuity.deploy.aliases import OutageAliases, outage_alias_lines, read_address_table
from mailcontinuity.deploy.routing import standby_delivery_service, transport_entries
from mailcontinuity.deploy.settings import postfix_main_settings, render_check_config
from mailcontinuity.monitor.policy import UNKNOWN_RECIPIENT, FollowedAliases, RecipientPolicy
from mailcontinuity.monitor.protocol import DUNNO, POLICY_REQUEST
from mailcontinuity.monitor.recipients import StandbyRecipients
from mailcontinuity.store.state import StateName

CONFIG = """
[domains]
protected = ["example.org", "Example.NET"]

[primary]
delivery = "smtp:mail.example.org:25"
imap = "mail.example.org:143"

[standby]
imap = "127.0.0.1:143"
lmtp = "127.0.0.1:24"

[gateway]
outage_aliases = "{aliases}"
outage_postmaster = "it@example.org"
outage_alias_map = "{directory}/outage_aliases"
"""

TABLE = """# the primary's virtual table
team@example.org    alice@example.org, bob@example.org
Lists@Example.org\tcarol@example.org
   dave@example.org,
   erin@example.org
abuse@example.org   security@example.org
@example.net        catchall@example.org
"""


def config_with(tmp_path: Path, table: str = TABLE, postmaster: bool = True) -> Config:
    aliases = tmp_path / "virtual"
    aliases.write_text(table)
    text = CONFIG.format(aliases=aliases, directory=tmp_path)
    if not postmaster:
        text = text.replace('outage_postmaster = "it@example.org"\n', "")
    (tmp_path / "mailcontinuity.toml").write_text(text)
    return load_config(tmp_path / "mailcontinuity.toml")


def test_the_table_is_read_as_postmap_reads_it(tmp_path: Path) -> None:
    table = config_with(tmp_path).gateway.outage_aliases
    assert table is not None
    assert read_address_table(table, "gateway.outage_aliases", "x") == {
        "team@example.org": ("alice@example.org", "bob@example.org"),
        "lists@example.org": ("carol@example.org", "dave@example.org", "erin@example.org"),
        "abuse@example.org": ("security@example.org",),
        "@example.net": ("catchall@example.org",),
    }


def test_a_bad_table_is_an_error_naming_the_key_and_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gateway.outage_aliases: .* line 2: 'lonely"):
        OutageAliases.of(config_with(tmp_path, "# x\nlonely@example.org\n"))
    with pytest.raises(ConfigError, match="gateway.outage_aliases: cannot read .*unset the key"):
        read_address_table(tmp_path / "missing", "gateway.outage_aliases", "a b")


def test_postmaster_and_abuse_reach_the_configured_mailbox_unless_the_table_names_them(
    tmp_path: Path
) -> None:
    aliases = OutageAliases.of(config_with(tmp_path))
    assert aliases.entries["postmaster@example.org"] == ("it@example.org",)
    assert aliases.entries["postmaster@example.net"] == ("it@example.org",)
    assert aliases.entries["abuse@example.net"] == ("it@example.org",)
    assert aliases.entries["abuse@example.org"] == ("security@example.org",)  # the table's own


def test_covers_exact_addresses_in_any_case_and_catch_alls(tmp_path: Path) -> None:
    aliases = OutageAliases.of(config_with(tmp_path))
    assert aliases.covers("Team@Example.ORG")
    assert aliases.covers("POSTMASTER@example.org")
    assert aliases.covers("anyone@example.net")  # @example.net catch-all
    assert not aliases.covers("alice@example.org")
    assert not aliases.covers("team+x@example.org")  # virtual(5) without a delimiter: exact


def test_the_table_holds_the_aliases_during_an_outage_only(tmp_path: Path) -> None:
    aliases = OutageAliases.of(config_with(tmp_path))
    normal = outage_alias_lines(aliases, outage=False)
    assert all(line.startswith("#") for line in normal)
    outage = outage_alias_lines(aliases, outage=True)
    assert "team@example.org\talice@example.org, bob@example.org" in outage
    assert "postmaster@example.org\tit@example.org" in outage


def test_main_cf_names_the_table_only_when_aliases_are_configured(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    assert postfix_main_settings(config)["virtual_alias_maps"] == \
        f"hash:{tmp_path}/outage_aliases"
    plain = load_config(_without_gateway(tmp_path))
    assert "virtual_alias_maps" not in postfix_main_settings(plain)


def _without_gateway(tmp_path: Path) -> Path:
    path = tmp_path / "plain.toml"
    path.write_text(CONFIG.split("[gateway]")[0])
    return path


def test_the_standby_route_goes_through_the_soft_bounce_transport(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    assert transport_entries(config, "standby")[-1] == \
        "example.net mailcontinuity-standby:inet:[127.0.0.1]:24"
    assert transport_entries(config, "primary")[-1] == "example.net smtp:[mail.example.org]:25"
    assert standby_delivery_service() == \
        "mailcontinuity-standby unix - - n - - lmtp -o soft_bounce=yes"
    assert standby_delivery_service() in render_check_config(config)


def test_outage_postmaster_must_be_a_mailbox(tmp_path: Path) -> None:
    config_with(tmp_path)
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(path.read_text().replace("it@example.org", "it"))
    with pytest.raises(ConfigError, match="outage_postmaster"):
        load_config(path)


class Standby(StandbyRecipients):
    """The standby's LMTP verdicts, given (True known, False unknown, None cannot tell)."""

    def __init__(self, verdicts: dict[str, bool | None]) -> None:
        self.verdicts = verdicts
        self.asked: list[str] = []

    async def knows(self, address: str) -> bool | None:
        self.asked.append(address)
        return self.verdicts.get(address)


def decide(policy: RecipientPolicy, recipient: str) -> str:
    request = {"request": POLICY_REQUEST, "protocol_state": "RCPT", "recipient": recipient}
    return asyncio.run(policy.decide(request))


def policy_in(tmp_path: Path, state: StateName, standby: Standby,
              postmaster: bool = True) -> RecipientPolicy:
    config = config_with(tmp_path, postmaster=postmaster)
    return RecipientPolicy(config, lambda: state, standby)


def test_in_failover_an_unknown_address_is_deferred_without_naming_the_standby(
    tmp_path: Path
) -> None:
    standby = Standby({"alice@example.org": True, "ghost@example.org": False,
                       "slow@example.org": None})
    policy = policy_in(tmp_path, "failover", standby)
    answer = decide(policy, "ghost@example.org")
    assert answer == UNKNOWN_RECIPIENT
    assert answer.startswith("450 4.") and "standby" not in answer.lower()
    assert decide(policy, "alice@example.org") == DUNNO
    assert decide(policy, "slow@example.org") == DUNNO  # unsure: never block
    assert decide(policy, "someone@elsewhere.test") == DUNNO  # not protected


def test_in_failover_aliases_and_postmaster_pass_without_asking_the_standby(
    tmp_path: Path
) -> None:
    standby = Standby({})
    policy = policy_in(tmp_path, "failover", standby)
    for recipient in ("team@example.org", "Postmaster@example.net", "abuse@example.org",
                      "whoever@example.net"):
        assert decide(policy, recipient) == DUNNO
    assert standby.asked == []


def test_without_outage_postmaster_postmaster_is_deferred_like_any_unknown(
    tmp_path: Path
) -> None:
    policy = policy_in(tmp_path, "failover", Standby({"postmaster@example.org": False}),
                       postmaster=False)
    assert decide(policy, "postmaster@example.org") == UNKNOWN_RECIPIENT


@pytest.mark.parametrize("state", ["normal", "failback"])
def test_outside_failover_nothing_is_refused(tmp_path: Path, state: StateName) -> None:
    standby = Standby({"ghost@example.org": False})
    assert decide(policy_in(tmp_path, state, standby), "ghost@example.org") == DUNNO
    assert standby.asked == []


def test_a_refreshed_table_counts_without_a_restart_and_a_broken_one_keeps_the_last(
    tmp_path: Path
) -> None:
    config = config_with(tmp_path)
    followed = FollowedAliases(config)
    assert not followed().covers("sales@example.org")
    assert config.gateway.outage_aliases is not None
    config.gateway.outage_aliases.write_text(TABLE + "sales@example.org alice@example.org\n")
    assert followed().covers("sales@example.org")
    config.gateway.outage_aliases.write_text("broken@example.org\n")
    assert followed().covers("sales@example.org")  # kept, with a warning
