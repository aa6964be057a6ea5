"""What the standby's Dovecot must be told for credential continuity (``[credentials]``).

The standby checks passwords against the directory while it answers, and against its own copy
(``credentials.copy_file``, written by ``credentials-sync``) when it does not:

- ``passdb ldap`` first, with ``result_internalfail = continue``: only when the directory cannot
  be asked (down, unreachable) does Dovecot go on to the copy. A wrong password, or a user the
  directory does not list (removed, locked, outside the filter), is a final failure
  (``result_failure = return-fail``): a stale copy never lets in someone the directory refuses.
- ``passdb passwd-file`` on the copy: read by Dovecot's auth process (user dovecot), hence
  mode 0640 root:dovecot; replaced atomically, which Dovecot notices without a reload.

The same filter selects the users ``credentials-sync`` copies and the users Dovecot accepts
from the directory, with locked accounts (``lock_attribute``) left out of both.
"""

from __future__ import annotations

from pathlib import Path

from mailcontinuity.config import Config, CredentialsSection

# Where the role puts the LDAP driver's own file; it holds the bind password (mode 0600 root:
# Dovecot reads it as root when its auth process starts).
DOVECOT_LDAP_ARGS = Path("/etc/dovecot/mailcontinuity-ldap.conf.ext")
# Shown in check-config instead of the secret, which only the role (or the lab) writes.
BIND_PASSWORD_PLACEHOLDER = "<contents of credentials.bind_password_file>"


def user_filter(credentials: CredentialsSection, login: str | None = None) -> str:
    """The LDAP filter for the directory's mail users who may log in (not locked); with
    ``login``, for that one user (``%u`` for Dovecot, which escapes what it substitutes)."""
    parts = [credentials.filter]
    if login is not None:
        parts.append(f"({credentials.login_attribute}={login})")
    if credentials.lock_attribute:
        parts.append(f"(!({credentials.lock_attribute}=*))")
    return f"(&{''.join(parts)})"


def directory_uri(credentials: CredentialsSection) -> str:
    """``ldap://host:port`` (StartTLS or clear) or ``ldaps://host:port`` (``tls = "ssl"``)."""
    scheme = "ldaps" if credentials.tls == "ssl" else "ldap"
    return f"{scheme}://{credentials.directory}"


def dovecot_ldap_args(config: Config, bind_password: str = BIND_PASSWORD_PLACEHOLDER) -> str:
    """The ``args`` file of Dovecot's LDAP passdb: how to reach and ask the directory.

    Dovecot expands ``%`` in filters, so a literal ``%`` of the administrator's filter is
    doubled. TLS is verified (``tls_require_cert = demand``) against ``tls_ca_file`` or the
    system's CAs, as every other hop of ours.
    """
    credentials = _section(config)
    lines = {
        "uris": directory_uri(credentials),
        "dn": credentials.bind_dn,
        "dnpass": bind_password,
        "auth_bind": "yes" if credentials.directory_login == "bind" else "no",
        "ldap_version": "3",
        "base": credentials.base,
        "scope": "subtree",
        "pass_filter": user_filter(credentials.model_copy(
            update={"filter": credentials.filter.replace("%", "%%")}), "%u"),
        "pass_attrs": f"{credentials.login_attribute}=user,"
                      f"{credentials.password_attribute}=password",
        "default_pass_scheme": "SSHA",
        # LDAP in auth worker processes: a directory that hangs (libldap's StartTLS and bind
        # wait without a timeout) then blocks only the workers asking it, never the auth
        # process that also answers from the copy.
        "blocking": "yes",
    }
    if credentials.directory_login == "bind":
        # The directory checks the password (a bind as the user, found with the filter); the
        # continuity password is for the copy only.
        lines["pass_attrs"] = f"{credentials.login_attribute}=user"
        del lines["default_pass_scheme"]
    if credentials.tls != "none":
        lines["tls_require_cert"] = "demand"
        lines["tls_ca_cert_file" if credentials.tls_ca_file else "tls_ca_cert_dir"] = str(
            credentials.tls_ca_file or "/etc/ssl/certs")
        if credentials.tls == "starttls":
            lines["tls"] = "yes"
    return "".join(f"{key} = {value}\n" for key, value in lines.items())


def dovecot_credentials_passdb(config: Config, ldap_args: Path = DOVECOT_LDAP_ARGS) -> str:
    """The standby's user passdb: the directory, then the copy when the directory cannot answer
    (``check_first = "copy"``: the copy, then the directory for what the copy does not accept).

    Replaces the standby's own user passdb (a master passdb for the sync agent stays before it).
    The userdb must not depend on the directory either (a static or passwd-file userdb): an
    LDAP userdb would make every login wait for it, then fail, while it is away."""
    credentials = _section(config)
    if credentials.check_first == "copy":
        return (
            "passdb {\n"
            "  driver = passwd-file\n"
            f"  args = username_format=%u {credentials.copy_file}\n"
            "  result_success = return-ok\n"
            "  result_failure = continue\n"
            "  result_internalfail = continue\n"
            "}\n"
            "passdb {\n"
            "  driver = ldap\n"
            f"  args = {ldap_args}\n"
            "}"
        )
    return (
        "passdb {\n"
        "  driver = ldap\n"
        f"  args = {ldap_args}\n"
        "  result_success = return-ok\n"
        "  result_failure = return-fail\n"
        "  result_internalfail = continue\n"
        "}\n"
        "passdb {\n"
        "  driver = passwd-file\n"
        f"  args = username_format=%u {credentials.copy_file}\n"
        "}"
    )


def dovecot_directory_passdb(ldap_args: Path = DOVECOT_LDAP_ARGS) -> str:
    """A passdb on the directory alone: what a primary that knows no copy uses (the lab's)."""
    return f"passdb {{\n  driver = ldap\n  args = {ldap_args}\n}}"


def _section(config: Config) -> CredentialsSection:
    if config.credentials is None:
        raise ValueError(f"{config.source}: no [credentials] section")
    return config.credentials
