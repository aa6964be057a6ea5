"""A private OpenLDAP slapd under the lab directory: the organisation's directory (part
``directory``, ``lab up --directory ldap|ad``).

It holds the lab users with their ``lab.json`` passwords (as ``{SSHA}`` hashes), a service
account that may read the hashes (what Dovecot and ``credentials-sync`` bind as), and the ppolicy
overlay, so that an account is locked the way OpenLDAP sites lock one (``pwdAccountLockedTime``).
Debian's slapd package is used as a program only: its own configuration, database and listener
live under ``DIR/directory``; /etc/ldap and the system's slapd are never touched. It listens on
127.0.0.1 with StartTLS, its certificate from the lab's CA.

``--directory ad`` plays Active Directory where it matters to us: nobody, the service account
included, can read the users' password hashes (Dovecot binds as the user to check a password),
and each user may set a continuity password in an attribute of their own entry
(``mailContinuityPassword``, as a site would use an ``extensionAttribute``), readable by the
service account only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcontinuity.config import Config, Endpoint, read_secret
from mailcontinuity.credentials.sync import refresh_credentials as refresh
from mailcontinuity.deploy.credentials import (
    dovecot_credentials_passdb,
    dovecot_directory_passdb,
    dovecot_ldap_args,
)
from mailcontinuity.lab.dovecot import DovecotInstance, LabUser
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.process import log_tail, read_pid, spawn, stop_pid_file, wait_for
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.mail.tools import CommandError, run_command

SUFFIX = "dc=example,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"
SERVICE_DN = f"cn=mailcontinuity,ou=services,{SUFFIX}"
SLAPD_USER = "openldap"
SLAPD_PACKAGES = "slapd ldap-utils"
# "Locked until an administrator unlocks": ppolicy's permanent lock value.
PERMANENT_LOCK = "000001010000Z"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
CONTINUITY_ATTRIBUTE = "mailContinuityPassword"
# OIDs under IANA's example enterprise number (RFC 5612): a lab schema, never a real one.
CONTINUITY_SCHEMA = f"""attributetype ( 1.3.6.1.4.1.32473.18.1.1 NAME '{CONTINUITY_ATTRIBUTE}'
  DESC 'hash of the continuity password the user set'
  EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.32473.18.2.1 NAME 'mailContinuityUser' SUP top AUXILIARY
  MAY {CONTINUITY_ATTRIBUTE} )
"""


def ssha(password: str) -> str:
    """OpenLDAP's default ``{SSHA}`` hash (salted SHA-1), which Dovecot checks natively; made
    here so that no password is ever on a command line (``slappasswd -s``)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def uid_of(address: str) -> str:
    return address.partition("@")[0]


@dataclass
class LabDirectory:
    """slapd under ``root``, listening on ``endpoint``; ``users`` are the lab's users."""

    root: Path
    endpoint: Endpoint
    users: list[LabUser]
    certificates: LabCertificates
    root_password_file: Path
    bind_password_file: Path
    kind: str = "ldap"
    """``ldap`` (OpenLDAP, hashes readable by the service account) or ``ad`` (see above)."""

    @property
    def config_file(self) -> Path:
        return self.root / "slapd.conf"

    @property
    def log_file(self) -> Path:
        return self.root / "slapd.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "run" / "lab-slapd.pid"

    @property
    def uri(self) -> str:
        return f"ldap://{self.endpoint}"

    def dn(self, address: str) -> str:
        return f"uid={uid_of(address)},{PEOPLE}"

    def write_config(self) -> None:
        """slapd.conf, the TLS key slapd (user openldap) may read, and the initial database
        (``slapadd``, offline: nothing listens before the entries are in)."""
        if shutil.which("slapd") is None or shutil.which("slapadd") is None:
            raise LabError(f"slapd not found: apt-get install {SLAPD_PACKAGES}"
                           " (scripts/install-system-deps.sh preseeds it unconfigured)")
        slapd = pwd.getpwnam(SLAPD_USER)
        for sub in ("db", "run", "tls"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "tls" / "server.key"
        key.touch(mode=0o600)
        key.write_bytes(self.certificates.key_file.read_bytes())
        root_password = secrets.token_urlsafe(18)
        _write_secret(self.root_password_file, root_password)
        _write_secret(self.bind_password_file, "p" + secrets.token_urlsafe(15))
        self.config_file.touch(mode=0o640)
        self.config_file.write_text(self._render(ssha(root_password), key))
        ldif = self.root / "initial.ldif"
        ldif.touch(mode=0o600)
        ldif.write_text(self._initial_entries())
        try:
            run_command(["slapadd", "-q", "-f", str(self.config_file), "-l", str(ldif)])
        except CommandError as exc:
            raise LabError(f"directory: slapadd failed: {exc}") from None
        finally:
            ldif.unlink()
        for path in [self.root / "db", self.root / "run", self.root / "tls", key,
                     *(self.root / "db").iterdir()]:
            os.chown(path, slapd.pw_uid, slapd.pw_gid)
        os.chown(self.config_file, 0, slapd.pw_gid)

    def _render(self, root_hash: str, key: Path) -> str:
        includes = "".join(f"include /etc/ldap/schema/{name}.schema\n" for name in SCHEMAS)
        if self.kind == "ad":
            schema = self.root / "mailcontinuity.schema"
            schema.write_text(CONTINUITY_SCHEMA)
            includes += f"include {schema}\n"
        return f"""# Lab directory, written by mailcontinuity lab; do not edit.
{includes}modulepath /usr/lib/ldap
moduleload back_mdb.la
moduleload ppolicy.la
pidfile {self.root}/run/slapd.pid
argsfile {self.root}/run/slapd.args
password-hash {{SSHA}}
TLSCACertificateFile {self.certificates.ca_file}
TLSCertificateFile {self.certificates.cert_file}
TLSCertificateKeyFile {key}

database mdb
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {root_hash}
directory {self.root}/db
maxsize 104857600
index objectClass eq
index uid,mail eq

overlay ppolicy
ppolicy_default "cn=default,ou=policies,{SUFFIX}"
ppolicy_use_lockout

# Passwords travel only inside TLS (StartTLS), as on a real directory.
security simple_bind=128
{self._password_access()}access to *
  by dn.exact="{SERVICE_DN}" read
  by self read
  by * none
"""

    def _password_access(self) -> str:
        if self.kind == "ad":  # hashes unreadable; the continuity password for the copy
            return (f"access to attrs=userPassword\n  by anonymous auth\n  by self write\n"
                    f"  by * none\naccess to attrs={CONTINUITY_ATTRIBUTE}\n"
                    f'  by dn.exact="{SERVICE_DN}" read\n  by self write\n  by * none\n')
        return (f'access to attrs=userPassword\n  by dn.exact="{SERVICE_DN}" read\n'
                "  by anonymous auth\n  by self write\n  by * none\n")

    def _initial_entries(self) -> str:
        bind_hash = ssha(self.bind_password_file.read_text().strip())
        entries = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
            "o: mailcontinuity lab\n",
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
            f"dn: ou=policies,{SUFFIX}\nobjectClass: organizationalUnit\nou: policies\n",
            f"dn: cn=default,ou=policies,{SUFFIX}\nobjectClass: organizationalRole\n"
            "objectClass: pwdPolicy\ncn: default\npwdAttribute: userPassword\npwdLockout: TRUE\n"
            "pwdMaxFailure: 5\npwdLockoutDuration: 0\n",
            f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\n"
            f"objectClass: simpleSecurityObject\ncn: mailcontinuity\nuserPassword: {bind_hash}\n",
        ]
        entries += [self._user_entry(user) for user in self.users]
        return "\n".join(entries)

    def _user_entry(self, user: LabUser) -> str:
        uid = uid_of(user.address)
        extra = "objectClass: mailContinuityUser\n" if self.kind == "ad" else ""
        return (f"dn: {self.dn(user.address)}\nobjectClass: inetOrgPerson\n{extra}uid: {uid}\n"
                f"cn: {uid}\nsn: {uid}\nmail: {user.address}\n"
                f"userPassword: {ssha(user.password)}\n")

    # --- the part -------------------------------------------------------------------------
    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def start(self) -> None:
        """slapd in the foreground of its own session (``-d`` writes its log to a file: the lab
        has no syslog), as user openldap."""
        if self.pid() is not None:
            return
        argv = ["slapd", "-h", f"ldap://{self.endpoint}/", "-f", str(self.config_file),
                "-u", SLAPD_USER, "-g", SLAPD_USER, "-d", "stats"]
        spawn(argv, self.log_file, self.pid_file)
        try:
            wait_for([self.endpoint], up=True, what="lab directory (slapd)")
        except LabError:
            self.stop()
            raise LabError(f"directory did not start: {log_tail(self.log_file)}"
                           f" (log: {self.log_file})") from None

    def stop(self) -> None:
        if self.pid() is None:
            return
        stop_pid_file(self.pid_file)
        wait_for([self.endpoint], up=False, what="lab directory (slapd)")

    # --- what an administrator does to accounts (tests) ------------------------------------
    @contextlib.contextmanager
    def admin(self) -> Iterator[Any]:
        """An ldap3 connection as the directory's root DN, over verified StartTLS."""
        import ldap3

        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.certificates.ca_file))
        server = ldap3.Server(self.endpoint.host, port=self.endpoint.port, tls=tls,
                              connect_timeout=5)
        connection = ldap3.Connection(server, ROOT_DN,
                                      self.root_password_file.read_text().strip(),
                                      receive_timeout=10, raise_exceptions=True)
        connection.open()
        connection.start_tls()
        connection.bind()
        try:
            yield connection
        finally:
            connection.unbind()

    def lock(self, address: str) -> None:
        """Lock an account the ppolicy way (permanently, until an administrator unlocks it)."""
        import ldap3

        with self.admin() as connection:
            connection.modify(self.dn(address),
                              {"pwdAccountLockedTime": [(ldap3.MODIFY_REPLACE,
                                                         [PERMANENT_LOCK])]})

    def unlock(self, address: str) -> None:
        import ldap3

        with self.admin() as connection:
            connection.modify(self.dn(address),
                              {"pwdAccountLockedTime": [(ldap3.MODIFY_DELETE, [])]})

    def remove(self, address: str) -> None:
        with self.admin() as connection:
            connection.delete(self.dn(address))

    def add(self, user: LabUser) -> None:
        uid = uid_of(user.address)
        with self.admin() as connection:
            connection.add(self.dn(user.address), ["inetOrgPerson"],
                           {"uid": uid, "cn": uid, "sn": uid, "mail": user.address,
                            "userPassword": ssha(user.password)})


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(secret + "\n")


# --- wiring into the lab (lab up --directory ldap) ------------------------------------------
DIRECTORY_KINDS = ("ldap", "ad")


def describe_directory(directory: Path, kind: str, port: int) -> dict[str, str]:
    """``lab.json``'s ``directory``: where the lab's directory listens and its tree."""
    return {"kind": kind, "ldap": f"127.0.0.1:{port}", "base": PEOPLE, "bind_dn": SERVICE_DN,
            "copy": str(directory / "standby" / "credentials" / "passwd")}


def credentials_section(directory: Path, description: dict[str, Any]) -> str:
    """The lab configuration's ``[credentials]``: the standby's copy of the lab directory,
    reached over StartTLS verified by the lab's CA."""
    described = description["directory"]
    ad = ('directory_login = "bind"\n'
          f'password_attribute = "{CONTINUITY_ATTRIBUTE}"\n') if described["kind"] == "ad" else ""
    return f"""
[credentials]
directory = "{described["ldap"]}"
tls = "starttls"
tls_ca_file = "{LabCertificates(directory / "tls").ca_file}"
bind_dn = "{described["bind_dn"]}"
bind_password_file = "{directory / "secrets" / "directory-bind-password"}"
base = "{described["base"]}"
copy_file = "{described["copy"]}"
{ad}"""


def lab_directory(directory: Path, description: dict[str, Any],
                  users: list[LabUser]) -> LabDirectory:
    return LabDirectory(directory / "directory", _endpoint(description["directory"]["ldap"]),
                        users, LabCertificates(directory / "tls"),
                        directory / "secrets" / "directory-root-password",
                        directory / "secrets" / "directory-bind-password",
                        description["directory"]["kind"])


def _endpoint(value: str) -> Endpoint:
    host, _, port = value.rpartition(":")
    return Endpoint(host, int(port))


def use_directory(config: Config, primary: DovecotInstance,
                  standby: DovecotInstance) -> None:
    """Both Dovecots check passwords against the directory; the standby, as ``check-config``
    says, falls back to its copy (``credentials.copy_file``) when the directory is away."""
    primary.passdb = dovecot_directory_passdb(_ldap_args_file(primary))
    standby.passdb = dovecot_credentials_passdb(config, _ldap_args_file(standby))


def write_dovecot_ldap_args(config: Config, *instances: DovecotInstance) -> None:
    """Each Dovecot's LDAP driver file, with the service account's password: 0600 root."""
    assert config.credentials is not None
    password = read_secret(config, "credentials.bind_password_file")
    for instance in instances:
        path = _ldap_args_file(instance)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(dovecot_ldap_args(config, password))
    copy_dir = config.credentials.copy_file.parent
    copy_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    shutil.chown(copy_dir, "root", config.credentials.copy_group)


def _ldap_args_file(instance: DovecotInstance) -> Path:
    return instance.root / "ldap.conf.ext"


def refresh_credentials(config: Config) -> None:
    """The standby's first copy, as the role's timer makes it right after installation."""
    report = refresh(config)
    if report.failed:
        raise LabError(f"credentials-sync: {report.reason()}")
