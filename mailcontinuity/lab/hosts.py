"""The multi-host lab (``lab up --gateways N``): gateways gw1..gwN, the standby, the primary and a
PostgreSQL store (part ``state``), each host with its own directory and configuration.

Built on the single-host lab: the primary and the standby are its Dovecot instances, gw1's
Postfix is its gateway (``DIR/gateway``), and gw2..gwN get Postfix instances of their own under
``DIR/hosts/gwK/gateway``. Every host's configuration, ``DIR/hosts/NAME/mailcontinuity.toml``, is
the single-host one with the shared store (``state.url``), a ``[cluster]`` section naming this
host, and, on a gateway, that gateway's own Postfix, milter socket, spool, policyd socket and
metrics port. Each gateway runs its milter and policyd (parts ``gwK/milter``, ``gwK/policyd``,
``gwK/gateway``); the standby host runs the sync agent. ``lab.json`` keeps every key of the
single-host lab (``gateway`` is gw1's, ``config`` the standby host's) and adds ``gateways`` and
``hosts``.

Every host listens on 127.0.0.1, each on its own ports, and runs in a cgroup of its own
(``lab.cgroups``: every part is started in its host's, ``HostPart``), so that ``lab isolate``/
``lab heal`` (``lab.netcut``) can cut any two hosts apart by whose socket a packet is. A
gateway also connects from loopback addresses of its own, as a real one would: its Postfix
delivers from ``127.0.1.K`` (``smtp_bind_address``, ``lmtp_bind_address``) and its policyd
probes the primary's IMAP from ``127.0.2.K`` (``[health] probe_source_address``; the delivery
probe follows Postfix, from ``127.0.1.K``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailcontinuity.config import Config, Endpoint, load_config, parse_endpoint
from mailcontinuity.journal.listener import accepts_connections as milter_accepts
from mailcontinuity.lab.cgroups import HostCgroups, HostPart, run_on_host
from mailcontinuity.lab.daemon import DaemonPart
from mailcontinuity.lab.dovecot import POSTFIX_AUTH_SOCKET
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.gateway import PostfixGateway
from mailcontinuity.lab.netcut import cgroup_name, gateway_mail_source, gateway_probe_source
from mailcontinuity.lab.postgres import PostgresServer
from mailcontinuity.lab.process import accepts_unix_connections, free_ports
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.store.db import StateStoreError, open_store
from mailcontinuity.store.heartbeats import sync_agent_heartbeat

if TYPE_CHECKING:
    from mailcontinuity.lab.lab import LabPart

STANDBY_HOST = "standby"
PRIMARY_HOST = "primary"
STATE_PART = "state"
# A gateway's own parts, in start order (the daemons serve before Postfix takes mail).
GATEWAY_PARTS = ("milter", "policyd", "gateway")


def gateway_names(count: int) -> list[str]:
    return [f"gw{n}" for n in range(1, count + 1)]


def host_dir(directory: Path, name: str) -> Path:
    return directory / "hosts" / name


def host_config_file(directory: Path, name: str) -> Path:
    return host_dir(directory, name) / "mailcontinuity.toml"


def gateway_root(directory: Path, name: str) -> Path:
    """gw1 is the single-host lab's gateway; the others have their own Postfix."""
    return directory / "gateway" if name == "gw1" else host_dir(directory, name) / "gateway"


def postgres_server(directory: Path, listen: Endpoint) -> PostgresServer:
    return PostgresServer(directory / "state-pg", listen, LabCertificates(directory / "tls"),
                          directory / "secrets" / "state-password")


# --- creating ------------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise LabError(f"cannot write {value!r} into a lab configuration")


def dump_toml(data: dict[str, Any]) -> str:
    """The small TOML the lab's configurations need: top-level keys, then one level of
    sections with scalar and list values."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items()
             if not isinstance(value, dict)]
    for name, section in data.items():
        if isinstance(section, dict):
            lines += ["", f"[{name}]"]
            lines += [f"{key} = {_toml_value(value)}" for key, value in section.items()]
    return "\n".join(lines) + "\n"


def host_config(base: dict[str, Any], directory: Path, name: str, gateways: list[str],
                server: PostgresServer, ports: dict[str, int]) -> dict[str, Any]:
    """One host's configuration: the single-host lab's, sharing the PostgreSQL store, naming
    this host; a gateway's with its own Postfix, sockets, spool and metrics port."""
    data = json.loads(json.dumps(base))  # a deep copy
    data["state"] = {"url": server.url, "password_file": str(server.password_file),
                     "tls_ca_file": str(server.certificates.ca_file),
                     "connect_timeout_seconds": 2}
    data["cluster"] = {"host": name, "gateways": gateways, "standby_host": STANDBY_HOST}
    if name in gateways:  # each gateway probes from an address of its own (lab.netcut)
        data["health"]["probe_source_address"] = gateway_probe_source(name)
        # A gateway on a host of its own cannot write the standby's Maildirs: its journal
        # copies go to the standby's journal LMTP listener, as on a real site.
        data["milter"]["sink"] = "lmtp"
    if name == STANDBY_HOST:
        # Failback's IMAP timeout: on loopback the primary answers in milliseconds, so a cut
        # (lab isolate standby --from primary) is told in 15 s rather than the default minute.
        data.setdefault("sync", {})["timeout_seconds"] = 15.0
    if name in gateways and name != "gw1":
        etc = gateway_root(directory, name) / "etc"
        run = host_dir(directory, name) / "daemons"
        data["gateway"] |= {"smtp": f"127.0.0.1:{ports['smtp']}",
                            "submission": f"127.0.0.1:{ports['submission']}",
                            "postfix_config_dir": str(etc),
                            "transport_map": str(etc / "transport"),
                            "tls_policy_map": str(etc / "tls_policy"),
                            "sender_login_map": str(etc / "sender_login"),
                            "sender_aliases": str(etc / "sender_aliases")}
        if "outage_aliases" in data["gateway"]:  # each gateway's Postfix has its own maps
            data["gateway"] |= {"outage_aliases": str(etc / "outage_aliases.src"),
                                "outage_alias_map": str(etc / "outage_aliases")}
        if "standby_relay" in data["gateway"]:  # each gateway's Postfix has its own listener
            data["gateway"]["standby_relay"] = f"127.0.0.1:{ports['standby_relay']}"
        home = host_dir(directory, name)
        data["milter"] |= {"listen": f"unix:{home / 'milter' / 'journal.sock'}",
                           "spool_dir": str(home / "spool")}
        data["policyd"] |= {"socket": str(run / "policyd.sock")}
        data["metrics"] |= {"listen": f"127.0.0.1:{ports['metrics']}"}
    return data


def create_hosts(directory: Path, description: dict[str, Any], count: int) -> dict[str, Any]:
    """Write every host's configuration and gw2..gwN's Postfix; start the store (its role and
    database are made at its first start); return ``description`` with the new keys."""
    if count < 2:
        raise LabError(f"--gateways {count}: a multi-host lab has 2 or more gateways")
    gateways = gateway_names(count)
    numbers = iter(free_ports(1 + 4 * (count - 1)))
    server = postgres_server(directory, Endpoint("127.0.0.1", next(numbers)))
    LabCertificates(directory / "tls")  # the lab's CA signs the store's certificate too
    server.write_config()
    base = tomllib.loads(Path(description["config"]).read_text())
    entries = []
    hosts: dict[str, dict[str, str]] = {}
    for name in [*gateways, STANDBY_HOST]:
        ports = {"smtp": 0, "submission": 0, "metrics": 0, "standby_relay": 0}
        if name in gateways and name != "gw1":
            ports = {key: next(numbers) for key in ports}
        data = host_config(base, directory, name, gateways, server, ports)
        path = host_config_file(directory, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# mailcontinuity configuration of lab host {name} in {directory}\n"
                        + dump_toml(data))
        hosts[name] = {"config": str(path)}
        if name in gateways:
            entries.append({"name": name, "smtp": data["gateway"]["smtp"], "config": str(path)})
    description = {**description, "config": hosts[STANDBY_HOST]["config"], "gateways": entries,
                   "hosts": hosts, "state": {"url": server.url,
                                             "listen": str(server.listen)}}
    for entry in entries[1:]:  # gw1's Postfix is written with the lab's parts (Lab._create)
        gateway_postfix(directory, entry).write_config()
    return description


def gateway_postfix(directory: Path, entry: dict[str, str]) -> PostfixGateway:
    config = load_config(Path(entry["config"]))
    return PostfixGateway(gateway_root(directory, entry["name"]), parse_endpoint(entry["smtp"]),
                          config, config.gateway.submission,
                          directory / "standby" / "run" / POSTFIX_AUTH_SOCKET,
                          LabCertificates(directory / "tls"),
                          source_address=gateway_mail_source(entry["name"]))


# --- running -------------------------------------------------------------------------------
@dataclass
class Hosts:
    """The multi-host parts of a lab, from its ``lab.json``."""

    directory: Path
    description: dict[str, Any]

    @property
    def gateways(self) -> list[dict[str, str]]:
        return list(self.description["gateways"])

    @property
    def host_names(self) -> list[str]:
        """Every host: the ones a cut can name, each with a cgroup of its own."""
        return [PRIMARY_HOST, STANDBY_HOST, STATE_PART, *(g["name"] for g in self.gateways)]

    @property
    def cgroups(self) -> HostCgroups:
        return HostCgroups.of(cgroup_name(self.directory))

    def run(self, host: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``mailcontinuity ARGS`` run as ``host``: with its configuration, in its cgroup (a
        cut applies to it as to the host's daemons); stdout and stderr captured as text."""
        if host not in self.host_names:
            raise LabError(f"no lab host {host!r}; choose among {', '.join(self.host_names)}")
        config = (["--config", str(host_config_file(self.directory, host))]
                  if host in self.description["hosts"] else [])
        return run_on_host(self.cgroups, host,
                           [sys.executable, "-m", "mailcontinuity", *config, *args], **kwargs)

    def config(self, name: str) -> Config:
        return load_config(Path(self.description["hosts"][name]["config"]))

    def store_server(self) -> PostgresServer:
        return postgres_server(self.directory, parse_endpoint(self.description["state"]["listen"]))

    def gateway(self, name: str) -> PostfixGateway:
        for entry in self.gateways:
            if entry["name"] == name:
                return gateway_postfix(self.directory, entry)
        raise LabError(f"no lab gateway {name!r}")

    def daemon(self, host: str, name: str, ready: Callable[[], bool]) -> DaemonPart:
        return DaemonPart(name, host_config_file(self.directory, host),
                          host_dir(self.directory, host) / "daemons", ready)

    def parts(self, primary: LabPart, standby: LabPart,
              webmail: dict[str, LabPart]) -> dict[str, LabPart]:
        """Every part in start order: the store, the mail stores, the standby host's agent,
        then each gateway's milter, policyd and Postfix."""
        standby_config = self.config(STANDBY_HOST)
        found: dict[str, LabPart] = {STATE_PART: self.store_server(), PRIMARY_HOST: primary,
                                     STANDBY_HOST: standby,
                                     "sync-agent": self.daemon(STANDBY_HOST, "sync-agent",
                                                               sync_agent_ready(standby_config))}
        for entry in self.gateways:
            name = entry["name"]
            config = load_config(Path(entry["config"]))
            socket = config.policyd.socket
            assert socket is not None, "the lab's policyd listens on a unix socket"
            found[f"{name}/milter"] = self.daemon(name, "milter", _milter_ready(config))
            found[f"{name}/policyd"] = self.daemon(
                name, "policyd", _socket_ready(socket))
            found[f"{name}/gateway"] = self.gateway(name)
        try:
            cgroups = self.cgroups
        except LabError:  # no cgroup v2 here: 'lab up' says so; stop and down still work
            return {**found, **webmail}
        return {name: HostPart(part, part_host(name), cgroups)
                for name, part in {**found, **webmail}.items()}

    @staticmethod
    def alias(name: str) -> str:
        """The single-host names (``milter``, ``policyd``, ``gateway``) are gw1's parts."""
        return f"gw1/{name}" if name in GATEWAY_PARTS else name


def part_host(name: str) -> str:
    """The host a part runs on: ``gwK/...`` on gwK; the sync agent and webmail on the
    standby; ``state``, ``primary``, ``standby`` their own."""
    host, _, part = name.partition("/")
    if part:
        return host
    return STANDBY_HOST if name in ("sync-agent", "webmail") else name


def _milter_ready(config: Config) -> Callable[[], bool]:
    return lambda: milter_accepts(config.milter.listen)


def _socket_ready(path: Path) -> Callable[[], bool]:
    return lambda: accepts_unix_connections(path)


def sync_agent_ready(config: Config) -> Callable[[], bool]:
    """Ready once an agent started after this call has written its heartbeat."""
    since = time.time()

    def ready() -> bool:
        try:
            store = open_store(config)
        except StateStoreError:
            return False
        try:
            beat = sync_agent_heartbeat(store)
        finally:
            store.close()
        return beat is not None and beat[1] >= since

    return ready
