"""The nftables rules of ``lab isolate`` (lab/netcut.py): what a cut between two lab hosts
drops, both ways, the one-transaction table the lab rewrites, and how cuts.json keeps track
of it (nft faked with monkeypatch: the fault injection of a refusal). The rules are enforced by
the real nft in tests/lab/test_multihost.py (in a network namespace of the test's own)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mailcontinuity.lab import netcut
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.netcut import (
    CUTS_FILE,
    HostTraffic,
    check_cut,
    cut_rules,
    gateway_mail_source,
    gateway_probe_source,
    heal,
    isolate,
    ruleset,
    table_name,
)

GW2 = HostTraffic("gw2", ("127.0.1.2", "127.0.2.2"), (2525, 9470))
PRIMARY = HostTraffic("primary", (), (1143, 1024))


def test_a_cut_drops_a_gateways_connections_to_the_other_host_and_the_replies() -> None:
    rules = cut_rules(GW2, PRIMARY)
    # gw2 -> primary: from gw2's addresses to the primary's ports, and the replies back.
    assert rules == [
        'oif "lo" ip saddr { 127.0.1.2, 127.0.2.2 } tcp dport { 1024, 1143 } drop'
        ' comment "gw2|primary"',
        'oif "lo" tcp sport { 1024, 1143 } ip daddr { 127.0.1.2, 127.0.2.2 } drop'
        ' comment "gw2|primary"',
    ]
    # The primary has no address of its own: nothing it opens can be told apart, and no
    # rule pretends otherwise (no listener-port-to-listener-port rule: it never matches).
    assert not any("tcp sport { 2525, 9470 }" in rule or "tcp dport { 2525, 9470 }" in rule
                   for rule in rules)


def test_two_gateways_are_cut_each_way_from_address_to_port() -> None:
    gw1 = HostTraffic("gw1", ("127.0.1.1",), (25,))
    rules = cut_rules(gw1, GW2)
    assert 'oif "lo" ip saddr { 127.0.1.1 } tcp dport { 2525, 9470 } drop comment "gw1|gw2"' \
        in rules
    assert 'oif "lo" ip saddr { 127.0.1.2, 127.0.2.2 } tcp dport { 25 } drop comment' \
        ' "gw1|gw2"' in rules
    assert len(rules) == 4
    assert all(rule.startswith('oif "lo" ') for rule in rules)
    # Address to address never matches (every listener is on 127.0.0.1): no such rule.
    assert not any("saddr" in rule and "daddr" in rule for rule in rules)


def test_the_table_is_rewritten_in_one_transaction_and_deleted_on_heal() -> None:
    script = ruleset("mailcontinuity_lab_x", [(GW2, PRIMARY)])
    lines = script.splitlines()
    # Created if missing, then deleted: the script works whether the table exists or not.
    assert lines[:2] == ["table inet mailcontinuity_lab_x {}",
                         "delete table inet mailcontinuity_lab_x"]
    assert "type filter hook output priority filter; policy accept;" in script
    assert script.count(" drop ") == 2
    assert ruleset("mailcontinuity_lab_x", []).splitlines() == lines[:2]


def test_addresses_and_table_names() -> None:
    assert (gateway_mail_source("gw2"), gateway_probe_source("gw2")) == ("127.0.1.2", "127.0.2.2")
    with pytest.raises(LabError, match="1 to 254"):
        gateway_mail_source("gw255")
    one, other = table_name(Path("/tmp/a")), table_name(Path("/tmp/b"))
    assert one != other and one.startswith("mailcontinuity_lab_") and len(one) < 64


def test_every_spelling_of_a_lab_directory_names_one_table(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    (tmp_path / "x").mkdir()
    lab.mkdir()
    (tmp_path / "link").symlink_to(lab)
    assert table_name(tmp_path / "x" / ".." / "lab") == table_name(lab)
    assert table_name(tmp_path / "link") == table_name(lab)


class FakeNft:
    """subprocess.run in place of nft: records each script and whether cuts.json existed
    when nft was asked; refuses when told to."""

    def __init__(self, cuts_file: Path, refuse: bool = False) -> None:
        self.cuts_file, self.refuse = cuts_file, refuse
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        recorded = self.cuts_file.read_text() if self.cuts_file.exists() else None
        self.calls.append((kwargs["input"], recorded))
        return subprocess.CompletedProcess(args, 1 if self.refuse else 0, "",
                                           "Error: refused" if self.refuse else "")


def _cut_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refuse: bool = False
             ) -> tuple[Any, FakeNft]:
    traffic = {"gw1": HostTraffic("gw1", ("127.0.1.1",), (25,)), "gw2": GW2, "primary": PRIMARY}
    monkeypatch.setattr(netcut, "host_traffic", lambda lab: traffic)
    monkeypatch.setattr(netcut.shutil, "which", lambda name: "/usr/sbin/nft")
    nft = FakeNft(tmp_path / CUTS_FILE, refuse)
    monkeypatch.setattr(netcut.subprocess, "run", nft)
    return SimpleNamespace(dir=tmp_path), nft


def test_cuts_json_names_the_table_and_is_written_before_nft(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between the two leaves a file heal acts on, never a table nothing knows of."""
    lab, nft = _cut_lab(tmp_path, monkeypatch)
    assert isolate(lab, "gw2", "primary") == [["gw2", "primary"]]
    script, recorded = nft.calls[0]
    assert recorded is not None and json.loads(recorded) == {
        "table": table_name(tmp_path), "cuts": [["gw2", "primary"]]}
    assert f"table inet {table_name(tmp_path)} {{" in script and " drop " in script


def test_a_refused_cut_puts_cuts_json_back(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    lab, _ = _cut_lab(tmp_path, monkeypatch, refuse=True)
    with pytest.raises(LabError, match="nft refused the lab's cuts.*Error: refused"):
        isolate(lab, "gw2", "primary")
    assert not (tmp_path / CUTS_FILE).exists()  # nft applied nothing: nothing recorded
    earlier = json.dumps({"table": table_name(tmp_path), "cuts": [["gw2", "gw1"]]}) + "\n"
    (tmp_path / CUTS_FILE).write_text(earlier)
    with pytest.raises(LabError, match="nft refused"):
        isolate(lab, "gw2", "primary")
    assert (tmp_path / CUTS_FILE).read_text() == earlier


def test_heal_deletes_the_table_cuts_json_names(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Healed through another spelling of the directory (or a file from before the lab
    resolved it), heal deletes the table isolate made, not one the spelling would name."""
    _, nft = _cut_lab(tmp_path, monkeypatch)
    (tmp_path / CUTS_FILE).write_text(json.dumps(
        {"table": "mailcontinuity_lab_made", "cuts": [["gw2", "primary"]]}))
    assert heal(tmp_path / ".") == [["gw2", "primary"]]
    assert nft.calls[0][0].splitlines() == ["table inet mailcontinuity_lab_made {}",
                                            "delete table inet mailcontinuity_lab_made"]
    assert not (tmp_path / CUTS_FILE).exists()
    # An older cuts.json, a bare list: the table the resolved directory names.
    (tmp_path / CUTS_FILE).write_text(json.dumps([["gw2", "primary"]]))
    assert heal(tmp_path) == [["gw2", "primary"]]
    assert f"delete table inet {table_name(tmp_path)}" in nft.calls[1][0]


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
