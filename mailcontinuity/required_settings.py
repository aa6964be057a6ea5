"""The Postfix and Dovecot settings a configuration needs, in one place.

``check-config`` prints them for an administrator to apply, and the lab applies the very same
values to its own instances, so what we document is what the tests exercise.
"""

from __future__ import annotations

from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.milter.listener import postfix_name
from mailcontinuity.postfix import postfix_socket_name
from mailcontinuity.routing import transport_entries


def postfix_main_settings(config: Config) -> dict[str, str]:
    """main.cf parameters for the gateway (``postconf -e`` them, then ``postfix reload``).

    The journal milter runs for SMTP and for locally submitted mail alike. If it is down,
    ``milter_default_action = accept`` lets mail flow unjournaled (fail-open: production mail
    before history; ``status`` shows the gap) instead of Postfix's default ``tempfail``.

    policyd is consulted after ``reject_unauth_destination`` (it never says OK, but if it ever
    did, that must not open a relay) and fails open: if it is down, hung or slow, Postfix takes
    ``default_action=DUNNO`` after one try and the timeout, so mail keeps flowing and only the
    early rejection of recipients unknown to the standby is lost. A fail-closed default would
    turn a dead helper daemon into a mail outage, the very thing this kit exists to prevent.
    """
    milter = postfix_name(config.milter.listen)
    return {
        "relay_domains": ", ".join(config.domains.protected),
        "transport_maps": f"hash:{config.gateway.transport_map}",
        "smtpd_milters": milter,
        "non_smtpd_milters": milter,
        "milter_default_action": "accept",
        "smtpd_recipient_restrictions": "permit_mynetworks, permit_sasl_authenticated,"
        f" reject_unauth_destination, {policy_service(config)}",
    }


def policy_service(config: Config) -> str:
    """The ``check_policy_service`` restriction with explicit, fail-open per-service limits.

    Postfix uses the TCP listener when one is configured, else the unix socket (a chrooted
    smtpd, Debian's default, reaches only one under the queue directory).
    """
    settings = config.policyd
    if settings.tcp is not None:
        where = f"inet:{settings.tcp}"
    else:
        assert settings.socket is not None, "the config requires socket or tcp"
        where = postfix_socket_name(settings.socket)
    return (f"check_policy_service {{ {where}, timeout={settings.postfix_timeout_seconds}s,"
            " default_action=DUNNO, try_limit=1 }")


def dovecot_lmtp_settings(config: Config) -> str:
    """Sieve on the LMTP listener used in failover, none on the journal listener.

    Journal copies must never fire vacation or filters. Dovecot picks plugins per local
    address, and a global ``protocol lmtp { mail_plugins }`` would conflict with these blocks.
    It applies a ``local`` block when an lmtp process starts, for the address of its first
    connection, and a reused process kept those plugins for the other listener: journal copies
    fired vacation (found by tests/test_milter_lmtp.py). One connection per process
    (``service_count = 1``) makes each connection get its own listener's plugins.
    """
    blocks = [
        f"local {config.standby.lmtp.host} {{\n  protocol lmtp {{\n"
        "    mail_plugins = $mail_plugins sieve\n  }\n}"
    ]
    journal = config.milter.lmtp
    if journal is not None:
        blocks.append(
            f"local {journal.host} {{\n  protocol lmtp {{\n    mail_plugins = $mail_plugins\n"
            "    lmtp_save_to_detail_mailbox = yes\n  }\n}"
        )
        blocks.append("service lmtp {\n  service_count = 1\n}")
    return "\n".join(blocks)


def dovecot_standby_settings(config: Config) -> str:
    """Dovecot settings for the standby's listeners; users come from the existing passdb."""
    standby = config.standby
    protocols = ["imap", "lmtp"]
    lmtp = [(standby.lmtp.host, standby.lmtp.port)]
    if config.milter.lmtp is not None:
        lmtp.append((config.milter.lmtp.host, config.milter.lmtp.port))
    blocks = [
        _listener("imap-login", "imap", standby.imap.host, standby.imap.port),
        _service("lmtp", [("lmtp" if i == 0 else f"lmtp{i}", host, port)
                          for i, (host, port) in enumerate(lmtp)]),
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
    return "\n".join([f"protocols = {' '.join(protocols)}", *blocks,
                      dovecot_lmtp_settings(config)])


def _listener(service: str, name: str, host: str, port: int) -> str:
    return _service(service, [(name, host, port)])


def _service(service: str, listeners: list[tuple[str, str, int]]) -> str:
    inner = "".join(
        f"  inet_listener {name} {{\n    address = {host}\n    port = {port}\n  }}\n"
        for name, host, port in listeners
    )
    return f"service {service} {{\n{inner}}}"


def settings_report(config: Config) -> dict[str, Any]:
    """``check-config --json``: what the Ansible role (and other automation) applies."""
    return {
        "config": str(config.source),
        "valid": True,
        "postfix_main": postfix_main_settings(config),
        "transport_map": {
            "path": str(config.gateway.transport_map),
            "lines": transport_entries(config, "primary"),
        },
        "dovecot_standby": dovecot_standby_settings(config) + "\n",
    }


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
