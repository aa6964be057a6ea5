"""The local lab: a primary Dovecot, a standby Dovecot and a Postfix gateway under one directory.

This is the controller that ``mailcontinuity lab``, the test fixtures and ``make demo`` all use,
so the tests exercise the same wiring an operator sees. ``DIR/lab.json`` (a contract) tells
scripts where everything listens; ``DIR/mailcontinuity.toml`` is a real configuration for it.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mailcontinuity.config import Config, Endpoint, load_config, parse_endpoint
from mailcontinuity.deploy.settings import (
    dovecot_lmtp_settings,
    dovecot_standby_hardening,
    journal_mark_filter_script,
)
from mailcontinuity.journal.listener import accepts_connections as milter_accepts
from mailcontinuity.lab.cyrus import CyrusInstance
from mailcontinuity.lab.daemon import DaemonPart
from mailcontinuity.lab.directory import (
    DIRECTORY_KINDS,
    LabDirectory,
    credentials_section,
    describe_directory,
    lab_directory,
    refresh_credentials,
    use_directory,
    write_dovecot_ldap_args,
)
from mailcontinuity.lab.dovecot import MAIL_USER, POSTFIX_AUTH_SOCKET, DovecotInstance, LabUser
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.gateway import LAB_OUTAGE_POSTMASTER, PostfixGateway
from mailcontinuity.lab.hosts import Hosts, create_hosts, postgres_server, sync_agent_ready
from mailcontinuity.lab.netcut import heal
from mailcontinuity.lab.oauth2 import LAB_OAUTH2_CLIENT_ID, LAB_SERVICE_ACCOUNT, TokenServicePart
from mailcontinuity.lab.postgres import PostgresServer
from mailcontinuity.lab.process import accepts_unix_connections, free_ports
from mailcontinuity.lab.profiles import ESTIMATED_SIZES, PROFILES, ProfiledDovecot
from mailcontinuity.lab.proxy import (
    ProxyDovecot,
    describe_proxy,
    primary_proxy_settings,
    proxy_config_section,
)
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.lab.webmail import Webmail
from mailcontinuity.mail.tls import Side, TLSPolicy

log = logging.getLogger(__name__)

LAB_DOMAIN = "example.test"
LAB_USERS = ("alice", "bob", "carol")
DRILL_PROBE = "probe"
ADMIN_LOGIN = "mcadmin"
REQUIRED_PROGRAMS = {
    "postfix": "postfix",
    "dovecot": "dovecot-core dovecot-imapd dovecot-lmtpd dovecot-managesieved dovecot-sieve"
    " dovecot-submissiond",
}
# ``lab up --primary``: which mail store plays the primary (lab.json's ``primary_kind``).
PRIMARY_KINDS = ("dovecot", "cyrus")
# ``lab up --state``: the state store's backend, chosen at creation. ``postgresql`` gives the
# single-host lab a PostgreSQL store of its own (part ``state``, as in the multi-host lab), so
# the lab tests can run on either backend; a multi-host lab always has one.
STATE_BACKENDS = ("sqlite", "postgresql")


# mailcontinuity daemons the lab runs, by CLI command name, each with a builder of its readiness
# check. They start after the mail stores and before the gateway, so the gateway never accepts
# mail before the milter and policyd serve.
LAB_DAEMONS: dict[str, Callable[[Lab], Callable[[], bool]]] = {
    "milter": lambda lab: lambda: milter_accepts(lab.config.milter.listen),
}
# The standby's journal LMTP listener: same port as its sieve listener, another loopback address,
# because Dovecot chooses LMTP plugins by local address (see required_settings).
JOURNAL_LMTP_HOST = "127.0.0.2"
# The monitor's own source address for its IMAP probes of the primary ([health]
# probe_source_address): Dovecot's login penalty is per client address, so guessers on
# 127.0.0.1 do not slow the probe's LOGIN.
PROBE_SOURCE = "127.0.0.7"
# The portal's own source address towards the standby's IMAP ([standby] webmail_address).
WEBMAIL_SOURCE = "127.0.0.9"


def _password() -> str:
    """A random lab password that never starts with "-": swaks, which the tests drive as users'
    clients, reads such a value as an option even in ``--auth-password=VALUE`` form."""
    return "p" + secrets.token_urlsafe(12)


def _sync_agent_ready(lab: Lab) -> Callable[[], bool]:
    """Ready once an agent started after this call has written its heartbeat."""
    return sync_agent_ready(lab.config)


LAB_DAEMONS["sync-agent"] = _sync_agent_ready


class LabPart(Protocol):
    """Anything the lab can stop and start by name."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def pid(self) -> int | None: ...


@dataclass
class Lab:
    """A lab's parts, reconstructed from its directory."""

    dir: Path
    config: Config
    users: list[LabUser]
    primary: DovecotInstance | CyrusInstance
    standby: DovecotInstance
    gateway: PostfixGateway
    webmail: Webmail | None = None
    """Roundcube on the standby, when the lab was started with ``lab up --webmail``."""
    directory: LabDirectory | None = None
    """The users' directory (slapd), when the lab was created with ``--directory ldap``."""
    proxy: ProxyDovecot | None = None
    """The client proxy (``imap_proxy`` in lab.json); labs created before it have none."""
    hosts: Hosts | None = None
    """The multi-host lab's hosts (``lab up --gateways N``, see ``lab.hosts``)."""
    oauth2: TokenServicePart | None = None
    """The OAuth2 token service a profiled primary (``--primary-profile``) validates logins
    with; started first, so that no login of mailcontinuity's finds it missing."""
    store_server: PostgresServer | None = None
    """The single-host lab's PostgreSQL store (``lab up --state postgresql``), part ``state``."""

    @property
    def parts(self) -> dict[str, LabPart]:
        """Start order; stop runs it backwards."""
        daemons = {
            name: DaemonPart(name, self.config_file, self.dir / "daemons", readiness(self))
            for name, readiness in LAB_DAEMONS.items()
        }
        webmail: dict[str, LabPart] = {"webmail": self.webmail} if self.webmail else {}
        directory: dict[str, LabPart] = {"directory": self.directory} if self.directory else {}
        proxy: dict[str, LabPart] = {"proxy": self.proxy} if self.proxy else {}
        oauth2: dict[str, LabPart] = {"oauth2": self.oauth2} if self.oauth2 else {}
        store: dict[str, LabPart] = {"state": self.store_server} if self.store_server else {}
        if self.hosts is not None:
            return {**oauth2, **directory, **self.hosts.parts(self.primary, self.standby, webmail),
                    **proxy}
        return {**store, **oauth2, **directory, "primary": self.primary, "standby": self.standby,
                **daemons,
                "gateway": self.gateway, **webmail, **proxy}

    @property
    def config_file(self) -> Path:
        """The configuration the lab's commands use (the standby host's in a multi-host lab)."""
        return self.config.source

    @property
    def primary_kind(self) -> str:
        return "cyrus" if isinstance(self.primary, CyrusInstance) else "dovecot"

    @classmethod
    def up(cls, directory: Path, user_count: int = len(LAB_USERS), webmail: bool = False,
           primary: str | None = None, primary_profile: str | None = None,
           directory_kind: str | None = None, gateways: int | None = None,
           state: str | None = None) -> Lab:
        """Create the lab in ``directory`` if needed, then start every part.

        ``user_count`` beyond the three named users adds ``user04``... (benchmarks);
        ``webmail`` adds Roundcube on the standby (kept on later ``up`` runs); ``primary`` is
        the primary's kind (one of PRIMARY_KINDS) and ``primary_profile`` the hosted service a
        Dovecot primary plays (lab/profiles.py), both chosen when the lab is created;
        ``directory_kind`` (``ldap``) puts the users in a directory both Dovecots ask;
        ``gateways`` (2 or more, at creation) makes it a multi-host lab (``lab.hosts``);
        ``state`` (one of STATE_BACKENDS, at creation) is the state store's backend."""
        _check_programs()
        directory = directory.absolute()
        _prepare_directory(directory)
        if (directory / "lab.json").exists():
            lab = cls.load(directory)
            if primary is not None and primary != lab.primary_kind:
                raise LabError(f"the lab in {directory} has a {lab.primary_kind} primary, not"
                               f" {primary}; take it down and use another directory")
            if state is not None and state != lab.config.state.backend:
                raise LabError(f"the lab in {directory} has a {lab.config.state.backend} state"
                               f" store, not {state}; take it down and use another directory")
        else:
            lab = cls._create(directory, user_count, primary or "dovecot", primary_profile,
                              directory_kind, gateways, state)
        if directory_kind is not None and lab.directory is None:
            raise LabError(f"the lab in {directory} has no directory; take it down and use"
                           " another directory with --directory")
        if webmail and lab.webmail is None:
            lab = lab._add_webmail()
        if lab.hosts is not None:  # each host's parts start in its cgroup (lab.cgroups)
            lab.hosts.cgroups.create(lab.hosts.host_names)
        for part in lab.parts.values():
            part.start()
        if lab.directory is not None:
            refresh_credentials(lab.config)
        log.info("event=lab_up dir=%s", directory)
        return lab

    @classmethod
    def down(cls, directory: Path) -> None:
        """Stop every part of the lab in ``directory``; a lab already down is fine."""
        if not (directory / "lab.json").exists():
            return
        lab = cls.load(directory.absolute())
        failures = []
        for name, part in reversed(lab.parts.items()):
            try:
                part.stop()
            except LabError as exc:  # stop the rest regardless, then report
                failures.append(f"{name}: {exc}")
        try:
            heal(directory.absolute())  # the lab's nft table, if 'lab isolate' made one
        except LabError as exc:
            failures.append(f"cuts: {exc}")
        if lab.hosts is not None:
            try:
                lab.hosts.cgroups.remove()  # the hosts' cgroups, and anything left in them
            except LabError as exc:
                failures.append(f"cgroups: {exc}")
        if failures:
            raise LabError("; ".join(failures))
        log.info("event=lab_down dir=%s", directory)

    def _add_webmail(self) -> Lab:
        """Give the lab a webmail port and configuration; ``lab.json`` gets its URL, and the
        configuration's ``standby.webmail`` too, so that the monitor watches it (policyd is
        restarted by ``up`` to read it)."""
        description = json.loads((self.dir / "lab.json").read_text())
        description["webmail"] = f"https://127.0.0.1:{free_ports(1)[0]}/"
        self.part("policyd").stop()
        text = self.config_file.read_text()
        self.config_file.write_text(text.replace(
            "\n[standby]\n", f"\n[standby]\nwebmail = {json.dumps(description['webmail'])}\n", 1))
        lab = Lab.load(self.dir, description)
        assert lab.webmail is not None
        lab.webmail.write_config()
        _write_lab_json(self.dir, description)
        return lab

    def part(self, name: str) -> LabPart:
        if self.hosts is not None:
            name = self.hosts.alias(name)
        try:
            return self.parts[name]
        except KeyError:
            raise LabError(
                f"no lab part named {name!r}; choose one of {', '.join(self.parts)}"
            ) from None

    def running(self) -> dict[str, bool]:
        return {name: part.pid() is not None for name, part in self.parts.items()}

    @classmethod
    def _create(cls, directory: Path, user_count: int, primary_kind: str,
                primary_profile: str | None = None, directory_kind: str | None = None,
                gateways: int | None = None, state: str | None = None) -> Lab:
        if primary_kind not in PRIMARY_KINDS:
            raise LabError(f"unknown primary {primary_kind!r}; one of {', '.join(PRIMARY_KINDS)}")
        if primary_profile is not None and (primary_kind != "dovecot"
                                            or primary_profile not in PROFILES):
            raise LabError(f"--primary-profile is one of {', '.join(PROFILES)}, for the"
                           " Dovecot primary only")
        if state is None:
            state = "sqlite" if gateways is None else "postgresql"
        if state not in STATE_BACKENDS or (gateways is not None and state != "postgresql"):
            raise LabError(f"--state is one of {', '.join(STATE_BACKENDS)}; a multi-host lab"
                           " (--gateways) shares a postgresql store")
        listeners = {
            "gateway": ("smtp",),
            "primary": ("imap", "lmtp", "managesieve"),
            "standby": ("imap", "lmtp", "managesieve", "submission"),
        }
        if directory_kind is not None and (directory_kind not in DIRECTORY_KINDS
                                           or primary_kind != "dovecot"):
            raise LabError(f"--directory is one of {', '.join(DIRECTORY_KINDS)}, with the"
                           " Dovecot primary only")
        numbers = iter(free_ports(sum(len(names) for names in listeners.values()) + 7))
        ports = {role: {name: next(numbers) for name in names} for role, names in listeners.items()}
        gateway_submission = next(numbers)  # in the config only: lab.json keeps its shape
        metrics_port = next(numbers)  # likewise
        standby_relay = next(numbers)  # likewise
        # Exchange's estimated sizes: mailcontinuity reaches that primary through lab.imapsize.
        sizes_proxy = next(numbers) if primary_profile in ESTIMATED_SIZES else None
        users = [
            {"address": f"{name}@{LAB_DOMAIN}", "login": f"{name}@{LAB_DOMAIN}",
             "password": _password()}
            for name in [*LAB_USERS, *(f"user{n:02d}" for n in range(4, user_count + 1)),
                         DRILL_PROBE]
        ]
        description: dict[str, Any] = {
            role: {key: f"127.0.0.1:{port}" for key, port in listeners.items()}
            for role, listeners in ports.items()
        }
        description |= {
            "users": users,
            "domains": [LAB_DOMAIN],
            "config": str(directory / "mailcontinuity.toml"),
            "primary_kind": primary_kind,
            **({"primary_profile": primary_profile} if primary_profile else {}),
            **({"directory": describe_directory(directory, directory_kind, next(numbers))}
               if directory_kind else {}),
        }
        primary_submission = describe_proxy(description, primary_kind)
        secrets_dir = directory / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        admin_file = secrets_dir / "admin-password"
        admin_file.touch(mode=0o600)
        admin_file.write_text(_password() + "\n")
        probe_file = secrets_dir / "drill-probe-password"
        probe_file.touch(mode=0o600)
        probe_file.write_text(users[-1]["password"] + "\n")
        LabCertificates(directory / "tls").create()
        oauth2 = None
        if primary_profile is not None:  # the token service's port: in the config only
            oauth2 = _token_service(directory, parse_endpoint(f"127.0.0.1:{next(numbers)}"))
            oauth2.create()
        text = (_render_config(directory, description, gateway_submission, metrics_port,
                               standby_relay, primary_submission, oauth2, sizes_proxy)
                + (credentials_section(directory, description) if directory_kind else ""))
        if state == "postgresql" and gateways is None:
            server = postgres_server(directory, Endpoint("127.0.0.1", next(numbers)))
            server.write_config()  # the role and database are made at its first start
            text = text.replace(_sqlite_state_section(directory), _postgres_state_section(server))
            description["state"] = {"url": server.url, "listen": str(server.listen)}
        (directory / "mailcontinuity.toml").write_text(text)
        _write_lab_json(directory, description)
        if gateways is not None:
            description = create_hosts(directory, description, gateways)
            _write_lab_json(directory, description)
            (directory / "mailcontinuity.toml").unlink()  # each host has its own
        lab = cls.load(directory)
        if lab.directory is not None:
            lab.directory.write_config()
            assert isinstance(lab.primary, DovecotInstance)
            write_dovecot_ldap_args(lab.config, lab.primary, lab.standby)
        lab.primary.write_config()
        lab.standby.write_config()
        lab.standby.install_global_sieve(lab.config.standby.journal_mark_filter,
                                         journal_mark_filter_script())
        # gw1's Postfix, in a multi-host lab, with gw1's configuration and source address.
        (lab.hosts.gateway("gw1") if lab.hosts is not None else lab.gateway).write_config()
        if lab.proxy is not None:
            lab.proxy.write_config()
        return lab

    @classmethod
    def load(cls, directory: Path, description: dict[str, Any] | None = None) -> Lab:
        if description is None:
            try:
                description = json.loads((directory / "lab.json").read_text())
            except (OSError, ValueError) as exc:
                raise LabError(f"{directory}/lab.json: {exc}; run 'mailcontinuity lab up'"
                               ) from None
        config = load_config(Path(description["config"]))
        users = [LabUser(user["address"], user["password"]) for user in description["users"]]
        admin = LabUser(ADMIN_LOGIN, (directory / "secrets" / "admin-password").read_text().strip())
        gateway_smtp = parse_endpoint(description["gateway"]["smtp"])

        def dovecot(role: str, protocols: dict[str, str]) -> DovecotInstance:
            listeners = {protocol: parse_endpoint(description[role][key])
                         for protocol, key in protocols.items()}
            return DovecotInstance(role, directory / role, listeners, users, admin, gateway_smtp,
                                   LabCertificates(directory / "tls"))

        primary_listeners = {"imap": "imap", "lmtp": "lmtp", "sieve": "managesieve"}
        primary: DovecotInstance | CyrusInstance
        oauth2 = None
        if description.get("primary_kind") == "cyrus":
            primary = CyrusInstance(
                "primary", directory / "primary",
                {protocol: parse_endpoint(description["primary"][key])
                 for protocol, key in primary_listeners.items()},
                users, admin, LabCertificates(directory / "tls"))
        else:
            primary = dovecot("primary", primary_listeners)
            if config.primary.submission is not None:  # in the config only, like the gateway's
                primary.listeners["submission"] = config.primary.submission
            primary.settings |= primary_proxy_settings(config)
            if description.get("primary_profile"):
                assert config.sync.oauth2_token_url is not None, "a profile logs in by XOAUTH2"
                oauth2 = _token_service(directory, parse_endpoint(
                    config.sync.oauth2_token_url.split("://", 1)[1].split("/", 1)[0]))
                # primary.imap is the sizes proxy where the profile has one (lab.imapsize).
                reached = config.primary.imap
                primary = ProfiledDovecot(
                    **vars(primary), profile=description["primary_profile"], oauth2_url=oauth2.url,
                    sizes_proxy=reached if reached != primary.listeners["imap"] else None)
        standby = dovecot("standby", {"imap": "imap", "lmtp": "lmtp", "sieve": "managesieve",
                                      "submission": "submission"})
        standby.journal_lmtp = config.milter.lmtp
        standby.lmtp_plugins = dovecot_lmtp_settings(config)
        standby.settings = dovecot_standby_hardening(config)
        lab_dir = None
        if "directory" in description:
            lab_dir = lab_directory(directory, description, users)
            assert isinstance(primary, DovecotInstance)
            use_directory(config, primary, standby)
        webmail = None
        if "webmail" in description:
            webmail = Webmail(directory / "webmail",
                              parse_endpoint(description["webmail"].split("://", 1)[1]
                                             .rstrip("/")),
                              standby.listeners["imap"], standby.listeners["submission"],
                              config.standby.webmail_address,
                              LabCertificates(directory / "tls")
                              if description["webmail"].startswith("https://") else None,
                              standby.listeners["sieve"], config.portal.status_file)

        return cls(
            dir=directory,
            config=config,
            users=users,
            primary=primary,
            standby=standby,
            gateway=PostfixGateway(directory / "gateway", gateway_smtp, config,
                                   config.gateway.submission,
                                   directory / "standby" / "run" / POSTFIX_AUTH_SOCKET,
                                   LabCertificates(directory / "tls")),
            webmail=webmail,
            directory=lab_dir,
            proxy=ProxyDovecot.of(directory, config),
            hosts=Hosts(directory, description) if "gateways" in description else None,
            oauth2=oauth2,
            store_server=(postgres_server(directory, parse_endpoint(description["state"]["listen"]))
                          if "state" in description and "gateways" not in description
                          else None),
        )

    @classmethod
    @contextmanager
    def temporary(cls, prefix: str = "mclab-", parent: Path = Path("/tmp"),
                  **up: Any) -> Iterator[Lab]:
        """A lab in a fresh directory under ``parent``, brought down and removed afterwards even
        if it failed half-way up: the test session's lab and the benchmarks' labs. A benchmark
        passes another ``parent`` to measure on another file system (the lab's queues, spool
        and Maildirs all live in its directory)."""
        directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        try:
            yield cls.up(directory, **up)
        finally:
            cls.down(directory)
            shutil.rmtree(directory, ignore_errors=True)

    def tls(self, side: Side) -> TLSPolicy:
        """How the lab's configuration reaches ``side``: STARTTLS verified by the lab's CA."""
        return TLSPolicy.of(self.config, side)

    def endpoint(self, role: str, protocol: str) -> Endpoint:
        """A listener of a lab part, e.g. ``endpoint("standby", "imap")``."""
        instance = {"primary": self.primary, "standby": self.standby}[role]
        return instance.listeners[protocol]


def _policyd_ready(lab: Lab) -> Callable[[], bool]:
    socket_path = lab.config.policyd.socket
    assert socket_path is not None, "the lab's policyd listens on a unix socket"
    return lambda: accepts_unix_connections(socket_path)


LAB_DAEMONS["policyd"] = _policyd_ready

# Short timings so that tests see a failover within about a second and a failback within a few;
# bench/ strips this section to measure with the defaults.
LAB_HEALTH_SECTION = """[health]
interval_seconds = 0.5
timeout_seconds = 1.0
failures = 3
failure_window_seconds = 1.0
successes = 2
hold_down_seconds = 3.0
"""

# The lab runs no syslog daemon; tests that check the syslog copy of audit records point this at
# a datagram socket they bind.
LAB_AUDIT_SECTION = """
[audit]
syslog_socket = false
"""


def _token_service(directory: Path, listen: Endpoint) -> TokenServicePart:
    secrets_dir = directory / "secrets"
    return TokenServicePart(directory / "oauth2", listen, LAB_DOMAIN,
                            secrets_dir / "oauth2-client-secret",
                            secrets_dir / "oauth2-service-account.json")


def _render_config(directory: Path, description: dict[str, Any], gateway_submission: int,
                   metrics_port: int, standby_relay: int,
                   primary_submission_port: int | None = None,
                   oauth2: TokenServicePart | None = None,
                   primary_imap_port: int | None = None) -> str:

    primary, standby = description["primary"], description["standby"]
    standby_lmtp_port = standby["lmtp"].rpartition(":")[2]
    ca_file = json.dumps(str(LabCertificates(directory / "tls").ca_file))
    primary_submission = (f'submission = "127.0.0.1:{primary_submission_port}"\n'
                          if primary_submission_port else "")
    if description["primary_kind"] == "cyrus":
        # No master users: an admin with proxy authentication; the health probe logs in as
        # the drill's probe user with its own password.
        sync_login = 'login_method = "sasl_plain"'
        probe_login, probe_secret = f"{DRILL_PROBE}@{LAB_DOMAIN}", "drill-probe-password"
        # Cyrus' lmtpd offers no STARTTLS to pre-authorised TCP clients (Postfix delivers
        # without AUTH), and primary.tls covers delivery and IMAP alike: loopback in clear.
        primary_tls = "none"
    else:
        primary_tls = "starttls"
        sync_login = 'login_method = "master_user"'
        probe_login = f"{description['users'][0]['login']}*{ADMIN_LOGIN}"
        probe_secret = "admin-password"
    admin_file = json.dumps(str(directory / "secrets" / "admin-password"))
    sync_secret, sieve_section = admin_file, ""
    probe_settings = (f'imap_login = "{probe_login}"\nimap_password_file = '
                      f'{json.dumps(str(directory / "secrets" / probe_secret))}\n')
    if oauth2 is not None:
        # A hosted service: XOAUTH2 with the lab's token service, as Microsoft 365 (an app's
        # client credentials) or Google (a service account's JWT-bearer grant) would be used.
        # The probe opens the drill's probe mailbox that way too; sieve-sync keeps the
        # standby's master user for the standby.
        gmail = description.get("primary_profile") == "gmail"
        sync_login = (f'login_method = "xoauth2"\noauth2_token_url = "{oauth2.url}/token"\n'
                      + ('oauth2_grant = "jwt_bearer"\n'
                         f'oauth2_client_id = "{LAB_SERVICE_ACCOUNT}"\n'
                         'oauth2_scope = "https://mail.google.com/"' if gmail else
                         'oauth2_grant = "client_credentials"\n'
                         f'oauth2_client_id = "{LAB_OAUTH2_CLIENT_ID}"'))
        sync_secret = json.dumps(str(oauth2.key_file if gmail else oauth2.secret_file))
        probe_settings = f'imap_login = "{DRILL_PROBE}@{LAB_DOMAIN}"\nimap_login_method = "sync"\n'
        sieve_section = (f'\n[sieve]\nstandby_admin_login = "{ADMIN_LOGIN}"\n'
                         f"standby_password_file = {admin_file}\n")
    return f"""# mailcontinuity configuration for the lab in {directory}
hooks_dir = {json.dumps(str(directory / "hooks"))}
hooks_timeout_seconds = 3

{_sqlite_state_section(directory)}
[domains]
protected = {json.dumps(description["domains"])}

[primary]
delivery = "lmtp:{primary["lmtp"]}"
imap = "{f"127.0.0.1:{primary_imap_port}" if primary_imap_port else primary["imap"]}"
managesieve = "{primary["managesieve"]}"
{primary_submission}tls = "{primary_tls}"
tls_ca_file = {ca_file}

[standby]
imap = "{standby["imap"]}"
lmtp = "{standby["lmtp"]}"
submission = "{standby["submission"]}"
managesieve = "{standby["managesieve"]}"
maildir = {json.dumps(str(directory / "standby" / "mail" / "%d" / "%n" / "Maildir"))}
webmail_address = "{WEBMAIL_SOURCE}"
journal_mark_filter = {json.dumps(str(directory / "standby" / "sieve" / "strip-mark.sieve"))}
retention_days = 30
tls = "starttls"
tls_ca_file = {ca_file}

[gateway]
smtp = "{description["gateway"]["smtp"]}"
submission = "127.0.0.1:{gateway_submission}"
standby_relay = "127.0.0.1:{standby_relay}"
sender_login_map = {json.dumps(str(directory / "gateway" / "etc" / "sender_login"))}
sender_aliases = {json.dumps(str(directory / "gateway" / "etc" / "sender_aliases"))}
postfix_config_dir = {json.dumps(str(directory / "gateway" / "etc"))}
transport_map = {json.dumps(str(directory / "gateway" / "etc" / "transport"))}
tls_policy_map = {json.dumps(str(directory / "gateway" / "etc" / "tls_policy"))}
outage_aliases = {json.dumps(str(directory / "gateway" / "etc" / "outage_aliases.src"))}
outage_alias_map = {json.dumps(str(directory / "gateway" / "etc" / "outage_aliases"))}
outage_postmaster = "{LAB_OUTAGE_POSTMASTER}"
tls = "starttls"
tls_ca_file = {ca_file}

[drill]
probe_address = "{DRILL_PROBE}@{LAB_DOMAIN}"
probe_password_file = {json.dumps(str(directory / "secrets" / "drill-probe-password"))}
report_dir = {json.dumps(str(directory / "drills"))}
step_timeout = 15

[milter]
# A unix socket: over TCP, Nagle and delayed ACKs cost ~100 ms per message (docs/benchmarks.md).
listen = "unix:{directory / "milter" / "journal.sock"}"
sink = "maildir"
spool_dir = {json.dumps(str(directory / "spool"))}
mail_owner = "{MAIL_USER}"
doveadm_config = {json.dumps(str(directory / "standby" / "dovecot.conf"))}
# The standby's second LMTP listener, without sieve (used when sink = "lmtp").
lmtp = "{JOURNAL_LMTP_HOST}:{standby_lmtp_port}"
retry_initial_seconds = 0.5
retry_max_seconds = 5
# Short, so that a stopped standby is noticed at once (tests); production keeps the default.
recipient_cache_seconds = 1

[sync]
{sync_login}
admin_login = "{ADMIN_LOGIN}"
password_file = {sync_secret}
# The follow pass changes the standby's journal copies under the tests' feet: the lab runs it
# when a test or `mailcontinuity follow` asks.
follow_interval_seconds = 0
{sieve_section}
[policyd]
socket = {json.dumps(str(directory / "daemons" / "policyd.sock"))}

{LAB_HEALTH_SECTION}{probe_settings}probe_source_address = "{PROBE_SOURCE}"

[watch]
# Short, so that a test that leaves the milter out on purpose flags the lab only briefly.
journal_pace_seconds = 30

[failback]
mode = "auto"

[metrics]
enabled = true
listen = "127.0.0.1:{metrics_port}"

[portal]
status_file = {json.dumps(str(directory / "portal" / "status.json"))}
contact = "the lab's help desk, help@{LAB_DOMAIN}"
{LAB_AUDIT_SECTION}{proxy_config_section(directory, description)}"""


def _sqlite_state_section(directory: Path) -> str:
    return f"""[state]
path = {json.dumps(str(directory / "state" / "state.db"))}
"""


def _postgres_state_section(server: PostgresServer) -> str:
    """The store as the multi-host lab's hosts reach it (``lab.hosts.host_config``)."""
    return f"""[state]
url = {json.dumps(server.url)}
password_file = {json.dumps(str(server.password_file))}
tls_ca_file = {json.dumps(str(server.certificates.ca_file))}
connect_timeout_seconds = 2
"""


def _write_lab_json(directory: Path, description: dict[str, Any]) -> None:
    """lab.json holds the users' passwords (contract): root may read it, nobody else."""
    path = directory / "lab.json"
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(description, indent=2) + "\n")


def _check_programs() -> None:
    missing = [pkg for program, pkg in REQUIRED_PROGRAMS.items() if shutil.which(program) is None]
    if missing:
        raise LabError(f"the lab needs Debian's packages: apt-get install {' '.join(missing)}")


def _prepare_directory(directory: Path) -> None:
    """The mail daemons run as postfix/dovecot/mail and must be able to reach the lab files."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for ancestor in directory.parents:
        if not ancestor.stat().st_mode & stat.S_IXOTH:
            raise LabError(
                f"lab directory {directory}: {ancestor} is not searchable by other users, so"
                " Postfix and Dovecot cannot reach it; choose a directory such as /srv/mclab"
            )
