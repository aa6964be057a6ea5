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
from mailcontinuity.lab.cgroups import HostCgroups, cgroup2_mount
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.hosts import part_host
from mailcontinuity.lab.netcut import (
    CUTS_FILE,
    MARK_BASE,
    cgroup_name,
    check_cut,
    gateway_mail_source,
    gateway_probe_source,
    heal,
    isolate,
    ruleset,
    table_name,
)

HOSTS = ["primary", "standby", "state", "gw1", "gw2"]
PATHS = {host: f"unified/mailcontinuity-lab-x/{host}" for host in HOSTS}


def test_a_cut_marks_each_sides_packets_and_drops_them_at_the_other_sides_sockets() -> None:
    """Sender by its socket's cgroup (output, a mark), receiver by its socket's cgroup
    (input): every packet between the two, both ways, whoever opened the connection."""
    script = ruleset("mailcontinuity_lab_x", [("standby", "primary")], PATHS, HOSTS)
    primary, standby = f"{MARK_BASE + 1:#x}", f"{MARK_BASE + 2:#x}"
    assert (f'socket cgroupv2 level 2 "unified/mailcontinuity-lab-x/primary" meta mark set'
            f' {primary} comment "primary"') in script
    assert (f'socket cgroupv2 level 2 "unified/mailcontinuity-lab-x/standby" meta mark set'
            f' {standby} comment "standby"') in script
    assert (f'meta mark {standby} socket cgroupv2 level 2 "unified/mailcontinuity-lab-x/'
            f'primary" drop comment "standby->primary"') in script
    assert (f'meta mark {primary} socket cgroupv2 level 2 "unified/mailcontinuity-lab-x/'
            f'standby" drop comment "primary->standby"') in script
    assert script.count(" drop ") == 2
    # Only the hosts in a cut are marked; no address or port in sight.
    assert "gw1" not in script and "127.0." not in script and "dport" not in script


def test_two_cuts_sharing_a_host_mark_it_once() -> None:
    script = ruleset("t", [("gw2", "primary"), ("gw2", "state")], PATHS, HOSTS)
    assert script.count("meta mark set") == 3 and script.count(" drop ") == 4
    assert 'comment "gw2->state"' in script and 'comment "state->gw2"' in script


def test_the_table_is_rewritten_in_one_transaction_and_deleted_on_heal() -> None:
    script = ruleset("mailcontinuity_lab_x", [("gw2", "primary")], PATHS, HOSTS)
    lines = script.splitlines()
    # Created if missing, then deleted: the script works whether the table exists or not.
    assert lines[:2] == ["table inet mailcontinuity_lab_x {}",
                         "delete table inet mailcontinuity_lab_x"]
    assert "type filter hook output priority filter; policy accept;" in script
    assert "type filter hook input priority filter; policy accept;" in script
    assert ruleset("mailcontinuity_lab_x", [], {}, []).splitlines() == lines[:2]


def test_the_cgroup2_mount_is_found_on_unified_and_hybrid_systems() -> None:
    hybrid = ("35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
              "36 25 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(hybrid) == Path("/sys/fs/cgroup/unified")
    unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    assert cgroup2_mount(unified) == Path("/sys/fs/cgroup")
    with pytest.raises(LabError, match="no cgroup v2 hierarchy is mounted.*mount -t cgroup2"):
        cgroup2_mount("35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    groups = HostCgroups("mailcontinuity-lab-x", Path("/sys/fs/cgroup/unified"))
    assert groups.nft_path("gw1") == "unified/mailcontinuity-lab-x/gw1"
    assert HostCgroups("l", Path("/sys/fs/cgroup")).nft_path("gw1") == "l/gw1"
    with pytest.raises(LabError, match="outside /sys/fs/cgroup where nft looks"):
        HostCgroups("l", Path("/mnt/cg")).nft_path("gw1")


def test_addresses_and_table_names() -> None:
    assert (gateway_mail_source("gw2"), gateway_probe_source("gw2")) == ("127.0.1.2", "127.0.2.2")
    with pytest.raises(LabError, match="1 to 254"):
        gateway_mail_source("gw255")
    one, other = table_name(Path("/tmp/a")), table_name(Path("/tmp/b"))
    assert one != other and one.startswith("mailcontinuity_lab_") and len(one) < 64
    assert cgroup_name(Path("/tmp/a")) == "mailcontinuity-lab-" + one.rpartition("_")[2]


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
    monkeypatch.setattr(netcut, "lab_hosts", lambda lab: HOSTS)
    monkeypatch.setattr(netcut, "host_cgroups", lambda lab, hosts: (None, PATHS))
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


def test_cuts_between_any_two_hosts_are_taken_others_refused() -> None:
    check_cut(HOSTS, "standby", "primary")  # neither a gateway: cut all the same
    check_cut(HOSTS, "gw1", "state")
    with pytest.raises(LabError, match="no lab host 'gw9'; choose among primary, standby,"):
        check_cut(HOSTS, "gw9", "primary")
    with pytest.raises(LabError, match="from itself"):
        check_cut(HOSTS, "gw2", "gw2")


def test_host_cgroups_are_made_found_and_removed(tmp_path: Path) -> None:
    """On a plain directory standing in for the cgroup2 mount (no processes in it): what
    'lab up' makes, what 'lab isolate' checks, what 'lab down' removes."""
    groups = HostCgroups("mailcontinuity-lab-x", tmp_path)
    groups.create(["primary", "gw1"])
    assert groups.missing(["primary", "gw1", "state"]) == ["state"]
    assert groups.processes("gw1") == []
    groups.remove()
    assert not groups.root.exists()
    groups.remove()  # none there: fine


def test_each_part_runs_on_its_host() -> None:
    assert [part_host(name) for name in ("gw2/milter", "gw1/gateway", "sync-agent", "webmail",
                                         "standby", "primary", "state")] == [
        "gw2", "gw1", "standby", "standby", "standby", "primary", "state"]
