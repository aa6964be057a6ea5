"""The client proxy: a Dovecot on the service names users' clients use, steered with the state.

Users' IMAP and submission clients connect to names the organisation controls
(``imap.example.org``), which resolve to a Dovecot that only proxies (``[proxy]``). Its passdb is
a passwd-file keyed by protocol (``username_format=%s``) with one line per protocol, e.g.::

    imap:::::::proxy=y nopassword=y host=mail.example.org port=143 starttls=yes

``nopassword=y`` makes the proxy accept the login as given and forward the client's own
credentials: the store decides, exactly as if the client had connected to it. On every
failover and failback ``switch_proxy`` rewrites the file, reloads that Dovecot (a passwd-file
is re-read at most once a second and only when its mtime or size changed: a same-second,
same-size rewrite would be missed) and kicks the sessions still proxied to the side users
leave, so their clients reconnect, through the proxy, to the other side.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path

from mailcontinuity.config import Config, Endpoint, PrimarySection, ProxySection, StandbySection
from mailcontinuity.deploy.routing import Route
from mailcontinuity.mail.tools import CommandError, run_command

log = logging.getLogger(__name__)

DOVEADM_TIMEOUT_SECONDS = 15
# Dovecot's proxy verifies the stores' certificates against ``ssl_ca`` (its login processes
# ignore ssl_client_ca_*); without a site CA file, the system's bundle.
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Dovecot retries a refused connection to the store 3 times, a second apart, before it answers
# [UNAVAILABLE]: a client that logs in just before failover then waits those 3 s after it.
LOGIN_PROXY_MAX_RECONNECTS = 0
# A passwd-file line's extra fields start after the seventh colon (six leave them in "shell").
EMPTY_PASSWD_FIELDS = ":" * 7

# A kick right after the reload meets the doveadm server restarting; tried again this often.
KICK_ATTEMPTS = 5
KICK_RETRY_SECONDS = 0.2


def _side(config: Config, route: Route) -> PrimarySection | StandbySection:
    return config.primary if route == "primary" else config.standby


def destinations(config: Config, route: Route) -> dict[str, Endpoint]:
    """The store's listeners the proxy sends each protocol to on ``route``."""
    side = _side(config, route)
    found = {"imap": side.imap}
    if _proxy(config).submission is not None and side.submission is not None:
        found["submission"] = side.submission
    return found


def route_lines(config: Config, route: Route) -> list[str]:
    """The route file's lines for ``route``: one per protocol the proxy serves.

    The connection to the store is held to that side's ``tls`` (mailcontinuity.mail.tls): with
    ``starttls``/``ssl`` the store's certificate must name ``host`` and chain to ``ssl_ca``.
    """
    proxy = _proxy(config)
    side = _side(config, route)
    tls = {"starttls": " starttls=yes", "ssl": " ssl=yes", "none": ""}[side.tls]
    source = f" source_ip={proxy.source_address}" if proxy.source_address else ""
    return [f"{protocol}{EMPTY_PASSWD_FIELDS}proxy=y nopassword=y host={endpoint.host}"
            f" port={endpoint.port}{tls}{source}"
            for protocol, endpoint in destinations(config, route).items()]


def write_route_file(config: Config, route: Route) -> None:
    """Replace the route file atomically (readers see the old or the new file, never half).

    A failure is a CommandError like a failed ``doveadm``: the monitor retries the routing."""
    path = _proxy(config).route_file
    text = "".join(f"{line}\n" for line in route_lines(config, route))
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                         delete=False) as handle:
            handle.write(text)
        os.chmod(handle.name, 0o644)  # no secret in it; Dovecot's auth process reads it
        os.replace(handle.name, path)
    except OSError as exc:
        raise CommandError(f"proxy.route_file {path}: cannot write it ({exc.strerror}); create its"
                      " directory or fix the key") from None


def switch_proxy(config: Config, route: Route) -> int:
    """Send new client logins to ``route`` and disconnect those proxied to the other side.

    Returns how many sessions Dovecot reported kicked. ``proxy kick -h`` matches the exact
    ``host`` field (no wildcards in 2.3): when both stores share a host name, every proxied
    session is kicked, which costs the clients already on the new side one reconnection.
    """
    write_route_file(config, route)
    doveadm(config, "reload")
    left: Route = "standby" if route == "primary" else "primary"
    # The reload restarts Dovecot's doveadm server: a kick sent meanwhile is "Disconnected".
    for attempt in range(KICK_ATTEMPTS):
        try:
            output = doveadm(config, "proxy", "kick", "-h", _side(config, left).imap.host)
            break
        except CommandError:
            if attempt == KICK_ATTEMPTS - 1:
                raise
            time.sleep(KICK_RETRY_SECONDS)
    kicked = sum(int(word) for word in output.split() if word.isdigit())
    log.info("event=proxy_switched route=%s kicked=%d", route, kicked)
    return kicked


def doveadm(config: Config, *args: str) -> str:
    """``doveadm -c proxy.doveadm_config ARGS``: the proxy's master and login processes
    answer root only, so the unprivileged daemons ask sudo for exactly these command lines
    (``reload``, ``proxy kick -h`` each store's host), which the role's sudoers rule allows."""
    path = shutil.which("doveadm", path="/usr/bin:/usr/sbin:/bin:/sbin") or "/usr/bin/doveadm"
    argv = [path, "-c", str(_proxy(config).doveadm_config), *args]
    if os.geteuid() != 0:
        argv = ["sudo", "-n", *argv]
    try:
        return run_command(argv, timeout=DOVEADM_TIMEOUT_SECONDS,
                           missing_hint="install dovecot-core (and sudo), or set"
                           " proxy.doveadm_config to the proxy's dovecot.conf")
    except CommandError as exc:
        if os.geteuid() == 0:
            raise
        user = pwd.getpwuid(os.geteuid()).pw_name
        raise CommandError(f"{exc}; as user {user}, this needs the sudoers rule"
                           f" '{user} ALL=(root) NOPASSWD: {' '.join(argv[2:])}'",
                           exc.returncode) from None


def dovecot_proxy_settings(config: Config) -> str:
    """The proxy Dovecot's configuration (besides instance paths and logging).

    TLS before any login (``ssl = required``); the client's credentials go to the store inside
    TLS, which verifies the store against ``ssl_ca`` (2.3's login proxy ignores
    ``ssl_client_ca_*``; ``ssl_require_crl = no`` because site CAs rarely publish CRLs there).
    No userdb: a proxy-only Dovecot opens no mailbox.
    """
    proxy = _proxy(config)
    cas = [side.tls_ca_file for side in (config.primary, config.standby)
           if side.tls != "none" and side.tls_ca_file is not None]
    ca_file = cas[0] if cas else SYSTEM_CA_BUNDLE
    protocols = ["imap"] + (["submission"] if proxy.submission is not None else [])
    imap = [("imap", proxy.imap, False)]
    if proxy.imaps is not None:
        imap.append(("imaps", proxy.imaps, True))
    services = [_service("imap-login", imap)]
    if proxy.submission is not None:
        services.append(_service("submission-login", [("submission", proxy.submission, False)]))
    return f"""protocols = {" ".join(protocols)}
ssl = required
disable_plaintext_auth = yes
ssl_cert = <{proxy.tls_cert_file}
ssl_key = <{proxy.tls_key_file}
ssl_ca = <{ca_file}
ssl_require_crl = no
login_proxy_max_reconnects = {LOGIN_PROXY_MAX_RECONNECTS}
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = username_format=%s {proxy.route_file}
}}
{"".join(services)}"""


def _service(name: str, listeners: list[tuple[str, Endpoint, bool]]) -> str:
    inner = "".join(
        f"  inet_listener {listener} {{\n    address = {endpoint.host}\n"
        f"    port = {endpoint.port}\n{'    ssl = yes' + chr(10) if tls else ''}  }}\n"
        for listener, endpoint, tls in listeners)
    if name == "imap-login" and not any(listener == "imaps" for listener, _, _ in listeners):
        inner += "  inet_listener imaps {\n    port = 0\n  }\n"
    if name == "submission-login":
        inner += "  inet_listener submissions {\n    port = 0\n  }\n"
    return f"service {name} {{\n{inner}}}\n"


def _proxy(config: Config) -> ProxySection:
    if config.proxy is None:
        raise ValueError(f"{config.source}: no [proxy] section")
    return config.proxy
