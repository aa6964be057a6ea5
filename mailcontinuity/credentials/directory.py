"""Reading the directory's users and password hashes (ldap3), with a privileged bind.

The bind DN is a service account allowed to read the password attribute; the connection is
encrypted and the server's certificate verified (StartTLS or ldaps, against
``credentials.tls_ca_file`` or the system's CAs) before the bind password is sent, as on every
other hop of ours. Locked accounts and entries without a usable hash are left out, and said so
by login, never with their hash.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException

from mailcontinuity.config import Config, CredentialsSection, read_secret
from mailcontinuity.credentials.copy import Account, Skipped, dovecot_hash, unsafe

PAGE_SIZE = 500


class DirectoryUnavailable(Exception):
    """The directory could not be read (down, unreachable, TLS or bind refused): the copy is
    kept as it is."""


@dataclass
class DirectoryRead:
    accounts: list[Account] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def service_connection(config: Config) -> Any:
    """A connection bound as the service account (``bind_dn``), or DirectoryUnavailable."""
    credentials = config.credentials
    assert credentials is not None
    password = read_secret(config, "credentials.bind_password_file")
    try:
        return connect(credentials, credentials.bind_dn, password)
    except (LDAPException, OSError) as exc:
        raise DirectoryUnavailable(f"{credentials.directory}: {_reason(exc)}") from None


def read_accounts(config: Config) -> DirectoryRead:
    """Every user the filter selects, with a usable hash, that is not locked."""
    credentials = config.credentials
    assert credentials is not None
    connection = service_connection(config)
    try:
        return _search(connection, credentials)
    except (LDAPException, OSError) as exc:
        raise DirectoryUnavailable(f"{credentials.directory}: search under"
                                   f" {credentials.base!r} failed: {_reason(exc)}") from None
    finally:
        connection.unbind()


def connect(credentials: CredentialsSection, dn: str, password: str) -> Any:
    """A bound connection to the directory as ``dn``, encrypted and verified first."""
    tls = None
    if credentials.tls != "none":
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                        ca_certs_file=str(credentials.tls_ca_file)
                        if credentials.tls_ca_file else None)
    server = ldap3.Server(credentials.directory.host, port=credentials.directory.port,
                          use_ssl=credentials.tls == "ssl", tls=tls,
                          connect_timeout=credentials.timeout_seconds)
    connection = ldap3.Connection(server, dn, password,
                                  receive_timeout=credentials.timeout_seconds,
                                  raise_exceptions=True)
    connection.open()
    if credentials.tls == "starttls":
        connection.start_tls()
    connection.bind()
    return connection


def _search(connection: Any, credentials: CredentialsSection) -> DirectoryRead:
    """All entries under the admin's filter; the lock rule is applied here (and in Dovecot's
    filter) so that a locked account is reported as skipped, not silently missing."""
    attributes = [credentials.login_attribute, credentials.password_attribute]
    if credentials.lock_attribute:
        attributes.append(credentials.lock_attribute)
    entries = connection.extend.standard.paged_search(
        credentials.base, credentials.filter, ldap3.SUBTREE, attributes=attributes,
        paged_size=PAGE_SIZE, generator=True)
    found = DirectoryRead()
    logins: set[str] = set()
    for entry in entries:
        if entry.get("type") != "searchResEntry":
            continue
        raw = {name.lower(): values for name, values in entry["raw_attributes"].items()}
        login_values = raw.get(credentials.login_attribute.lower()) or []
        if len(login_values) != 1:
            found.skipped.append(Skipped(entry["dn"], f"{len(login_values)} values of"
                                         f" {credentials.login_attribute}"))
            continue
        login = login_values[0].decode("utf-8", "replace")
        if credentials.lock_attribute and raw.get(credentials.lock_attribute.lower()):
            found.skipped.append(Skipped(login, "locked"))
            continue
        hashes = [h for h in map(dovecot_hash, raw.get(
            credentials.password_attribute.lower()) or []) if h is not None]
        if not hashes:
            found.skipped.append(Skipped(login, (
                f"no continuity password set ({credentials.password_attribute})"
                if credentials.directory_login == "bind" else
                f"no hashed {credentials.password_attribute} readable by the bind DN")))
            continue
        if unsafe(login) or unsafe(hashes[0]) or login in logins:
            found.skipped.append(Skipped(login, "duplicate login or ':' or a line break in"
                                         " the login or hash"))
            continue
        logins.add(login)
        found.accounts.append(Account(login, hashes[0]))
    return found


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]
