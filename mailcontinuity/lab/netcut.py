"""Network cuts between the hosts of a multi-host lab (``lab isolate`` / ``lab heal``).

The lab's hosts share the loopback interface and all listen on 127.0.0.1, so neither addresses
nor ports tell whose traffic a packet is. Their processes do: each host's run in a cgroup v2 of
the lab's own (``lab.cgroups``: ``mailcontinuity-lab-<id>/<host>``), and a socket carries the
cgroup of the process that made it (an accepted connection: its listener's). A cut between X
and Y is two rules of an nftables table, on every interface of the namespace:

- output: a packet sent from a socket of a host in a cut gets that host's mark
  (``socket cgroupv2 level 2 "…/X" meta mark set``); the mark stays with the packet across
  ``lo``;
- input: a packet with X's mark whose receiving socket is Y's (``socket cgroupv2`` looks the
  socket up: a listener, or the connection's own) is dropped, and the same from Y to X.

So every packet between the two hosts is dropped, both ways, whoever opened the connection and
whatever address it came from: the standby's and the primary's connections (sync agent,
failback merge, submission relay), a gateway's Postfix and probes, its milter's journal LMTP
to the standby, its ``[watch]`` checks, every host's store connections (``state`` is a host),
and connections open before the cut (their next packet is dropped). What a cut does not stop:
unix sockets (a gateway's Postfix asks the standby's Dovecot for SASL auth over one in the lab)
and the shared file system; processes outside the hosts (the tests' own clients, the outside
senders, the directory and the client proxy) are never cut.

The hosts are ``primary``, ``standby`` (with its sync agent and webmail), ``state`` (the
PostgreSQL store) and ``gw1``..``gwN``. Gateways still send from loopback addresses of their own
(``GATEWAY_MAIL_SOURCE`` for Postfix and the delivery probe, ``GATEWAY_PROBE_SOURCE`` for the
IMAP probes, as on a real gateway), but the cuts no longer rely on them.

The rules live in an nftables table of the lab's own, ``inet mailcontinuity_lab_<id>`` (``id``
from the lab's resolved directory), in the network namespace of the process that runs
``isolate``: by hand that is the machine's own ruleset (the table is the lab's alone, and
``heal`` or ``lab down`` deletes it); the lab tests run the whole lab in a network namespace of
their own (``own_network_namespace``), so ``make test`` never changes the machine.
``DIR/cuts.json`` names the table and lists the cuts; it is written before nft is asked, so a
crash between the two leaves a file that ``heal`` acts on (deleting a table that may not exist
is fine), never a table that nothing knows of. Every change rewrites the whole table in one nft
transaction.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mailcontinuity.lab.cgroups import HOST_LEVEL, HostCgroups
from mailcontinuity.lab.errors import LabError

if TYPE_CHECKING:
    from mailcontinuity.lab.lab import Lab

CUTS_FILE = "cuts.json"
# A host's packet mark: this base plus its place in the lab's host list (see ``marks``).
MARK_BASE = 0x6D630000


def gateway_mail_source(name: str) -> str:
    """Where gateway ``gwK``'s Postfix delivers from (smtp_bind_address, lmtp_bind_address)."""
    return f"127.0.1.{_gateway_number(name)}"


def gateway_probe_source(name: str) -> str:
    """Where gateway ``gwK``'s policyd probes the primary from ([health]
    probe_source_address): an address of the monitor's own, as on a real gateway
    (docs/security.md reserves it to the monitor's user)."""
    return f"127.0.2.{_gateway_number(name)}"


def _gateway_number(name: str) -> int:
    number = int(name.removeprefix("gw"))
    if not 1 <= number <= 254:
        raise LabError(f"lab gateway {name}: the lab numbers gateways 1 to 254")
    return number


def table_name(directory: Path) -> str:
    """The lab's table: from the directory with ``..`` and symlinks resolved, so that every
    spelling of one lab's directory names one table."""
    return f"mailcontinuity_lab_{lab_id(directory)}"


def lab_id(directory: Path) -> str:
    return hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:10]


def cgroup_name(directory: Path) -> str:
    """The lab's cgroup, parent of its hosts' (``lab.cgroups``)."""
    return f"mailcontinuity-lab-{lab_id(directory)}"


def marks(hosts: list[str]) -> dict[str, int]:
    return {host: MARK_BASE + number for number, host in enumerate(hosts, start=1)}


def ruleset(table: str, cuts: list[tuple[str, str]], cgroups: dict[str, str],
            hosts: list[str]) -> str:
    """The whole table as one nft transaction: created if missing, deleted, then written
    afresh (no cuts: just deleted). ``cgroups`` maps a host to its ``socket cgroupv2`` path;
    ``hosts`` is every host of the lab, in order (their marks)."""
    lines = [f"table inet {table} {{}}", f"delete table inet {table}"]
    if not cuts:
        return "\n".join(lines) + "\n"
    mark = marks(hosts)
    level = f"socket cgroupv2 level {HOST_LEVEL}"
    cut_hosts = [host for host in hosts if any(host in pair for pair in cuts)]
    lines += [f"table inet {table} {{",
              "  chain marks {",
              "    type filter hook output priority filter; policy accept;"]
    lines += [f'    {level} "{cgroups[host]}" meta mark set {mark[host]:#x}'
              f' comment "{host}"' for host in cut_hosts]
    lines += ["  }",
              "  chain cuts {",
              "    type filter hook input priority filter; policy accept;"]
    for one, other in cuts:
        for sender, receiver in ((one, other), (other, one)):
            lines.append(f'    meta mark {mark[sender]:#x} {level} "{cgroups[receiver]}" drop'
                         f' comment "{sender}->{receiver}"')
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def lab_hosts(lab: Lab) -> list[str]:
    """Every host of a multi-host lab that a cut can name."""
    if lab.hosts is None:
        raise LabError(f"the lab in {lab.dir} has one host; 'lab isolate' needs a multi-host"
                       " lab (lab up --gateways N in a new directory)")
    return lab.hosts.host_names


def _read_cuts(directory: Path) -> tuple[str, list[list[str]]]:
    """The table and the cuts ``DIR/cuts.json`` records (none: the table the directory names,
    no cuts). An older file is a bare list of cuts."""
    path = directory / CUTS_FILE
    if not path.exists():
        return table_name(directory), []
    try:
        data = json.loads(path.read_text())
        if isinstance(data, list):
            return table_name(directory), [list(pair) for pair in data]
        return str(data["table"]), [list(pair) for pair in data["cuts"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LabError(f"{path}: {exc!r}; remove it, then 'nft delete table inet"
                       f" {table_name(directory)}' if that table exists") from None


def _nft() -> str:
    nft = shutil.which("nft")
    if nft is None:
        raise LabError("nft not found: apt-get install nftables (lab isolate cuts with it)")
    return nft


def _apply(table: str, script: str) -> None:
    result = subprocess.run([_nft(), "-f", "-"], input=script, capture_output=True, text=True,
                            check=False, timeout=30)
    if result.returncode != 0:
        hint = ""
        if "cgroupv2" in script:
            hint = ("; the cuts need nftables >= 1.0 with 'socket cgroupv2' and a kernel with"
                    " nf_tables' socket match (CONFIG_NFT_SOCKET, module nft_socket:"
                    " modprobe nft_socket) and cgroup v2 socket data (CONFIG_SOCK_CGROUP_DATA)")
        raise LabError(f"nft refused the lab's cuts (table inet {table}):"
                       f" {result.stderr.strip()}{hint}")


def check_cut(hosts: list[str], host: str, other: str) -> None:
    """Refuse a cut the lab cannot make, naming what to do instead."""
    for name in (host, other):
        if name not in hosts:
            raise LabError(f"no lab host {name!r}; choose among {', '.join(hosts)}")
    if host == other:
        raise LabError(f"cannot cut {host} from itself")


def host_cgroups(lab: Lab, hosts: list[str]) -> tuple[HostCgroups, dict[str, str]]:
    """The lab's hosts' cgroups and their nft paths; refused when ``lab up`` made none (a lab
    started before the cuts used cgroups: its processes are in none, a cut would do
    nothing)."""
    assert lab.hosts is not None
    cgroups = lab.hosts.cgroups
    missing = cgroups.missing(hosts)
    if missing:
        raise LabError(f"the lab's hosts {', '.join(missing)} have no cgroup"
                       f" ({cgroups.root}); 'lab down' then 'lab up' starts them in theirs")
    return cgroups, {host: cgroups.nft_path(host) for host in hosts}


def isolate(lab: Lab, host: str, other: str) -> list[list[str]]:
    """Cut ``host`` from ``other`` (both ways), keeping the cuts already made; return every
    cut in force. ``cuts.json`` is written first (a crash after it leaves a file ``heal``
    acts on) and put back as it was if nft refuses (nothing was applied: one transaction)."""
    hosts = lab_hosts(lab)
    check_cut(hosts, host, other)
    _nft()  # before cuts.json names a cut: a lab without nft never records one
    _, paths = host_cgroups(lab, hosts)
    path = lab.dir / CUTS_FILE
    before = path.read_text() if path.exists() else None
    table, cuts = _read_cuts(lab.dir)
    if sorted([host, other]) not in [sorted(pair) for pair in cuts]:
        cuts.append([host, other])
    unknown = sorted({name for pair in cuts for name in pair} - set(hosts))
    if unknown:
        raise LabError(f"{path} names no lab host {', '.join(unknown)}; 'lab heal' first")
    script = ruleset(table, [(a, b) for a, b in cuts], paths, hosts)
    path.write_text(json.dumps({"table": table, "cuts": cuts}) + "\n")
    try:
        _apply(table, script)
    except (LabError, OSError, subprocess.SubprocessError):
        if before is None:
            path.unlink()
        else:
            path.write_text(before)
        raise
    return cuts


def heal(directory: Path) -> list[list[str]]:
    """Delete the table ``cuts.json`` names: every cut is gone. Returns the cuts that were
    recorded (no file: nothing is asked of nft, so a lab never cut never touches the
    ruleset)."""
    path = directory / CUTS_FILE
    if not path.exists():
        return []
    table, cuts = _read_cuts(directory)
    _apply(table, ruleset(table, [], {}, []))
    path.unlink()
    return cuts


CLONE_NEWNET = 0x40000000


@contextmanager
def own_network_namespace() -> Iterator[None]:
    """Run the calling thread (and every process it starts) in a new network namespace with
    only ``lo`` up, then go back: what ``lab isolate`` does there never touches the machine's
    ruleset, and the lab's servers there see only each other. Root only (CAP_SYS_ADMIN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            raise LabError(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}"
                           " (a network namespace needs root)")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise LabError(f"setns back to the machine's network namespace:"
                               f" {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(home)
