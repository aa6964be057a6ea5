"""The lab's client proxy: a third private Dovecot that only proxies (part ``proxy``).

It plays the organisation's ``imap.example.org``/``smtp.example.org``: ``lab.json``'s
``imap_proxy`` and ``submission_proxy`` (contract) name it, and the lab's ``[proxy]`` section
steers it with the state like any installation (mailcontinuity.deploy.proxy). Its settings are
exactly what ``check-config`` prints; only the instance's own paths are added here.
"""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import json
import logging
import shutil
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from imapclient import IMAPClient

from mailcontinuity.config import Config, Endpoint, parse_endpoint
from mailcontinuity.deploy.proxy import dovecot_proxy_settings, write_route_file
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.process import free_ports, read_pid, stop_process_tree, wait_for
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.mail.tools import CommandError, run_command
from mailcontinuity.store.db import open_store
from mailcontinuity.store.state import current_state
from mailcontinuity.transitions import ROUTE_IN_STATE

log = logging.getLogger(__name__)
T = TypeVar("T")

# The proxy's own source address towards the stores ([proxy] source_address): the standby trusts
# it to report clients' addresses, and nothing else in the lab connects from it.
PROXY_SOURCE = "127.0.0.11"
IMAP_KEY = "imap_proxy"
SUBMISSION_KEY = "submission_proxy"


def describe_proxy(description: dict[str, Any], primary_kind: str) -> int | None:
    """Give a new lab's description the proxy's listeners (lab.json, contract names); return
    the port of the primary's submission listener, which only the configuration names
    (``primary.submission``: lab.json's ``primary`` keeps its shape).

    Submission is proxied when the primary has a submission listener to send it to (the
    Dovecot primary; the lab's Cyrus has none)."""
    imap, submission, primary_submission = free_ports(3)
    description[IMAP_KEY] = f"127.0.0.1:{imap}"
    if primary_kind != "dovecot":
        return None
    description[SUBMISSION_KEY] = f"127.0.0.1:{submission}"
    return primary_submission


def proxy_config_section(directory: Path, description: dict[str, Any]) -> str:
    """The lab configuration's ``[proxy]`` section (empty for a lab without a proxy)."""
    if IMAP_KEY not in description:
        return ""
    tls = LabCertificates(directory / "tls")
    submission = (f'submission = "{description[SUBMISSION_KEY]}"\n'
                  if SUBMISSION_KEY in description else "")
    return f"""
[proxy]
imap = "{description[IMAP_KEY]}"
{submission}tls_cert_file = {json.dumps(str(tls.cert_file))}
tls_key_file = {json.dumps(str(tls.key_file))}
route_file = {json.dumps(str(directory / "proxy" / "route"))}
doveadm_config = {json.dumps(str(directory / "proxy" / "dovecot.conf"))}
source_address = "{PROXY_SOURCE}"
"""


def primary_proxy_settings(config: Config) -> dict[str, str]:
    """What the lab's Dovecot primary adds for the proxy, as an administrator would: its
    submission relays through the gateway, and it trusts the proxy's source address to report
    clients' own (docs/clients.md)."""
    proxy = config.proxy
    if proxy is None or config.primary.submission is None:
        return {}
    settings = {"submission_relay_host": config.gateway.smtp.host,
                "submission_relay_port": str(config.gateway.smtp.port)}
    if proxy.source_address is not None:
        settings["login_trusted_networks"] = f"{proxy.source_address}/32"
    return settings


@dataclass
class ProxyDovecot:
    """The proxy instance under ``root``; routes follow the lab's state store."""

    root: Path
    config: Config

    @classmethod
    def of(cls, directory: Path, config: Config) -> ProxyDovecot | None:
        return None if config.proxy is None else cls(directory / "proxy", config)

    @property
    def listeners(self) -> dict[str, Endpoint]:
        proxy = self.config.proxy
        assert proxy is not None, "ProxyDovecot.of builds it only with a [proxy] section"
        return {"imap": proxy.imap,
                **({"submission": proxy.submission} if proxy.submission else {})}

    @property
    def config_file(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "dovecot.log"

    def write_config(self) -> None:
        for sub in ("run", "state", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        instance = hashlib.sha1(bytes(self.root)).hexdigest()[:8]
        self.config_file.write_text(
            f"""# Lab client proxy, written by mailcontinuity lab; do not edit.
instance_name = mailcontinuity-proxy-{instance}
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.log_file}
hostname = proxy.lab.test
{dovecot_proxy_settings(self.config)}""")

    def pid(self) -> int | None:
        return read_pid(self.root / "run" / "master.pid")

    def start(self) -> None:
        """Start with the route of the current state, as an installed proxy keeps it."""
        if self.pid() is not None:
            return
        if not self.config_file.exists():
            self.write_config()
        store = open_store(self.config)
        try:
            route = ROUTE_IN_STATE[current_state(store).name]
        finally:
            store.close()
        write_route_file(self.config, route)
        if shutil.which("dovecot") is None:
            raise LabError("dovecot not found: apt-get install dovecot-core dovecot-imapd"
                           " dovecot-submissiond")
        try:
            run_command(["dovecot", "-c", str(self.config_file)])
        except CommandError as exc:
            raise LabError(f"proxy dovecot did not start: {exc} (log: {self.log_file})"
                           ) from None
        wait_for(self.listeners.values(), up=True, what="proxy dovecot")

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        stop_process_tree(pid)
        wait_for(self.listeners.values(), up=False, what="proxy dovecot")

    def destinations(self) -> dict[str, set[int]]:
        """The store port each logged-in user's sessions are proxied to now, by login
        (``doveadm proxy list``: one table per login process, each with its own header)."""
        output = run_command(["doveadm", "-c", str(self.config_file), "proxy", "list"])
        found: dict[str, set[int]] = {}
        for line in output.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0] != "username" and fields[-1].isdigit():
                found.setdefault(fields[0], set()).add(int(fields[-1]))
        return found


class ReconnectingClient:
    """An IMAP client as users run them: one server name for good, STARTTLS verified, and a
    new connection when the old one is dropped (Thunderbird and the like do that on their next
    action). ``reconnects`` counts the connections made after the first."""

    def __init__(self, endpoint: Endpoint, login: str, password: str, ca_file: Path,
                 timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self._login = (login, password)
        self._context = ssl.create_default_context(cafile=str(ca_file))
        self._timeout = timeout
        self.client: IMAPClient | None = None
        self.connections = 0

    @property
    def reconnects(self) -> int:
        return max(self.connections - 1, 0)

    def connect(self) -> IMAPClient:
        self.close()
        client = IMAPClient(self.endpoint.host, self.endpoint.port, ssl=False,
                            timeout=self._timeout)
        try:
            client.starttls(self._context)
            client.login(*self._login)
            client.select_folder("INBOX")
        except BaseException:
            _shut(client)
            raise
        self.connections += 1
        self.client = client
        return client

    def run(self, action: Callable[[IMAPClient], T]) -> T:
        """``action`` on the open session; on a dropped connection, once more on a new one."""
        if self.client is None:
            return action(self.connect())
        try:
            return action(self.client)
        except (imaplib.IMAP4.abort, OSError) as exc:
            log.info("event=client_reconnect endpoint=%s error=%r", self.endpoint, str(exc))
            return action(self.connect())

    def attempt(self, action: Callable[[IMAPClient], T]) -> T | None:
        """``run``, or None while the service is unavailable (for ``eventually``)."""
        try:
            return self.run(action)
        except (imaplib.IMAP4.error, OSError) as exc:
            log.info("event=client_unavailable endpoint=%s error=%r", self.endpoint, str(exc))
            self.close()
            return None

    def close(self) -> None:
        if self.client is not None:
            _shut(self.client)
            self.client = None


def _shut(client: IMAPClient) -> None:
    """Log out if the server still listens, else just drop the socket."""
    try:
        client.logout()
    except (imaplib.IMAP4.error, OSError):
        with contextlib.suppress(OSError):
            client.shutdown()


def proxy_endpoint(description: dict[str, Any], key: str = IMAP_KEY) -> Endpoint:
    """``lab.json``'s proxy listener (``imap_proxy`` or ``submission_proxy``)."""
    try:
        return parse_endpoint(description[key])
    except KeyError:
        raise LabError(f"this lab has no {key} (created before the client proxy existed):"
                       " take it down and create a new one") from None
