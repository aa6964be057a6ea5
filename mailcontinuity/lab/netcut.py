"""Network cuts between the hosts of a multi-host lab (``lab isolate`` / ``lab heal``).

The lab's hosts share the loopback interface and all listen on 127.0.0.1, so a host is known to
the packet filter by what tells its traffic apart: the ports it listens on (every host: its
mail servers' and daemons' listeners) and, for a gateway, the loopback addresses its
connections come from (``GATEWAY_MAIL_SOURCE``: its Postfix binds its SMTP/LMTP deliveries
there; and ``GATEWAY_PROBE_SOURCE``: its policyd's probes of the primary, ``[health]
probe_source_address``). Every TCP connection has a listener's port on one side and an
ephemeral port on the other, so a cut between X and Y drops, on ``lo`` only:

- connections X opens from one of its addresses to one of Y's ports (the packets out, and the
  replies from Y's port back to X's address), and the same from Y to X.

That is all the packet filter can tell apart. A connection from 127.0.0.1 (every connection of
the standby's and the primary's: their Postfix, Dovecot, sync agent; and a gateway's
``[watch]`` checks and its milter's journal LMTP) looks the same whoever opened it, so it is
never cut: the standby's submission still relays to a gateway's ``standby_relay`` through a
gateway|standby cut. Dropping every packet to a gateway's port would cut the outside senders
and the other hosts too, so the lab does not (docs/lab.md lists what a cut stops).

The rules live in an nftables table of the lab's own, ``inet mailcontinuity_lab_<id>`` (``id``
from the lab's resolved directory), in the network namespace of the process that runs
``isolate``: by hand that is the machine's own ruleset (the table is the lab's alone, and
``heal`` or ``lab down`` deletes it); the lab tests run the whole lab in a network namespace of
their own (``own_network_namespace``), so ``make test`` never changes the machine.
``DIR/cuts.json`` names the table and lists the cuts; it is written before nft is asked, so a
crash between the two leaves a file that ``heal`` acts on (deleting a table that may not exist
is fine), never a table that nothing knows of. Every change rewrites the whole table in one nft
transaction.

The standby and the primary have no source address of their own, so a cut needs a gateway on
at least one side; ``isolate standby --from primary`` is refused rather than half done.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mailcontinuity.config import Config, Endpoint
from mailcontinuity.lab.errors import LabError

if TYPE_CHECKING:
    from mailcontinuity.lab.lab import Lab

CUTS_FILE = "cuts.json"


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


@dataclass(frozen=True)
class HostTraffic:
    """What tells one lab host's packets apart: its own source addresses and its ports."""

    name: str
    addresses: tuple[str, ...] = ()
    ports: tuple[int, ...] = field(default_factory=tuple)


def table_name(directory: Path) -> str:
    """The lab's table: from the directory with ``..`` and symlinks resolved, so that every
    spelling of one lab's directory names one table."""
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:10]
    return f"mailcontinuity_lab_{digest}"


def cut_rules(one: HostTraffic, other: HostTraffic) -> list[str]:
    """The rules (without ``add rule TABLE CHAIN``) dropping the loopback TCP connections one
    host opens from an address of its own to the other's listeners, both ways: the packets
    out (source address, destination port) and the replies (source port, destination
    address). Port to port and address to address never match (every connection has one
    ephemeral port; every listener is on 127.0.0.1), so there are no such rules."""
    rules = []
    comment = f'comment "{one.name}|{other.name}"'
    for client, server in ((one, other), (other, one)):
        if not client.addresses or not server.ports:
            continue
        addresses = f"{{ {', '.join(client.addresses)} }}"
        ports = f"{{ {', '.join(str(p) for p in sorted(server.ports))} }}"
        rules.append(f'oif "lo" ip saddr {addresses} tcp dport {ports} drop {comment}')
        rules.append(f'oif "lo" tcp sport {ports} ip daddr {addresses} drop {comment}')
    return rules


def ruleset(table: str, cuts: list[tuple[HostTraffic, HostTraffic]]) -> str:
    """The whole table as one nft transaction: created if missing, deleted, then written
    afresh (no cuts: just deleted)."""
    lines = [f"table inet {table} {{}}", f"delete table inet {table}"]
    if cuts:
        lines += [f"table inet {table} {{",
                  "  chain cuts {",
                  "    type filter hook output priority filter; policy accept;"]
        for one, other in cuts:
            lines += [f"    {rule}" for rule in cut_rules(one, other)]
        lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def _endpoint_port(endpoint: Endpoint | None) -> list[int]:
    return [endpoint.port] if endpoint is not None and endpoint.port else []


def _gateway_ports(config: Config) -> list[int]:
    gateway = config.gateway
    ports = [*_endpoint_port(gateway.smtp), *_endpoint_port(gateway.submission),
             *_endpoint_port(gateway.standby_relay)]
    if config.metrics.enabled:
        ports += _endpoint_port(config.metrics.listen)
    return ports


def host_traffic(lab: Lab) -> dict[str, HostTraffic]:
    """Every host of a multi-host lab and what tells its traffic apart."""
    hosts = lab.hosts
    if hosts is None:
        raise LabError(f"the lab in {lab.dir} has one host; 'lab isolate' needs a multi-host"
                       " lab (lab up --gateways N in a new directory)")
    found = {
        "primary": HostTraffic("primary", (), tuple(
            sorted({e.port for e in lab.primary.listeners.values()}))),
        "standby": HostTraffic("standby", (), tuple(sorted(
            {e.port for e in lab.standby.listeners.values()}
            | set(_endpoint_port(lab.standby.journal_lmtp))
            | set(_endpoint_port(lab.webmail.endpoint if lab.webmail else None))))),
    }
    for entry in hosts.gateways:
        name = entry["name"]
        found[name] = HostTraffic(
            name, (gateway_mail_source(name), gateway_probe_source(name)),
            tuple(sorted(set(_gateway_ports(hosts.config(name))))))
    return found


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
        raise LabError(f"nft refused the lab's cuts (table inet {table}):"
                       f" {result.stderr.strip()}")


def check_cut(traffic: dict[str, HostTraffic], host: str, other: str) -> None:
    """Refuse a cut the lab cannot make whole, naming what to do instead."""
    for name in (host, other):
        if name not in traffic:
            raise LabError(f"no lab host {name!r}; choose among {', '.join(sorted(traffic))}")
    if host == other:
        raise LabError(f"cannot cut {host} from itself")
    if not traffic[host].addresses and not traffic[other].addresses:
        raise LabError(f"{host} and {other} both connect out from 127.0.0.1 in this lab, so"
                       " their traffic cannot be told apart; cut a gateway instead")


def isolate(lab: Lab, host: str, other: str) -> list[list[str]]:
    """Cut ``host`` from ``other`` (both ways), keeping the cuts already made; return every
    cut in force. ``cuts.json`` is written first (a crash after it leaves a file ``heal``
    acts on) and put back as it was if nft refuses (nothing was applied: one transaction)."""
    traffic = host_traffic(lab)
    check_cut(traffic, host, other)
    _nft()  # before cuts.json names a cut: a lab without nft never records one
    path = lab.dir / CUTS_FILE
    before = path.read_text() if path.exists() else None
    table, cuts = _read_cuts(lab.dir)
    if sorted([host, other]) not in [sorted(pair) for pair in cuts]:
        cuts.append([host, other])
    unknown = sorted({name for pair in cuts for name in pair} - set(traffic))
    if unknown:
        raise LabError(f"{path} names no lab host {', '.join(unknown)}; 'lab heal' first")
    script = ruleset(table, [(traffic[a], traffic[b]) for a, b in cuts])
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
    _apply(table, ruleset(table, []))
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
