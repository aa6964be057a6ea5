"""The Postfix and Dovecot settings a configuration needs, in one place.

``check-config`` prints them for an administrator to apply, and the lab applies the very same
values to its own instances, so what we document is what the tests exercise.
"""

from __future__ import annotations

from mailcontinuity.config import Config
from mailcontinuity.routing import transport_entries


def postfix_main_settings(config: Config) -> dict[str, str]:
    """main.cf parameters for the gateway (``postconf -e`` them, then ``postfix reload``).

    policyd is consulted after ``reject_unauth_destination`` (it never says OK, but if it ever
    did, that must not open a relay) and fails open: if it is down, hung or slow, Postfix takes
    ``default_action=DUNNO`` after one try and the timeout, so mail keeps flowing and only the
    early rejection of recipients unknown to the standby is lost. A fail-closed default would
    turn a dead helper daemon into a mail outage, the very thing this kit exists to prevent.
    """
    return {
        "relay_domains": ", ".join(config.domains.protected),
        "transport_maps": f"hash:{config.gateway.transport_map}",
        "smtpd_recipient_restrictions": "permit_mynetworks, permit_sasl_authenticated,"
        f" reject_unauth_destination, {policy_service(config)}",
    }


def policy_service(config: Config) -> str:
    """The ``check_policy_service`` restriction with explicit, fail-open per-service limits.

    Postfix uses the TCP listener when one is configured (a chrooted smtpd, Debian's default,
    cannot reach a unix socket outside its chroot), else the unix socket.
    """
    settings = config.policyd
    where = f"inet:{settings.tcp}" if settings.tcp is not None else f"unix:{settings.socket}"
    return (f"check_policy_service {{ {where}, timeout={settings.postfix_timeout_seconds}s,"
            " default_action=DUNNO, try_limit=1 }")


def dovecot_standby_settings(config: Config) -> str:
    """Dovecot settings for the standby's listeners; users come from the existing passdb."""
    standby = config.standby
    protocols = ["imap", "lmtp"]
    blocks = [
        _listener("imap-login", "imap", standby.imap.host, standby.imap.port),
        _listener("lmtp", "lmtp", standby.lmtp.host, standby.lmtp.port),
    ]
    if standby.managesieve:
        protocols.append("sieve")
        blocks.append(
            _listener("managesieve-login", "sieve", standby.managesieve.host,
                      standby.managesieve.port)
        )
    if standby.submission:
        protocols.append("submission")
        blocks.append(
            _listener("submission-login", "submission", standby.submission.host,
                      standby.submission.port)
        )
    return "\n".join([f"protocols = {' '.join(protocols)}", *blocks])


def _listener(service: str, name: str, host: str, port: int) -> str:
    return (
        f"service {service} {{\n  inet_listener {name} {{\n    address = {host}\n"
        f"    port = {port}\n  }}\n}}"
    )


def render_check_config(config: Config) -> str:
    """The text ``check-config`` prints after a successful validation."""
    lines = [f"# {config.source}: configuration is valid", "", "# Postfix gateway: main.cf"]
    lines += [f"postconf -e '{key} = {value}'" for key, value in postfix_main_settings(config).items()]
    lines += [
        "# policyd fails open (default_action=DUNNO, try_limit=1): if it is down or slow, mail",
        "# still flows; only the RCPT-time rejection of users the standby lacks is skipped.",
        "# A chrooted smtpd (Debian's default) cannot reach policyd.socket: set policyd.tcp",
        "# to a loopback endpoint and Postfix is pointed there instead.",
    ]
    lines += [
        "",
        f"# Postfix gateway: {config.gateway.transport_map} (mailcontinuity rewrites and postmaps"
        " this table on every failover and failback; create it once with the lines below)",
        *transport_entries(config, "primary"),
        "",
        "# Standby Dovecot (add to its configuration; keep your existing passdb/userdb so users",
        "# log in with their usual credentials)",
        dovecot_standby_settings(config),
    ]
    return "\n".join(lines) + "\n"
