"""The nftables rules of ``lab isolate`` (lab/netcut.py): what a cut between two lab hosts
drops, both ways, and the one-transaction table the lab rewrites. The rules are enforced by
the real nft in tests/lab/test_multihost.py (in a network namespace of the test's own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.netcut import (
    HostTraffic,
    check_cut,
    cut_rules,
    gateway_mail_source,
    gateway_probe_source,
    heal,
    ruleset,
    table_name,
)

GW2 = HostTraffic("gw2", ("127.0.1.2", "127.0.2.2"), (2525, 9470))
PRIMARY = HostTraffic("primary", (), (1143, 1024))


def test_a_cut_drops_both_ways_by_address_and_port() -> None:
    rules = cut_rules(GW2, PRIMARY)
    # gw2 -> primary: from its addresses or its ports, to the primary's ports; and back.
    assert 'ip saddr { 127.0.1.2, 127.0.2.2 } tcp dport { 1024, 1143 } drop comment "gw2|primary"' \
        in rules
    assert 'tcp sport { 2525, 9470 } tcp dport { 1024, 1143 } drop comment "gw2|primary"' in rules
    assert 'tcp sport { 1024, 1143 } ip daddr { 127.0.1.2, 127.0.2.2 } drop comment' \
        ' "gw2|primary"' in rules
    assert 'tcp sport { 1024, 1143 } tcp dport { 2525, 9470 } drop comment "gw2|primary"' in rules
    assert len(rules) == 4
    assert all(rule.endswith('drop comment "gw2|primary"') for rule in rules)


def test_two_gateways_are_also_cut_by_address_to_address() -> None:
    gw1 = HostTraffic("gw1", ("127.0.1.1",), (25,))
    rules = cut_rules(gw1, GW2)
    assert ('meta l4proto tcp ip saddr { 127.0.1.1 } ip daddr { 127.0.1.2, 127.0.2.2 } drop'
            ' comment "gw1|gw2"') in rules
    assert len(rules) == 8  # 2 source matches x 2 destination matches, each way


def test_the_table_is_rewritten_in_one_transaction_and_deleted_on_heal() -> None:
    script = ruleset("mailcontinuity_lab_x", [(GW2, PRIMARY)])
    lines = script.splitlines()
    # Created if missing, then deleted: the script works whether the table exists or not.
    assert lines[:2] == ["table inet mailcontinuity_lab_x {}",
                         "delete table inet mailcontinuity_lab_x"]
    assert "type filter hook output priority filter; policy accept;" in script
    assert script.count(" drop ") == 4
    assert ruleset("mailcontinuity_lab_x", []).splitlines() == lines[:2]


def test_addresses_and_table_names() -> None:
    assert (gateway_mail_source("gw2"), gateway_probe_source("gw2")) == ("127.0.1.2", "127.0.2.2")
    with pytest.raises(LabError, match="1 to 254"):
        gateway_mail_source("gw255")
    one, other = table_name(Path("/tmp/a")), table_name(Path("/tmp/b"))
    assert one != other and one.startswith("mailcontinuity_lab_") and len(one) < 64


def test_heal_without_cuts_never_runs_nft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lab never cut (every single-host lab) leaves the ruleset alone on heal and down."""
    monkeypatch.setenv("PATH", "")  # nft could not even be found
    assert heal(tmp_path) == []


def test_cuts_the_lab_cannot_make_whole_are_refused() -> None:
    traffic = {"gw2": GW2, "primary": PRIMARY, "standby": HostTraffic("standby", (), (1025,))}
    check_cut(traffic, "gw2", "primary")
    with pytest.raises(LabError, match="cannot be told apart; cut a gateway"):
        check_cut(traffic, "standby", "primary")
    with pytest.raises(LabError, match="no lab host 'gw9'; choose among gw2, primary, standby"):
        check_cut(traffic, "gw9", "primary")
    with pytest.raises(LabError, match="from itself"):
        check_cut(traffic, "gw2", "gw2")
