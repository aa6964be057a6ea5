"""Network cuts between the hosts of a multi-host lab (``lab isolate`` / ``lab heal``).

The lab's hosts share the loopback interface, so a host is known to the packet filter by what
tells its traffic apart: the ports it listens on (every host: its mail servers' and daemons'
listeners on 127.0.0.1) and, for a gateway, the loopback addresses its connections come from
(``GATEWAY_MAIL_SOURCE``: its Postfix binds its SMTP/LMTP deliveries there; and
``GATEWAY_PROBE_SOURCE``: its policyd's IMAP probes of the primary, ``[health]
probe_source_address``; its delivery probe follows Postfix's bind address). A cut between X
and Y drops every TCP packet that comes from X (one of
its addresses, or one of its listening ports) and goes to Y (likewise), both ways: X's new
connections to Y hang, Y's replies never arrive, exactly as on a cable pulled between them.

The rules live in an nftables table of the lab's own, ``inet mailcontinuity_lab_<id>`` (``id``
from the lab's directory), in the network namespace of the process that runs ``isolate``: by
hand that is the machine's own ruleset (the table is the lab's alone, and ``heal`` or
``lab down`` deletes it); the lab tests run the whole lab in a network namespace of their own
(``own_network_namespace``), so ``make test`` never changes the machine. ``DIR/cuts.json`` lists
the cuts in force; every change rewrites the whole table in one nft transaction.

The standby and the primary have no source address of their own (the sync agent's and the
Dovecots' outgoing connections come from 127.0.0.1, like everybody's), so a cut needs a gateway
on at least one side; ``isolate standby --from primary`` is refused rather than half done. A
gateway's checks of the standby (``[watch]``) and its milter's journal LMTP also come from
127.0.0.1: a cut between a gateway and the standby stops its Postfix's deliveries there, not
those (docs/lab.md).
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
    digest = hashlib.sha256(str(directory.absolute()).encode()).hexdigest()[:10]
    return f"mailcontinuity_lab_{digest}"


def _matches(host: HostTraffic, side: str) -> list[str]:
    """nft expressions matching a packet from (``side`` "s") or to ("d") ``host``."""
    found = []
    if host.addresses:
        found.append(f"ip {side}addr {{ {', '.join(host.addresses)} }}")
    if host.ports:
        found.append(f"tcp {side}port {{ {', '.join(str(p) for p in sorted(host.ports))} }}")
    return found


def cut_rules(one: HostTraffic, other: HostTraffic) -> list[str]:
    """The rules (without ``add rule TABLE CHAIN``) dropping every TCP packet between two
    hosts, both ways. Port matches say ``tcp``; address matches add ``meta l4proto tcp``."""
    rules = []
    for source, destination in ((one, other), (other, one)):
        for src in _matches(source, "s"):
            for dst in _matches(destination, "d"):
                proto = "" if "tcp " in src or "tcp " in dst else "meta l4proto tcp "
                rules.append(f"{proto}{src} {dst} drop comment \"{one.name}|{other.name}\"")
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


def _read_cuts(directory: Path) -> list[list[str]]:
    path = directory / CUTS_FILE
    if not path.exists():
        return []
    try:
        return [list(pair) for pair in json.loads(path.read_text())]
    except (OSError, ValueError) as exc:
        raise LabError(f"{path}: {exc}; remove it, then 'nft delete table inet"
                       f" {table_name(directory)}' if that table exists") from None


def _apply(directory: Path, script: str) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise LabError("nft not found: apt-get install nftables (lab isolate cuts with it)")
    result = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True,
                            check=False, timeout=30)
    if result.returncode != 0:
        raise LabError(f"nft refused the lab's cuts (table inet {table_name(directory)}):"
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
    cut in force."""
    traffic = host_traffic(lab)
    check_cut(traffic, host, other)
    cuts = _read_cuts(lab.dir)
    if sorted([host, other]) not in [sorted(pair) for pair in cuts]:
        cuts.append([host, other])
    _apply(lab.dir, ruleset(table_name(lab.dir),
                            [(traffic[a], traffic[b]) for a, b in cuts]))
    (lab.dir / CUTS_FILE).write_text(json.dumps(cuts) + "\n")
    return cuts


def heal(directory: Path) -> list[list[str]]:
    """Delete the lab's table: every cut is gone. Returns the cuts that were in force (none:
    nothing is asked of nft, so a lab never cut never touches the ruleset)."""
    path = directory / CUTS_FILE
    if not path.exists():
        return []
    cuts = _read_cuts(directory)
    _apply(directory, ruleset(table_name(directory), []))
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
