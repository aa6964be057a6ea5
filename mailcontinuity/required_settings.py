"""The Postfix and Dovecot settings a configuration needs, in one place.

``check-config`` prints them for an administrator to apply, and the lab applies the very same
values to its own instances, so what we document is what the tests exercise.
"""

from __future__ import annotations

from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.routing import transport_entries


def postfix_main_settings(config: Config) -> dict[str, str]:
    """main.cf parameters for the gateway (``postconf -e`` them, then ``postfix reload``)."""
    return {
        "relay_domains": ", ".join(config.domains.protected),
        "transport_maps": f"hash:{config.gateway.transport_map}",
    }


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
