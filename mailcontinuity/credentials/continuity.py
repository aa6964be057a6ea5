"""Continuity passwords: what a user of Active Directory sets in advance to log in to the
standby while the directory is away (``directory_login = "bind"``).

AD never lets anyone read its password hashes, so the standby cannot keep a copy of the users'
own passwords. Instead each user sets a second password, stored as a salted hash
(``{SSHA512}``) in ``credentials.password_attribute`` of their own entry, which
``credentials-sync`` copies like any hash. The user changes it with their own directory
credentials (a bind as themselves: the attribute must be writable by SELF and readable by the
service account only), so nobody else can set a password for them. It must differ from their
directory password: the attribute is readable by the service account, the directory password's
hash must stay unreadable.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from mailcontinuity.config import Config, CredentialsSection
from mailcontinuity.credentials.directory import (
    DirectoryUnavailable,
    connect,
    service_connection,
)
from mailcontinuity.deploy.credentials import user_filter

log = logging.getLogger(__name__)

MIN_LENGTH = 10


class ContinuityPasswordRefused(Exception):
    """The directory or our rules refused the change; the message says which and why."""


def ssha512(password: str) -> str:
    """A salted SHA-512 hash in the ``{SSHA512}`` form Dovecot checks natively."""
    salt = secrets.token_bytes(16)
    digest = hashlib.sha512(password.encode("utf-8") + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode()


def set_continuity_password(config: Config, login: str, directory_password: str,
                            continuity_password: str) -> None:
    """Store the hash of ``continuity_password`` in the user's own entry, bound as the user."""
    credentials = _bind_mode(config)
    if len(continuity_password) < MIN_LENGTH:
        raise ContinuityPasswordRefused(f"a continuity password needs at least {MIN_LENGTH}"
                                        " characters")
    if continuity_password == directory_password:
        raise ContinuityPasswordRefused("the continuity password must differ from your"
                                        " directory password")
    dn = _user_dn(config, credentials, login)
    try:
        connection = connect(credentials, dn, directory_password)
    except LDAPException as exc:
        raise ContinuityPasswordRefused(f"{login}: the directory refused your login"
                                        f" ({_short(exc)})") from None
    except OSError as exc:
        raise DirectoryUnavailable(f"{credentials.directory}: {_short(exc)}") from None
    try:
        connection.modify(dn, {credentials.password_attribute: [
            (ldap3.MODIFY_REPLACE, [ssha512(continuity_password)])]})
    except LDAPException as exc:
        raise ContinuityPasswordRefused(
            f"{login}: the directory refused to store it in {credentials.password_attribute}"
            f" ({_short(exc)}); users need write access to that attribute of their own entry"
        ) from None
    finally:
        connection.unbind()
    log.info("event=continuity_password_set login=%s", login)


def _bind_mode(config: Config) -> CredentialsSection:
    credentials = config.credentials
    if credentials is None or credentials.directory_login != "bind":
        raise ContinuityPasswordRefused(
            f"{config.source}: continuity passwords are for [credentials] directory_login ="
            ' "bind" (Active Directory); with "hash" the standby copies the directory\'s own'
            " hashes")
    return credentials


def _user_dn(config: Config, credentials: CredentialsSection, login: str) -> str:
    """The user's entry, found by the service account with the same filter Dovecot uses."""
    connection = service_connection(config)
    try:
        connection.search(credentials.base, user_filter(credentials, escape_filter_chars(login)),
                          ldap3.SUBTREE, attributes=[], size_limit=2)
        entries = [e for e in connection.response or [] if e.get("type") == "searchResEntry"]
    except (LDAPException, OSError) as exc:
        raise DirectoryUnavailable(f"{credentials.directory}: {_short(exc)}") from None
    finally:
        connection.unbind()
    if len(entries) != 1:
        raise ContinuityPasswordRefused(f"{login}: no single mail user of that login in the"
                                        " directory (unknown, locked, or outside the filter)")
    return str(entries[0]["dn"])


def _short(exc: Exception) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())[:200]
