"""The one configuration file, parsed into typed, validated objects.

Every daemon and command reads the same TOML file. A wrong key or value stops the program with a
single line that names the file, the key and what was expected, because an operator fixing a
config at 3 a.m. during an outage should not have to read a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

DEFAULT_CONFIG_PATH = Path("/etc/mailcontinuity/mailcontinuity.toml")
# The id header the gateway puts on every message (mail.headers); milter.id_header by default.
DEFAULT_ID_HEADER = "X-Mailcontinuity-Id"
CONFIG_ENV_VAR = "MAILCONTINUITY_CONFIG"
# The host name in shared records on a site without [cluster].
LOCAL_HOST = "local"


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator as one line."""


class Endpoint(NamedTuple):
    """A TCP endpoint written as ``host:port`` (IPv6 as ``[::1]:port``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class DeliveryEndpoint(NamedTuple):
    """Where the gateway hands mail to a mail store: ``lmtp:host:port`` or ``smtp:host:port``."""

    protocol: Literal["lmtp", "smtp"]
    endpoint: Endpoint

    def __str__(self) -> str:
        return f"{self.protocol}:{self.endpoint}"

    @property
    def postfix_nexthop(self) -> str:
        """The transport(5) value: brackets suppress MX lookups, as a fixed store needs."""
        host, port = self.endpoint
        if self.protocol == "lmtp":
            return f"lmtp:inet:[{host}]:{port}"
        return f"smtp:[{host}]:{port}"


def parse_endpoint(value: object) -> Endpoint:
    """Accept ``host:port``; reject anything Postfix or a socket would choke on later."""
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        raise ValueError('expected a string "host:port"')
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit():
        raise ValueError(f'expected "host:port", got {value!r}')
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} is out of range 1-65535")
    return Endpoint(host, number)


def parse_delivery_endpoint(value: object) -> DeliveryEndpoint:
    """Accept ``lmtp:host:port`` or ``smtp:host:port``."""
    if isinstance(value, DeliveryEndpoint):
        return value
    if not isinstance(value, str):
        raise ValueError('expected a string "lmtp:host:port" or "smtp:host:port"')
    protocol, sep, rest = value.partition(":")
    if not sep or protocol not in ("lmtp", "smtp"):
        raise ValueError(f'expected "lmtp:host:port" or "smtp:host:port", got {value!r}')
    return DeliveryEndpoint(protocol, parse_endpoint(rest))  # type: ignore[arg-type]


class UnixSocket(NamedTuple):
    """A local socket written as ``unix:/absolute/path``."""

    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


# sun_path holds 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107


def parse_socket(value: object) -> Endpoint | UnixSocket:
    """Accept ``unix:/absolute/path`` or ``host:port``."""
    if isinstance(value, (Endpoint, UnixSocket)):
        return value
    if isinstance(value, str) and value.startswith("unix:"):
        path = Path(value.removeprefix("unix:"))
        if not path.is_absolute():
            raise ValueError(f'expected "unix:/absolute/path", got {value!r}')
        if len(bytes(path)) > UNIX_PATH_MAX:
            raise ValueError(f"socket path longer than {UNIX_PATH_MAX} bytes: {value!r}")
        return UnixSocket(path)
    return parse_endpoint(value)


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


def parse_domain(value: object) -> str:
    """Lower-case a mail domain and reject what cannot be one (a stray ``@``, spaces)."""
    if not isinstance(value, str) or not _DOMAIN_RE.match(value.lower()):
        raise ValueError(f"expected a mail domain such as example.org, got {value!r}")
    return value.lower()


EndpointField = Annotated[Endpoint, BeforeValidator(parse_endpoint), PlainSerializer(str)]
DeliveryField = Annotated[
    DeliveryEndpoint, BeforeValidator(parse_delivery_endpoint), PlainSerializer(str)
]
DomainField = Annotated[str, BeforeValidator(parse_domain)]
SocketField = Annotated[
    Endpoint | UnixSocket, BeforeValidator(parse_socket), PlainSerializer(str)
]


def _accepts_path(annotation: Any) -> bool:
    """Whether a field's type is ``Path`` or a union with it (``Path | None``)."""
    return annotation is Path or Path in typing.get_args(annotation)


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are immutable once loaded, and
    types are strict: ``retention_days = "30"`` or ``concurrency = true`` is an error naming the
    key, never silently coerced. TOML has no path type, so a string is taken for a ``Path``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _paths_from_text(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {name: Path(value) if isinstance(value, str) and name in cls.model_fields
                and _accepts_path(cls.model_fields[name].annotation) else value
                for name, value in data.items()}


POSTGRES_SCHEMES = ("postgresql", "postgres")


def parse_store_url(value: object) -> str:
    """Accept ``postgresql://user@host[:port]/database``: no password in it (that goes into
    ``password_file``), no query string (TLS is set by ``tls``/``tls_ca_file``)."""
    if not isinstance(value, str):
        raise ValueError('expected a string "postgresql://user@host:port/database"')
    parts = urlsplit(value)
    if parts.scheme not in POSTGRES_SCHEMES:
        raise ValueError('expected "postgresql://user@host:port/database" (SQLite takes'
                         " 'path' instead)")
    if parts.password is not None:
        raise ValueError("the URL must not hold the password: put it in a file named by"
                         " 'state.password_file' (mode 0600)")
    if parts.query or parts.fragment:
        raise ValueError("no '?options' in the URL: TLS is set by 'state.tls' and"
                         " 'state.tls_ca_file'")
    if not parts.hostname or not parts.username or not parts.path.strip("/"):
        raise ValueError('expected "postgresql://user@host:port/database"')
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return value


StoreURLField = Annotated[str, BeforeValidator(parse_store_url)]


class StateSection(Section):
    """The state store every process shares: a SQLite file (one host, the default) or a
    PostgreSQL database (``url``, for several hosts)."""

    path: Path = Path("/var/lib/mailcontinuity/state.db")
    url: StoreURLField | None = None
    """``postgresql://user@host:port/database``: the shared store of a site with several
    hosts; ``path`` is not used then."""
    password_file: Path | None = None
    """The PostgreSQL user's password (scram-sha-256), when ``url`` is set."""
    tls: Literal["verify-full", "none"] = "verify-full"
    """``verify-full``: TLS, the server's certificate checked against ``tls_ca_file`` (or the
    system's CAs) and the URL's host name; ``none``: plaintext (a unix socket, a trusted
    network)."""
    tls_ca_file: Path | None = None
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    """How long a connection attempt or an unanswered request waits before the store counts as
    unreachable (the daemons then keep the last routing and retry)."""
    retention_days: int = Field(default=90, ge=1, le=3650)
    """How long ``prune`` keeps records nothing needs any more: journal index rows of copies
    already pruned, refused or for unknown users, the milter's alarms, and the per-message detail
    of outages merged that long ago (their summary stays for ``report``)."""

    @model_validator(mode="after")
    def _one_backend(self) -> StateSection:
        if self.url is not None and "path" in self.model_fields_set:
            raise ValueError("set 'url' (PostgreSQL) or 'path' (SQLite), not both")
        if self.url is None:
            for key in ("password_file", "tls_ca_file"):
                if getattr(self, key) is not None:
                    raise ValueError(f"'{key}' is for a PostgreSQL store: set 'url' too, or"
                                     f" remove '{key}'")
        return self

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self.url is None else "postgresql"

    @property
    def location(self) -> str:
        """Where the store is, for messages: the file, or the URL (which holds no secret)."""
        return str(self.path) if self.url is None else self.url


HOST_NAME_RE = r"^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$"
HostName = Annotated[str, Field(pattern=HOST_NAME_RE)]


class ClusterSection(Section):
    """A site whose parts live on several hosts: which host this is, which hosts are the MX
    gateways (each runs the milter and policyd), and where the standby's Maildirs are. Every
    host's configuration lists the same gateways; they share one PostgreSQL store."""

    host: HostName
    """This host's name, as the other hosts' configurations list it."""
    gateways: list[HostName] = Field(min_length=1)
    standby_host: HostName
    """The host with the standby's Maildirs: the sync agent runs there, and so does the merge
    at failback."""
    quorum: Literal["majority"] | Annotated[int, Field(ge=1, le=100)] = "majority"
    """How many gateways must see the primary down (or healthy again) before the state
    changes: ``majority`` of those that reported within ``report_rounds`` probe rounds, or a
    fixed number."""
    report_rounds: int = Field(default=3, ge=1, le=100)
    """A gateway counts towards the quorum while its last report is at most this many probe
    rounds old."""

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSection:
        if len(set(self.gateways)) != len(self.gateways):
            raise ValueError("'gateways' lists a host twice")
        if isinstance(self.quorum, int) and self.quorum > len(self.gateways):
            raise ValueError(f"quorum = {self.quorum} is more than the {len(self.gateways)}"
                             " gateways listed: failover could never happen")
        return self

    @property
    def hosts(self) -> list[str]:
        """Every host the configuration names, gateways first."""
        return [*self.gateways, *([] if self.standby_host in self.gateways
                                  else [self.standby_host])]

    @property
    def is_gateway(self) -> bool:
        return self.host in self.gateways

    @property
    def has_standby_maildirs(self) -> bool:
        return self.host == self.standby_host


class DomainsSection(Section):
    """The mail domains whose users the standby protects."""

    protected: list[DomainField] = Field(min_length=1)


class PeerSection(Section):
    """How mailcontinuity's own connections reach a mail system: encrypted and verified unless
    ``tls = "none"`` says otherwise (see mailcontinuity.tls)."""

    tls: Literal["starttls", "ssl", "none"] = "starttls"
    tls_ca_file: Path | None = None


class PrimarySection(PeerSection):
    """The primary mail system: where the gateway delivers and users read in normal times."""

    delivery: DeliveryField
    imap: EndpointField
    managesieve: EndpointField | None = None
    submission: EndpointField | None = None
    """The primary's submission service (STARTTLS), where the client proxy sends users'
    mail clients in normal times (``proxy.submission``)."""
    smtputf8: bool = False
    """Whether ``delivery`` offers SMTPUTF8 (Exchange and Gmail do; Dovecot 2.3 LMTP does not):
    without it the milter refuses internationalised mail at SMTP time rather than let Postfix
    accept it and bounce it (docs/international.md)."""


class StandbySection(PeerSection):
    """The standby Dovecot: journal target in normal times, the users' mailbox during an outage."""

    imap: EndpointField
    lmtp: EndpointField
    submission: EndpointField | None = None
    managesieve: EndpointField | None = None
    smtputf8: bool = False
    """Whether the standby's ``lmtp`` offers SMTPUTF8 (Dovecot 2.3 does not, whatever its
    settings): without it, internationalised mail is refused with 451 4.6.7 during an outage,
    never accepted and bounced. The drill checks the answer against the standby's LHLO."""
    maildir: str = "/var/vmail/%d/%n/Maildir"
    """Each user's Maildir on the standby (``%d``, ``%n``, ``%u``, ``%%``), as in its Dovecot
    ``mail_location``: where the journal's maildir sink writes and the sync agent watches."""
    retention_days: int = Field(default=30, ge=1, le=3650)
    webmail: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    """The emergency portal's URL on the standby, when there is one: the monitor checks that
    it answers, as it checks the standby's IMAP, LMTP and submission."""
    webmail_address: str | None = None
    """The address the portal (Roundcube) connects to the standby's IMAP from: the only client
    Dovecot trusts to report users' own addresses (``login_trusted_networks``)."""
    journal_clients: list[str] = []
    """The gateways' addresses as the standby sees them: the only hosts the firewall rules
    (``check-config --json``, the role) let reach the journal LMTP listener (``milter.lmtp``)."""

    @field_validator("journal_clients", "webmail_address")
    @classmethod
    def _addresses(cls, value: list[str] | str | None) -> list[str] | str | None:
        for address in [value] if isinstance(value, str) else value or []:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address") from None
        return value
    journal_mark_filter: Path = Path("/etc/dovecot/sieve/mailcontinuity-strip-journal-mark.sieve")
    """The Sieve script (``sieve_before``) that deletes a journal mark arriving on the normal
    LMTP listener: only the journal listener may deliver journal copies."""


class GatewaySection(PeerSection):
    """The Postfix gateway (MX) whose routing mailcontinuity switches; ``tls`` is how the
    standby's submission relays users' outgoing mail to it during an outage."""

    smtp: EndpointField = Endpoint("127.0.0.1", 25)
    submission: EndpointField | None = None
    postfix_config_dir: Path = Path("/etc/postfix")
    transport_map: Path = Path("/etc/postfix/mailcontinuity_transport")
    tls_policy_map: Path = Path("/etc/postfix/mailcontinuity_tls_policy")
    sender_login_map: Path = Path("/etc/postfix/mailcontinuity_sender_login")
    """The regexp table mailcontinuity writes: each address is owned by the login of that name."""
    sender_aliases: Path | None = None
    """The administrator's table of aliases and their owners (``texthash`` lines
    ``alias@domain owner-login, owner-login``), for both submissions."""
    standby_relay: EndpointField | None = None
    """A listener where the standby's submission relays users' mail with XCLIENT (their login),
    so that the gateway refuses senders they do not own; only the standby may use XCLIENT."""
    outage_aliases: Path | None = None
    """The primary's aliases, as a Postfix ``virtual(5)`` table (``alias@domain target,
    target``; ``@domain`` catch-alls): the gateway expands them during an outage only, so that
    mail to an alias reaches its targets' standby mailboxes. In normal times the primary expands
    its own aliases."""
    outage_postmaster: str | None = None
    """The mailbox that ``postmaster@`` and ``abuse@`` of every protected domain reach during an
    outage (RFC 5321 requires postmaster), unless ``outage_aliases`` names them itself."""
    outage_alias_map: Path = Path("/etc/postfix/mailcontinuity_outage_aliases")
    """The table mailcontinuity writes (``virtual_alias_maps``): empty in normal times, the
    outage aliases during one."""

    @field_validator("outage_postmaster")
    @classmethod
    def _mailbox(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^\s@<>,]+@[A-Za-z0-9.-]+", value):
            raise ValueError(f"{value!r} is not a mailbox address (user@domain)")
        return value


class ProxySection(Section):
    """A Dovecot proxy on the service names users' clients use (``imap.example.org``): it sends
    each login to the primary's or the standby's IMAP (and submission) with the continuity state,
    so clients need no reconfiguration (docs/clients.md). mailcontinuity rewrites ``route_file``
    on every failover and failback, reloads that Dovecot and kicks the sessions still proxied to
    the side users leave, so that they reconnect to the other one."""

    imap: EndpointField
    """The proxy's IMAP listener (STARTTLS), the address the IMAP service name resolves to."""
    imaps: EndpointField | None = None
    """An implicit-TLS IMAP listener (port 993), if clients use one."""
    submission: EndpointField | None = None
    """The proxy's submission listener (STARTTLS); needs ``primary.submission`` and
    ``standby.submission`` as destinations."""
    tls_cert_file: Path
    """The certificate (chain) clients see: the site's own, covering the service names."""
    tls_key_file: Path
    """Its private key (0600 root: Dovecot reads it as root before dropping privileges)."""
    route_file: Path = Path("/var/lib/mailcontinuity-proxy/route")
    """The passwd-file the proxy's passdb reads: one line per protocol naming the destination;
    mailcontinuity writes it (its directory writable by the daemons' user, searchable by
    Dovecot's), nobody else should."""
    doveadm_config: Path = Path("/etc/dovecot-proxy/dovecot.conf")
    """The proxy Dovecot's configuration, for ``doveadm reload`` and ``doveadm proxy kick``
    (it runs on the host that changes the state, the gateway's, as an instance of its own)."""
    source_address: str | None = None
    """The address the proxy connects to the mail stores from (Dovecot's ``source_ip``): the
    stores trust it in ``login_trusted_networks`` so that they see and penalise each client's
    own address, not the proxy's."""

    @field_validator("source_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address") from None
        return value


class DrillSection(Section):
    """The continuity drill's probe account and where its reports are archived."""

    probe_address: str | None = None
    probe_password_file: Path = Path("/etc/mailcontinuity/secrets/drill-probe-password")
    report_dir: Path = Path("/var/lib/mailcontinuity/drills")
    step_timeout: float = Field(default=30.0, gt=0, le=600)
    max_journal_lag_seconds: float = Field(default=60.0, gt=0)


class MilterSection(Section):
    """The journal milter: where it listens, where it spools, how it ships to the standby."""

    listen: SocketField = Endpoint("127.0.0.1", 8891)
    socket_group: str | None = "postfix"
    socket_mode: int = Field(default=0o660, ge=0, le=0o777)
    id_header: str = Field(default=DEFAULT_ID_HEADER, pattern=r"^[!-9;-~]+$")
    sink: Literal["maildir", "lmtp"] = "maildir"
    spool_dir: Path = Path("/var/spool/mailcontinuity")
    on_spool_error: Literal["accept", "tempfail"] = "accept"
    mail_owner: str = "vmail"
    doveadm_config: Path | None = None
    lmtp: EndpointField | None = None
    retry_initial_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=300.0, gt=0)
    recipient_cache_seconds: float = Field(default=300.0, ge=0)


class SyncSection(Section):
    """The sync agent and the failback merge: how to log into the primary as each user (a
    Dovecot master user or admin), and how hard to push it."""

    login_method: Literal["master_user", "sasl_plain", "xoauth2"] = "master_user"
    """How failback, verify and the preflight log in to the primary as each user:
    ``master_user`` sends ``LOGIN user<separator>admin`` (Dovecot master users);
    ``sasl_plain`` sends ``AUTHENTICATE PLAIN`` with the admin as authentication identity and
    the user as authorization identity (Cyrus admins, Dovecot master users, most servers with
    proxy authentication); ``xoauth2`` sends ``AUTHENTICATE XOAUTH2`` with the user and an
    app-only access token from ``oauth2_token_url`` (client-credentials grant: Microsoft 365
    with ``IMAP.AccessAsApp``); ``password_file`` then holds the client secret."""
    admin_login: str = "mailcontinuity"
    password_file: Path = Path("/etc/mailcontinuity/primary-admin-password")
    oauth2_token_url: str | None = None
    """The OAuth2 token endpoint (``xoauth2``): ``https://``, or ``http://`` on loopback only."""
    oauth2_client_id: str | None = None
    """The application (client) id registered with the provider (``xoauth2``)."""
    oauth2_grant: Literal["client_credentials", "jwt_bearer"] = "client_credentials"
    """How tokens are asked for (``xoauth2``): ``client_credentials`` (Microsoft 365 app-only:
    ``oauth2_client_id`` and its secret in ``password_file``) or ``jwt_bearer`` (a Google
    service account with domain-wide delegation: ``oauth2_client_id`` is its e-mail address,
    ``password_file`` its JSON key; a token per user)."""
    oauth2_scope: str = "https://outlook.office365.com/.default"
    """The scope asked for (``xoauth2``): Microsoft 365's IMAP app-only scope by default;
    ``https://mail.google.com/`` for Google."""

    @model_validator(mode="after")
    def _oauth2_complete(self) -> SyncSection:
        if self.login_method != "xoauth2":
            return self
        if not self.oauth2_token_url or not self.oauth2_client_id:
            raise ValueError('login_method = "xoauth2" needs oauth2_token_url and'
                             " oauth2_client_id (the app registered with the provider)")
        scheme, _, rest = self.oauth2_token_url.partition("://")
        host = rest.split("/", 1)[0].rpartition(":")[0] or rest.split("/", 1)[0]
        if scheme == "http" and host.strip("[]") in ("127.0.0.1", "::1", "localhost"):
            return self
        if scheme != "https":
            raise ValueError(f"oauth2_token_url {self.oauth2_token_url!r}: use https:// (the"
                             " client secret crosses it); http:// only on loopback")
        return self
    master_user_separator: str = Field(default="*", min_length=1)
    propagate_deletions: bool = False
    concurrency: int = Field(default=4, ge=1, le=64)
    timeout_seconds: float = Field(default=60.0, gt=0)
    follow_interval_seconds: float = Field(default=300.0, ge=0)
    """In ``normal``, the sync agent makes the standby's journal copies follow what users do on
    the primary (folder, flags, deletion) every this many seconds (0: never;
    ``mailcontinuity follow`` runs a pass on demand)."""


class SieveSection(Section):
    """``sieve-sync``: how it logs into ManageSieve on both sides as each user.

    The primary is reached with [sync]'s admin (a Dovecot master user); the standby with the
    same one unless ``standby_admin_login``/``standby_password_file`` name another. Users are
    those with a standby Maildir plus ``users``, for people who have had no mail journaled yet.
    """

    standby_admin_login: str | None = None
    standby_password_file: Path | None = None
    users: list[str] = []
    delete_missing: bool = True

    @model_validator(mode="after")
    def _login_needs_password(self) -> SieveSection:
        if (self.standby_admin_login is None) != (self.standby_password_file is None):
            raise ValueError("set both 'standby_admin_login' and 'standby_password_file',"
                             " or neither (then [sync]'s admin logs into the standby too)")
        return self


class PortalSection(Section):
    """The emergency portal's banner (Roundcube on the standby): what users read there during an
    outage. The sync agent, which runs on the standby and follows the state, writes
    ``status_file`` (the state, since when, these texts; no secrets) for the banner plugin."""

    status_file: Path | None = None
    """Where the banner's status file is written (readable by the web server); none: no banner."""
    login_text: str = Field(default="Mail is running on the continuity system. Log in with your"
                            " usual address and password.", max_length=1000)
    """The only words shown on the login page during an outage, to anyone who opens it: say no
    more than you would tell an outsider. Empty: nothing on the login page."""
    outage_text: str = Field(default="Your mail is running on the continuity system because of"
                             " an outage of the primary mail system.", min_length=1,
                             max_length=1000)
    failback_text: str = Field(default="When the primary mail system is back, what you do here"
                               " (mail you receive, send, move or flag) reaches your normal"
                               " mailbox.", max_length=1000)
    returning_text: str = Field(default="The primary mail system is back: your mail is being"
                                " returned to your normal mailbox. Use your usual mail program"
                                " again.", min_length=1, max_length=1000)
    contact: str = Field(default="", max_length=500)
    """Who users contact about the outage (``IT service desk, +1 555 0100``); shown after login."""


class PolicydSection(Section):
    """The policy daemon: where Postfix reaches it and how much input it tolerates."""

    socket: Path | None = Path("/run/mailcontinuity/policyd.sock")
    socket_group: str | None = "postfix"
    socket_mode: int = Field(default=0o660, ge=0, le=0o777)
    tcp: EndpointField | None = None
    max_request_bytes: int = Field(default=16384, ge=1024, le=1048576)
    max_connections: int = Field(default=1000, ge=1, le=100000)
    idle_timeout_seconds: float = Field(default=600.0, gt=0)
    postfix_timeout_seconds: int = Field(default=2, ge=1, le=100)
    recipient_check_timeout_seconds: float = Field(default=1.0, gt=0, le=10)
    recipient_cache_seconds: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _listens_somewhere(self) -> PolicydSection:
        if self.socket is None and self.tcp is None:
            raise ValueError("set 'socket' or 'tcp': policyd must listen somewhere")
        if self.recipient_check_timeout_seconds >= self.postfix_timeout_seconds:
            raise ValueError("recipient_check_timeout_seconds must be below"
                             " postfix_timeout_seconds, or Postfix gives up first")
        return self


class HealthSection(Section):
    """How the primary is probed and when a run of failures or successes changes the state."""

    interval_seconds: float = Field(default=2.0, ge=0.1, le=3600)
    timeout_seconds: float = Field(default=3.0, ge=0.1, le=120)
    failures: int = Field(default=3, ge=1, le=1000)
    failure_window_seconds: float = Field(default=4.0, ge=0)
    successes: int = Field(default=3, ge=1, le=1000)
    hold_down_seconds: float = Field(default=60.0, ge=0)
    imap_login: str | None = None
    """The mailbox the login probe opens on the primary (with ``imap_login_method = "login"``,
    the LOGIN name itself, e.g. ``probe@example.com*mailcontinuity`` for a master user)."""
    imap_password_file: Path | None = None
    """The password LOGIN sends (``imap_login_method = "login"`` only)."""
    imap_login_method: Literal["login", "sync"] = "login"
    """``login``: IMAP LOGIN as ``imap_login`` with ``imap_password_file``'s password. ``sync``
    (``sync.login_method = "xoauth2"`` only: Microsoft 365 and Google take no passwords):
    AUTHENTICATE XOAUTH2 as ``imap_login`` with that mailbox's own token from the app, asked
    with ``sync.password_file``. A key of its own, not inferred from a missing
    ``imap_password_file``: it is the administrator's consent to every gateway reading the
    app's secret, which a forgotten line must never give."""
    probe_source_address: str | None = None
    """The local address the IMAP probes connect from. Dovecot slows logins per client address
    after failed ones (up to 15 s); an address of the monitor's own keeps a guesser elsewhere on
    the host from slowing the probe's LOGIN."""
    login_penalty_seconds: float = Field(default=20.0, ge=0, le=600)
    """How much longer than ``timeout_seconds`` the probe's LOGIN may take and still count as
    "slow to log in" rather than down: a login penalty delays, it never refuses."""
    probe_retention_hours: float = Field(default=24.0, gt=0)

    @model_validator(mode="after")
    def _login_needs_password(self) -> HealthSection:
        if self.imap_login_method == "sync":
            if self.imap_login is None or self.imap_password_file is not None:
                raise ValueError('imap_login_method = "sync" needs imap_login (the mailbox to'
                                 " open) and no imap_password_file: the secret is"
                                 " sync.password_file")
        elif (self.imap_login is None) != (self.imap_password_file is None):
            raise ValueError("set both 'imap_login' and 'imap_password_file', or neither")
        if self.probe_source_address is not None:
            try:
                ipaddress.ip_address(self.probe_source_address)
            except ValueError:
                raise ValueError("probe_source_address must be an IP address of this host,"
                                 f" not {self.probe_source_address!r}") from None
        return self


_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class WatchSection(Section):
    """When a watched part counts as a problem in ``status``, ``status --check`` and the
    metrics, beyond answering its probes (those are always watched)."""

    disk_warning_percent: float = Field(default=10.0, gt=0, lt=100)
    disk_critical_percent: float = Field(default=3.0, ge=0, lt=100)
    journal_pace_seconds: float = Field(default=300.0, ge=10, le=86400)
    """The window in which the messages the gateway accepted for protected domains are compared
    with the journal copies the milter made of them."""
    journal_pace_min_messages: int = Field(default=5, ge=1, le=100000)
    sync_agent_stale_seconds: float = Field(default=20.0, ge=5, le=3600)

    @model_validator(mode="after")
    def _critical_below_warning(self) -> WatchSection:
        if self.disk_critical_percent >= self.disk_warning_percent:
            raise ValueError("disk_critical_percent must be below disk_warning_percent")
        return self


class FailbackSection(Section):
    """Whether the monitor returns mail to a recovered primary by itself, and when."""

    mode: Literal["auto", "manual", "window"] = "auto"
    window: str | None = None

    @model_validator(mode="after")
    def _window_matches_mode(self) -> FailbackSection:
        if self.window is not None and not _WINDOW_RE.match(self.window):
            raise ValueError(f'window: expected "HH:MM-HH:MM", got {self.window!r}')
        if self.mode == "window" and self.window is None:
            raise ValueError('mode "window" needs window = "HH:MM-HH:MM" (local time)')
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback only (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class MetricsSection(Section):
    """The Prometheus endpoint policyd serves: off unless asked for, loopback unless insisted,
    because metrics reveal the mail stores' addresses and whether the primary is down."""

    enabled: bool = False
    listen: EndpointField = Endpoint("127.0.0.1", 9469)
    allow_remote: bool = False

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> MetricsSection:
        if not self.allow_remote and not is_loopback(self.listen.host):
            raise ValueError(
                f'listen = "{self.listen}" is not a loopback address; metrics reveal addresses'
                " and state: keep 127.0.0.1 behind a proxy, or set allow_remote = true"
            )
        return self


def _false_is_none(value: object) -> object:
    """TOML has no null: ``key = false`` switches an optional path off."""
    return None if value is False else value


class AuditSection(Section):
    """Where audit records go besides the state store: syslog, as facility authpriv."""

    syslog_socket: Annotated[Path | None, BeforeValidator(_false_is_none)] = Path("/dev/log")
    retention_days: int = Field(default=400, ge=1, le=36500)
    """How long ``prune`` keeps audit records in the state store (syslog keeps its own)."""


_LDAP_ATTRIBUTE = r"^[A-Za-z][A-Za-z0-9-]*$"


class CredentialsSection(PeerSection):
    """Credential continuity: the organisation's directory (LDAP) and the standby's own copy of
    what it needs to check passwords while the directory is away (``credentials-sync``).

    ``directory`` is ``host:port``; ``tls`` is ``starttls`` (LDAP's StartTLS), ``ssl`` (ldaps)
    or ``none``, verified against ``tls_ca_file`` (else the system's CAs) like every other hop.
    The bind DN must be allowed to read ``password_attribute`` (a privileged service account).
    """

    directory: EndpointField
    bind_dn: str = Field(min_length=3)
    bind_password_file: Path = Path("/etc/mailcontinuity/secrets/directory-bind-password")
    base: str = Field(min_length=3)
    filter: str = Field(default="(&(objectClass=inetOrgPerson)(mail=*))",
                        pattern=r"^\(.*\)$")
    """Who is a mail user: the same filter selects the users copied and the users the standby's
    Dovecot accepts from the directory (an account taken out of it is removed on the next
    refresh)."""
    login_attribute: str = Field(default="mail", pattern=_LDAP_ATTRIBUTE)
    """The attribute users log in with (their Dovecot user name)."""
    directory_login: Literal["hash", "bind"] = "hash"
    """How the standby's Dovecot checks a password while the directory answers: ``hash``
    compares it with ``password_attribute`` (OpenLDAP); ``bind`` binds as the user (Active
    Directory, whose hashes cannot be read): the copy then holds the continuity passwords users
    set in advance in ``password_attribute`` (``mailcontinuity continuity-password``)."""
    password_attribute: str = Field(default="userPassword", pattern=_LDAP_ATTRIBUTE)
    check_first: Literal["directory", "copy"] = "directory"
    """Which the standby's Dovecot asks first. ``directory``: locks, removals and password
    changes count at once, but a directory that hangs or drops packets stalls every login on
    Dovecot's fixed LDAP timeouts (5 to 60 s). ``copy``: users in the copy log in without the
    directory (a hung one costs them nothing); the directory is asked only for users not in the
    copy or passwords that do not match it, so a lock, a removal or an old password still works
    until the next refresh (``refresh_seconds``)."""
    lock_attribute: Annotated[str | None, BeforeValidator(_false_is_none)] = (
        "pwdAccountLockedTime")
    """An account with this attribute set is locked (OpenLDAP ppolicy); ``false``: none."""
    copy_file: Path = Path("/var/lib/mailcontinuity/credentials/passwd")
    """The standby's copy: a Dovecot passwd-file of logins and password hashes, never logged."""
    copy_group: str = "dovecot"
    """The group that may read the copy (mode 0640 root:GROUP): Dovecot's auth process."""
    refresh_seconds: float = Field(default=900.0, ge=10, le=86400)
    """How often the role's timer runs ``credentials-sync``."""
    max_age_seconds: float = Field(default=3600.0, ge=60, le=30 * 86400)
    """A copy older than this is a problem in ``status`` and fails the drill."""
    timeout_seconds: int = Field(default=10, ge=1, le=300)

    @field_validator("lock_attribute")
    @classmethod
    def _attribute_name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(_LDAP_ATTRIBUTE, value):
            raise ValueError(f"{value!r} is not an LDAP attribute name")
        return value

    @model_validator(mode="after")
    def _refresh_within_max_age(self) -> CredentialsSection:
        if self.directory_login == "bind" and self.password_attribute.lower() == "userpassword":
            raise ValueError('directory_login = "bind" keeps continuity passwords in an attribute'
                             " of their own: set password_attribute (e.g. an"
                             " extensionAttribute), never the directory's own password")
        if self.refresh_seconds >= self.max_age_seconds:
            raise ValueError("refresh_seconds must be below max_age_seconds, or every copy"
                             " would be reported as too old")
        return self


class Config(Section):
    """The whole configuration; ``source`` is the file it came from, for error messages."""

    source: Path = Field(default=Path("<memory>"), exclude=True)
    hooks_dir: Path = Path("/etc/mailcontinuity/hooks")
    hooks_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    state: StateSection = StateSection()
    domains: DomainsSection
    primary: PrimarySection
    standby: StandbySection
    gateway: GatewaySection = GatewaySection()
    drill: DrillSection = DrillSection()
    milter: MilterSection = MilterSection()
    sync: SyncSection = SyncSection()
    sieve: SieveSection = SieveSection()
    portal: PortalSection = PortalSection()
    policyd: PolicydSection = PolicydSection()
    health: HealthSection = HealthSection()
    watch: WatchSection = WatchSection()
    failback: FailbackSection = FailbackSection()
    metrics: MetricsSection = MetricsSection()
    audit: AuditSection = AuditSection()
    credentials: CredentialsSection | None = None
    proxy: ProxySection | None = None
    """The client proxy (optional): without this section, clients keep their own names."""

    cluster: ClusterSection | None = None
    """Set on every host of a site whose parts live on several hosts (see docs/topologies.md)."""

    @model_validator(mode="after")
    def _proxy_destinations(self) -> Config:
        proxy = self.proxy
        if proxy is None:
            return self
        if proxy.submission is not None:
            missing = [f"{side}.submission" for side, section
                       in (("primary", self.primary), ("standby", self.standby))
                       if section.submission is None]
            if missing:
                raise ValueError(f"proxy.submission needs {' and '.join(missing)}: the"
                                 " destinations the proxy sends submission clients to")
        cas = {side.tls_ca_file for side in (self.primary, self.standby) if side.tls != "none"}
        if len(cas) > 1:
            raise ValueError("proxy: primary.tls_ca_file and standby.tls_ca_file differ, but"
                             " Dovecot's proxy verifies both stores against one CA file"
                             " (ssl_ca): put both CAs in one file and name it in both")
        return self

    @model_validator(mode="after")
    def _probe_logs_in_as_sync_only_without_passwords(self) -> Config:
        # The probe runs on every gateway: logging in as sync does puts sync.password_file
        # (a secret that opens every mailbox) on each of them. Only where the primary takes
        # no passwords (xoauth2) is there no probe account of its own to log in with instead.
        if self.health.imap_login_method == "sync" and self.sync.login_method != "xoauth2":
            raise ValueError(
                'health.imap_login_method = "sync" needs sync.login_method = "xoauth2";'
                f' with "{self.sync.login_method}" the primary takes passwords: give the probe'
                ' a mailbox of its own (imap_login_method = "login", imap_password_file)'
                " rather than spread sync.password_file, which opens every mailbox, to every"
                " gateway")
        return self

    @model_validator(mode="after")
    def _shared_store_for_several_hosts(self) -> Config:
        cluster = self.cluster
        if cluster is not None and len(cluster.hosts) > 1 and self.state.url is None:
            raise ValueError(
                f"key 'state.url': [cluster] names {len(cluster.hosts)} hosts"
                f" ({', '.join(cluster.hosts)}) but the state store is the SQLite file"
                f" {self.state.path}, which only this host sees; set state.url ="
                ' "postgresql://user@host:port/database" (the same on every host)')
        return self

    @property
    def host_name(self) -> str:
        """This host's name in shared records (heartbeats, probes): ``cluster.host``, or
        ``local`` on a single-host site."""
        return self.cluster.host if self.cluster is not None else LOCAL_HOST

    @property
    def routes_mail(self) -> bool:
        """Whether this host is a gateway whose Postfix mailcontinuity routes."""
        return self.cluster is None or self.cluster.is_gateway


SECRET_SUFFIX = "password_file"


def secret_files(config: Config) -> dict[str, Path]:
    """Every configured secrets file by key (``sync.password_file``...): the fields whose name
    ends in ``password_file``, so a new secret is covered by the mode check without a list."""
    found = {}
    for name, section in config:
        if isinstance(section, Section):
            for key, value in section:
                if key.endswith(SECRET_SUFFIX) and isinstance(value, Path):
                    found[f"{name}.{key}"] = value
    return found


def check_secret_mode(config: Config, key: str, path: Path) -> None:
    """Refuse a secrets file other users can read or change: the password in it opens every
    mailbox. A file not there (yet) is for the command that needs it to report."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    problem = ("is accessible to every user" if mode & 0o007
               else "is writable by its group" if mode & 0o020 else None)
    if problem:
        raise ConfigError(
            f"{config.source}: key '{key}': {path} {problem} (mode {mode & 0o777:04o}); run"
            f" 'chmod 600 {path}' (or 640 with a group of the daemons that need it)")


def read_secret(config: Config, key: str) -> str:
    """The secret in the file ``key`` names, re-read at each use so a rotated password takes
    effect without a restart; its value never goes into an error message or a log line."""
    path = secret_files(config)[key]
    check_secret_mode(config, key, path)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{config.source}: key '{key}': cannot read {path}: {reason};"
                          " create it with the password alone (mode 0600)") from None
    if not secret:
        raise ConfigError(f"{config.source}: key '{key}': {path} is empty; write the password")
    return secret


def default_config_path() -> Path:
    """``$MAILCONTINUITY_CONFIG`` when set, else the system-wide file."""
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)


# Keys that moved: TLS is set per side, for every connection to it, not per command; the
# standby's Maildir path is one fact, read by the milter and the sync agent alike.
MOVED_KEYS = {
    "sync.tls": "primary.tls",
    "sync.tls_ca_file": "primary.tls_ca_file",
    "sieve.tls": "primary.tls and standby.tls",
    "milter.maildir": "standby.maildir",
    "sync.standby_maildir": "standby.maildir",
}


def _describe(error: ErrorDetails) -> str:
    """Turn pydantic's first error into "key 'a.b': what was expected"."""
    key = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    kind = error["type"]
    if kind == "extra_forbidden" and key in MOVED_KEYS:
        return f"key '{key}' has moved to {MOVED_KEYS[key]}"
    if kind == "extra_forbidden":
        return f"unknown key '{key}' (check the spelling against the configuration reference)"
    if kind == "missing":
        return f"missing key '{key}'"
    message = error["msg"].removeprefix("Value error, ")
    if not key:  # a rule across sections names its key itself
        return message
    given = error.get("input")
    if key == "state.url" and isinstance(given, str):
        given = redact_url(given)
    return f"key '{key}': {message} (got {given!r})"


def redact_url(url: str) -> str:
    """``url`` without a password someone wrote into it, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def parse_config(data: dict[str, Any], source: Path) -> Config:
    """Validate already-parsed TOML; raises ConfigError naming the file and the key."""
    try:
        return Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        # A typo'd key also shows up as the missing key it was meant to be: name the typo.
        errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
        raise ConfigError(f"{source}: {_describe(errors[0])}") from None


def load_config(path: Path | None = None) -> Config:
    """Read and validate the configuration file."""
    path = path or default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found; create it or pass --config PATH"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse_config(data, path)
    for key, secret_path in secret_files(config).items():
        check_secret_mode(config, key, secret_path)
    for side in ("primary", "standby", "gateway", "credentials", "state"):
        if getattr(config, side) is None:
            continue
        ca_file = getattr(config, side).tls_ca_file
        if ca_file is None:
            continue
        try:
            client_tls_context(ca_file)
        except (OSError, ssl.SSLError) as exc:
            # Checked here, not at the first connection: a CA that cannot be loaded would make
            # every health probe fail and look like a primary outage.
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"{path}: key '{side}.tls_ca_file': cannot load {ca_file}"
                              f" ({reason}); give the CA certificate file (PEM) that signed"
                              " that side's certificate") from None
    return config


def client_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and name: against ``ca_file``
    only when given, else the system's CAs; TLS 1.2 or later."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
