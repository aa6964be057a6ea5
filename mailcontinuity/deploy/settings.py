"""The Postfix and Dovecot settings a configuration needs, in one place.

``check-config`` prints them for an administrator to apply, and the lab applies the very same
values to its own instances, so what we document is what the tests exercise.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.deploy.aliases import (
    OutageAliases,
    outage_alias_lines,
    outage_aliases_configured,
)
from mailcontinuity.deploy.credentials import (
    DOVECOT_LDAP_ARGS,
    dovecot_credentials_passdb,
    dovecot_ldap_args,
)
from mailcontinuity.deploy.firewall import nft_ruleset
from mailcontinuity.deploy.portal import BANNER_PLUGIN, BANNER_PLUGIN_NAME, roundcube_portal_php
from mailcontinuity.deploy.proxy import dovecot_proxy_settings, route_lines
from mailcontinuity.deploy.routing import (
    standby_delivery_service,
    tls_policy_entries,
    transport_entries,
)
from mailcontinuity.deploy.senders import sender_identity_lines, sender_restriction_options
from mailcontinuity.deploy.webmail import (
    PLUGIN_NAME,
    ROUNDCUBE_PLUGIN,
    dovecot_webmail_trust,
    roundcube_security_php,
)
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.mail.postfix import postfix_milter_name, postfix_socket_name


def postfix_main_settings(config: Config) -> dict[str, str]:
    """main.cf parameters for the gateway (``postconf -e`` them, then ``postfix reload``).

    The journal milter runs for SMTP and for locally submitted mail alike. If it is down,
    ``milter_default_action = accept`` lets mail flow unjournaled (fail-open: production mail
    before history; ``status`` shows the gap) instead of Postfix's default ``tempfail``.

    ``mynetworks`` is the standby's address only: the gateway relays to the protected domains
    for anyone, elsewhere only for the standby and for logged-in users.

    policyd is consulted after ``reject_unauth_destination`` (it never says OK, but if it ever
    did, that must not open a relay) and fails open: if it is down, hung or slow, Postfix takes
    ``default_action=DUNNO`` after one try and the timeout, so mail keeps flowing and only the
    early deferral of recipients unknown to the standby is lost. A fail-closed default would
    turn a dead helper daemon into a mail outage, the very thing this kit exists to prevent.

    With outage aliases (``gateway.outage_aliases`` or ``outage_postmaster``) the gateway's
    ``virtual_alias_maps`` is mailcontinuity's table, empty outside an outage (an existing
    ``virtual_alias_maps`` of yours: list ours first in it).
    """
    milter = postfix_milter_name(config.milter.listen)
    aliases = {"virtual_alias_maps": f"hash:{config.gateway.outage_alias_map}"} \
        if outage_aliases_configured(config) else {}
    return {
        "relay_domains": ", ".join(config.domains.protected),
        "mynetworks": _host_network(config.standby.lmtp.host),
        "transport_maps": f"hash:{config.gateway.transport_map}",
        "smtpd_milters": milter,
        "non_smtpd_milters": milter,
        "milter_default_action": "accept",
        # Postfix's default plus what the journal copy's Received field is rebuilt from
        # (journal/trace.py): the milter is not called at CONNECT, so these come with MAIL.
        "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr}"
        " {mail_host} {mail_mailer} j _ {client_addr} {client_name} {tls_version}",
        "smtpd_recipient_restrictions": "permit_mynetworks, permit_sasl_authenticated,"
        f" reject_unauth_destination, {policy_service(config)}",
        **aliases,
        **postfix_tls_settings(),
        **postfix_delivery_tls_settings(config),
    }


def _host_network(host: str) -> str:
    """``mynetworks``: the standby alone (its Sieve vacation and redirects relay through the
    gateway); every other client relays only to the protected domains, or logs in."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{address}]/128" if address.version == 6 else f"{address}/32"


def postfix_delivery_tls_settings(config: Config) -> dict[str, str]:
    """The TLS policy table for the gateway's deliveries to the stores, for SMTP and LMTP.

    An existing ``smtp_tls_policy_maps`` of yours: list ours first in it (first match wins).
    """
    if not tls_policy_entries(config):
        return {}
    table = f"hash:{config.gateway.tls_policy_map}"
    return {"smtp_tls_policy_maps": table, "lmtp_tls_policy_maps": table}


def postfix_tls_settings() -> dict[str, str]:
    """STARTTLS offered on every smtpd listener, AUTH only inside TLS (main.cf).

    Port 25 must keep taking mail from servers that cannot encrypt, so TLS is offered (``may``),
    never required there; a listener that offers SMTP AUTH (the gateway's submission) never lets
    a password cross the wire in the clear. Postfix reads the key as root before dropping
    privileges, so the key file stays mode 0600 root. The certificate is the site's own
    (``smtpd_tls_chain_files``), which this kit does not choose.
    """
    return {"smtpd_tls_security_level": "may", "smtpd_tls_auth_only": "yes"}


def postfix_submission_options(config: Config) -> dict[str, str]:
    """``-o`` options of the gateway's submission service in master.cf.

    Users authenticate there with their mailbox credentials (Dovecot SASL), so the listener
    insists on TLS before anything else and relays for authenticated users only; unauthenticated
    clients get no RCPT at all, not even for local domains, as on any submission port. A user
    sends only as an address they own (``deploy.senders``).
    """
    return {
        "smtpd_tls_security_level": "encrypt",
        "smtpd_tls_auth_only": "yes",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_relay_restrictions": "permit_sasl_authenticated,reject",
        **sender_restriction_options(config),
    }


def postfix_submission_service(config: Config, sasl_path: str = "private/auth") -> str | None:
    """The gateway's submission line for master.cf, or None when ``gateway.submission`` is unset.

    ``sasl_path`` is Dovecot's auth socket as Postfix reaches it (relative to the queue
    directory for a chrooted smtpd, Debian's default)."""
    endpoint = config.gateway.submission
    if endpoint is None:
        return None
    options = {**postfix_submission_options(config), "smtpd_sasl_type": "dovecot",
               "smtpd_sasl_path": sasl_path}
    return _master_line(str(endpoint), options)


def postfix_standby_relay_options(config: Config) -> dict[str, str]:
    """``-o`` options of the listener the standby's submission relays through.

    Dovecot's submission (2.3) cannot refuse a sender the user does not own, so it hands the
    user's login to the gateway with XCLIENT (``submission_relay_trusted = yes``), and this
    listener applies the same sender rule as the gateway's submission. XCLIENT is allowed from
    the standby's address only (``standby.lmtp``'s host); SASL must be enabled for an XCLIENT
    LOGIN to count as one. Nothing is relayed for a client that is not logged in.
    """
    options = {
        "syslog_name": "postfix/standby-relay",
        "smtpd_authorized_xclient_hosts": config.standby.lmtp.host,
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_recipient_restrictions": "permit_sasl_authenticated,reject",
        "smtpd_relay_restrictions": "permit_sasl_authenticated,reject",
        **sender_restriction_options(config),
    }
    if config.gateway.tls != "none":
        options["smtpd_tls_security_level"] = "encrypt"
    return options


def postfix_standby_relay_service(config: Config, sasl_path: str = "private/auth") -> str | None:
    """The master.cf line of ``gateway.standby_relay``, or None when it is unset."""
    endpoint = config.gateway.standby_relay
    if endpoint is None:
        return None
    options = {**postfix_standby_relay_options(config), "smtpd_sasl_type": "dovecot",
               "smtpd_sasl_path": sasl_path}
    return _master_line(str(endpoint), options)


def _master_line(endpoint: str, options: dict[str, str]) -> str:
    return f"{endpoint} inet n - n - - smtpd" + "".join(
        f" -o {key}={value}" for key, value in options.items())


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
    fired vacation (found by tests/lab/test_milter_lmtp.py). One connection per process
    (``service_count = 1``) makes each connection get its own listener's plugins.
    """
    blocks = [
        f"local {config.standby.lmtp.host} {{\n  protocol lmtp {{\n"
        "    mail_plugins = $mail_plugins sieve\n  }\n}"
    ]
    blocks.append(dovecot_journal_mark_filter_settings(config))
    journal = config.milter.lmtp
    if journal is not None:
        blocks.append(
            f"local {journal.host} {{\n  protocol lmtp {{\n    mail_plugins = $mail_plugins\n"
            "    lmtp_save_to_detail_mailbox = yes\n  }\n}"
        )
        blocks.append("service lmtp {\n  service_count = 1\n}")
    return "\n".join(blocks)


def journal_mark_filter_script() -> str:
    """Sieve that deletes the journal mark (``standby.journal_mark_filter``).

    The sync agent tells journal copies from mail delivered during an outage by that mark; a
    copy of it arriving on the normal LMTP listener (a forged one: anyone who can reach that
    listener, a local user included, can deliver) must not count."""
    return f'require ["editheader"];\ndeleteheader "{JOURNAL_HEADER}";\n'


def dovecot_journal_mark_filter_settings(config: Config) -> str:
    """Run the filter before every user's Sieve script; only the normal LMTP listener loads
    Sieve, so journal copies keep their mark. The script must be compiled (``sievec``)."""
    return (f"plugin {{\n  sieve_before = {config.standby.journal_mark_filter}\n"
            "  sieve_global_extensions = +editheader\n}")


# Dovecot's own default, written out so that an administrator sees it and can tune it.
AUTH_FAILURE_DELAY_SECONDS = 2


def dovecot_standby_hardening(config: Config) -> dict[str, str]:
    """Top-level settings that keep the standby from being an open relay or a guessing target.

    - ``ssl = required``: no authentication of any kind before TLS (IMAP, ManageSieve and
      submission, where AUTH is not even offered before STARTTLS); plaintext mechanisms are
      refused too (``disable_plaintext_auth``). Dovecot counts a connection whose local and
      remote addresses are equal (a webmail on the same host) as secured, and so are clients in
      ``login_trusted_networks``, which is therefore the portal's address alone
      (``standby.webmail_address``, see ``deploy.webmail``) or empty.
    - A failed login is answered after ``auth_failure_delay``; on top of that Dovecot's anvil
      process adds a penalty per client IP that doubles with every further failure up to 15 s
      (for a client in ``login_trusted_networks``, on the address it reports in IMAP ID: each
      portal user gets their own).
    - Submission relays what authenticated users send through the gateway. With
      ``gateway.standby_relay`` (recommended) it goes there with XCLIENT
      (``submission_relay_trusted = yes``): the gateway learns the user's login and refuses a
      sender they do not own, which Dovecot's submission cannot do itself; the milter makes no
      Sent copy of XCLIENT mail (the user's client saves one on the standby). Without it, to
      ``gateway.smtp``, trusted by address (``mynetworks``), with no sender check.
    - That relay carries the users' outgoing mail, across a WAN when the standby is remote: it
      uses STARTTLS and verifies the gateway's certificate (against ``gateway.tls_ca_file``, else
      the system's CAs) unless ``gateway.tls = "none"``.
    """
    gateway = config.gateway
    relay_to = gateway.standby_relay or gateway.smtp
    relay = {
        "submission_relay_host": relay_to.host,
        "submission_relay_port": str(relay_to.port),
        "submission_relay_trusted": "yes" if gateway.standby_relay else "no",
    }
    if gateway.tls != "none":
        relay |= {"submission_relay_ssl": "smtps" if gateway.tls == "ssl" else "starttls",
                  "submission_relay_ssl_verify": "yes"}
        relay |= ({"ssl_client_ca_file": str(gateway.tls_ca_file)} if gateway.tls_ca_file
                  else {"ssl_client_ca_dir": "/etc/ssl/certs"})
    return {
        "ssl": "required",
        "disable_plaintext_auth": "yes",
        "auth_failure_delay": f"{AUTH_FAILURE_DELAY_SECONDS} secs",
        **relay,
        **dovecot_trusted_clients(config),
    }


def dovecot_trusted_clients(config: Config) -> dict[str, str]:
    """``login_trusted_networks`` of a store: the portal and the client proxy's
    ``source_address``, the only clients that report users' own addresses (IMAP ID, XCLIENT),
    so that the login penalty falls on each user's address, not on the portal's or proxy's."""
    trusted = dovecot_webmail_trust(config.standby.webmail_address).get(
        "login_trusted_networks", "").split()
    if config.proxy is not None and config.proxy.source_address is not None:
        address = config.proxy.source_address
        trusted.append(address + ("/128" if ":" in address else "/32"))
    return {"login_trusted_networks": " ".join(trusted)} if trusted else {}


def dovecot_standby_settings(config: Config) -> str:
    """Dovecot settings for the standby: hardening and listeners; users come from the existing
    passdb."""
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
    hardening = [f"{key} = {value}" for key, value in dovecot_standby_hardening(config).items()]
    return "\n".join([*hardening, f"protocols = {' '.join(protocols)}", *blocks,
                      dovecot_lmtp_settings(config)])


def _listener(service: str, name: str, host: str, port: int) -> str:
    return _service(service, [(name, host, port)])


def _service(service: str, listeners: list[tuple[str, str, int]]) -> str:
    inner = "".join(
        f"  inet_listener {name} {{\n    address = {host}\n    port = {port}\n  }}\n"
        for name, host, port in listeners
    )
    return f"service {service} {{\n{inner}}}"


def smtputf8_notes(config: Config) -> list[str]:
    """What happens to internationalised mail (RFC 6531 SMTPUTF8), route by route.

    Postfix (``smtputf8_enable = yes``, its default) accepts such mail whatever the next hop
    offers and bounces it when the hop lacks SMTPUTF8; the milter refuses it at SMTP time
    instead, on what ``primary.smtputf8`` and ``standby.smtputf8`` say. Dovecot 2.3's LMTP
    never offers SMTPUTF8 (no setting enables it), so a standby running it cannot take such
    mail: check-config says so, the drill asks the listeners themselves.
    """
    primary, standby = config.primary.smtputf8, config.standby.smtputf8
    notes = [
        "primary.smtputf8 = " + ("true: internationalised mail is delivered to the primary"
                                 if primary else
                                 "false: internationalised mail (a UTF-8 address, or UTF-8"
                                 " headers with SMTPUTF8) is refused with 550 5.6.7 at SMTP"
                                 " time, never accepted and bounced"),
        "standby.smtputf8 = " + ("true: the standby takes internationalised mail during an"
                                 " outage" if standby else
                                 "false: during an outage internationalised mail is refused"
                                 " with 451 4.6.7 (senders retry; it arrives after failback)."
                                 " Dovecot 2.3's LMTP cannot offer SMTPUTF8; a standby whose"
                                 " LMTP does keeps such mail flowing during an outage"),
    ]
    if primary and not standby:
        notes.append("the primary takes what the standby cannot: that mail waits in senders'"
                     " queues during an outage (their queue lifetime, often 5 days)")
    return notes


def settings_report(config: Config) -> dict[str, Any]:
    """``check-config --json``: what the Ansible role (and other automation) applies."""
    return {
        "config": str(config.source),
        "valid": True,
        "postfix_main": postfix_main_settings(config),
        "postfix_submission": postfix_submission_service(config),
        "postfix_standby_relay": postfix_standby_relay_service(config),
        "sender_login_map": {
            "path": str(config.gateway.sender_login_map),
            "lines": sender_identity_lines(config),
        },
        "transport_map": {
            "path": str(config.gateway.transport_map),
            "lines": transport_entries(config, "primary"),
        },
        "postfix_standby_delivery": standby_delivery_service(),
        "outage_alias_map": {
            "path": str(config.gateway.outage_alias_map),
            "lines": outage_alias_lines(OutageAliases({}), outage=False),
        } if outage_aliases_configured(config) else None,
        "tls_policy_map": {
            "path": str(config.gateway.tls_policy_map),
            "lines": tls_policy_entries(config),
        },
        "dovecot_standby": dovecot_standby_settings(config) + "\n",
        "smtputf8": {"primary": config.primary.smtputf8, "standby": config.standby.smtputf8,
                     "notes": smtputf8_notes(config)},
        "journal_mark_filter": {"path": str(config.standby.journal_mark_filter),
                                "script": journal_mark_filter_script()},
        "roundcube_plugin": {"name": PLUGIN_NAME, "php": ROUNDCUBE_PLUGIN},
        "roundcube_settings": roundcube_security_php(config.standby.webmail_address),
        "roundcube_portal": {
            "banner_plugin": {"name": BANNER_PLUGIN_NAME, "php": BANNER_PLUGIN},
            "status_file": str(config.portal.status_file or ""),
            "settings": roundcube_portal_php(config.portal.status_file,
                                             config.standby.managesieve),
        },
        "nftables": {host: nft_ruleset(config, host) for host in ("gateway", "standby")},
        "dovecot_credentials": dovecot_credentials_report(config),
        "client_proxy": None if config.proxy is None else {
            "dovecot": dovecot_proxy_settings(config),
            "doveadm_config": str(config.proxy.doveadm_config),
            "kick_hosts": sorted({config.primary.imap.host, config.standby.imap.host}),
            "route_file": {"path": str(config.proxy.route_file),
                           "lines": route_lines(config, "primary")},
        },
    }


def dovecot_credentials_report(config: Config) -> dict[str, Any] | None:
    """``[credentials]`` for the role: the standby's user passdb (directory, then the copy),
    the LDAP driver's file (its ``dnpass`` a placeholder the role fills from the secret), the
    copy's path and group."""
    credentials = config.credentials
    if credentials is None:
        return None
    return {"passdb": dovecot_credentials_passdb(config),
            "ldap_args": {"path": str(DOVECOT_LDAP_ARGS), "text": dovecot_ldap_args(config)},
            "copy_file": str(credentials.copy_file), "copy_group": credentials.copy_group,
            "refresh_seconds": credentials.refresh_seconds}


def render_credentials_settings(config: Config) -> list[str]:
    """check-config's part for ``[credentials]``: what replaces the standby's user passdb."""
    if config.credentials is None:
        return []
    return [
        "# Standby Dovecot, [credentials]: this replaces the users' passdb above (keep a master",
        "# passdb before it); the userdb must not ask the directory (static or passwd-file).",
        "# Needs Debian's dovecot-ldap. Run 'mailcontinuity credentials-sync' every",
        f"# {config.credentials.refresh_seconds:g}s (the role installs a timer).",
        dovecot_credentials_passdb(config),
        "",
        f"# {DOVECOT_LDAP_ARGS} (mode 0600 root; dnpass is the bind password)",
        dovecot_ldap_args(config).rstrip("\n"),
        "",
    ]


def render_check_config(config: Config) -> str:
    """The text ``check-config`` prints after a successful validation."""
    lines = [f"# {config.source}: configuration is valid", "", "# Postfix gateway: main.cf"]
    lines += [f"postconf -e '{key} = {value}'"
              for key, value in postfix_main_settings(config).items()]
    lines += [
        "# policyd fails open (default_action=DUNNO, try_limit=1): if it is down or slow, mail",
        "# still flows; only the RCPT-time deferral of users the standby lacks is skipped.",
        "# A chrooted smtpd (Debian's default) reaches a unix socket only under",
        "# /var/spool/postfix: put policyd.socket and milter.listen there, or use TCP.",
    ]
    lines += [
        "",
        "# Postfix gateway: master.cf, the standby's delivery transport (a refusal from the",
        "# standby defers the mail for the primary, never bounces it)",
        standby_delivery_service(),
    ]
    if outage_aliases_configured(config):
        lines += [
            "",
            f"# Postfix gateway: {config.gateway.outage_alias_map} (virtual_alias_maps; empty"
            " outside an outage, mailcontinuity writes the outage aliases on failover; create"
            " it once and postmap it)",
            *outage_alias_lines(OutageAliases({}), outage=False),
        ]
    submission = postfix_submission_service(config)
    if submission is not None:
        lines += [
            "",
            "# Postfix gateway: master.cf, the submission service (TLS before AUTH, relaying for",
            "# authenticated users only; smtpd_sasl_path is Dovecot's auth socket for Postfix)",
            submission,
        ]
    relay = postfix_standby_relay_service(config)
    if relay is not None:
        lines += [
            "",
            "# Postfix gateway: master.cf, where the standby's submission relays with XCLIENT (the",
            "# user's login), so that a user sends only as an address they own",
            relay,
        ]
    lines += [
        "",
        f"# Postfix gateway: {config.gateway.sender_login_map} (who owns which sender address;"
        " aliases: gateway.sender_aliases)",
        *sender_identity_lines(config),
    ]
    lines += [
        "",
        f"# Postfix gateway: {config.gateway.transport_map} (mailcontinuity rewrites and postmaps"
        " this table on every failover and failback; create it once with the lines below)",
        *transport_entries(config, "primary"),
    ]
    if tls_policy_entries(config):
        lines += [
            "",
            f"# Postfix gateway: {config.gateway.tls_policy_map} (TLS for deliveries to the"
            " stores; postmap it once)",
            *tls_policy_entries(config),
        ]
    if config.proxy is not None:
        lines += [
            "",
            "# Client proxy: a Dovecot of its own on the host that changes the state, on the",
            "# service names clients use (docs/clients.md). Its settings:",
            dovecot_proxy_settings(config).rstrip("\n"),
            f"# and its route file {config.proxy.route_file} (mailcontinuity rewrites it on"
            " every failover and failback; create it once with the lines below)",
            *route_lines(config, "primary"),
        ]
    lines += [
        "",
        "# Standby Dovecot (add to its configuration; keep your existing passdb/userdb so users",
        "# log in with their usual credentials)",
        dovecot_standby_settings(config),
        "",
        *render_credentials_settings(config),
        "# International mail (SMTPUTF8; the drill checks these against the listeners)",
        *(f"# {note}" for note in smtputf8_notes(config)),
    ]
    return "\n".join(lines) + "\n"
