"""A private Dovecot instance under a directory: the lab's primary and standby mail stores.

Independence from the system's Dovecot comes from ``instance_name``, ``base_dir``, ``state_dir``,
``log_path`` and explicit listener addresses; nothing under /etc/dovecot is included.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mailcontinuity.config import Endpoint
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.process import read_pid, stop_process_tree, wait_for
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.mail.tools import CommandError, run_command

# The authentication socket Postfix's smtpd uses for SMTP AUTH (in base_dir).
POSTFIX_AUTH_SOCKET = "auth-postfix"

# Dovecot refuses mail access as root; Debian's base system always has the "mail" user.
MAIL_USER = "mail"

# TLS offered, plaintext logins still allowed: a typical existing system (the lab's primary).
PERMISSIVE_SETTINGS = {"ssl": "yes", "disable_plaintext_auth": "no"}


@dataclass(frozen=True)
class LabUser:
    address: str
    password: str

    @property
    def login(self) -> str:
        return self.address


@dataclass
class DovecotInstance:
    """One Dovecot under ``root``; ``listeners`` maps protocol name to its endpoint."""

    name: str
    root: Path
    listeners: dict[str, Endpoint]
    users: list[LabUser]
    admin: LabUser
    relay: Endpoint
    """Where this instance sends mail it generates (submission, vacation): the lab gateway."""
    certificates: LabCertificates
    """The server certificate every listener offers (STARTTLS)."""
    journal_lmtp: Endpoint | None = None
    """A second LMTP listener without sieve, for journal copies (the standby's)."""
    lmtp_plugins: str = "protocol lmtp {\n  mail_plugins = $mail_plugins sieve\n}"
    """Which plugins LMTP loads: globally, or per listener address with ``local`` blocks."""
    settings: dict[str, str] = field(default_factory=lambda: dict(PERMISSIVE_SETTINGS))
    """Top-level settings on authentication and relaying: the primary plays a customer's
    permissive system; the standby gets what ``check-config`` prints
    (``required_settings.dovecot_standby_hardening``)."""
    passdb: str | None = None
    """The users' passdb block, when not the lab's own passwd-file (``lab up --directory``:
    the directory, and for the standby its copy when the directory is away)."""

    @property
    def config_file(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "dovecot.log"

    def maildir(self, address: str) -> Path:
        """The user's Maildir, as ``mail_location`` below lays it out."""
        local, _, domain = address.partition("@")
        return self.mail_root / domain / local / "Maildir"

    def write_config(self) -> None:
        mail = pwd.getpwnam(MAIL_USER)
        for sub in ("run", "state", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.mail_root.mkdir(parents=True, exist_ok=True)
        os.chown(self.mail_root, mail.pw_uid, mail.pw_gid)
        # With a directory (``passdb``), the users file is the userdb alone: no passwords.
        _write_private(
            self.root / "users",
            "".join(f"{user.login}:{'' if self.passdb else '{PLAIN}' + user.password}::::::\n"
                    for user in self.users),
        )
        _write_private(self.root / "masters",
                       f"{self.admin.login}:{{PLAIN}}{self.admin.password}\n")
        self.config_file.write_text(self._render(mail.pw_uid))

    def install_global_sieve(self, path: Path, script: str) -> None:
        """A global script (``sieve_before``), compiled here: Dovecot's mail processes could
        not write the compiled copy next to it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        try:
            run_command(["sievec", "-c", str(self.config_file), "-x", "+editheader", str(path)])
        except CommandError as exc:
            raise LabError(f"{self.name}: cannot compile {path}: {exc}") from None

    def _render(self, mail_uid: int) -> str:
        root = self.root
        protocols = " ".join(self.listeners)
        settings = "".join(f"{key} = {value}\n" for key, value in self.settings.items())
        services = {
            "imap": ("imap-login", "imap"),
            "lmtp": ("lmtp", "lmtp"),
            "sieve": ("managesieve-login", "sieve"),
            "submission": ("submission-login", "submission"),
        }
        blocks = []
        for protocol, endpoint in self.listeners.items():
            service, listener = services[protocol]
            extra = "  inet_listener imaps {\n    port = 0\n  }\n" if protocol == "imap" else ""
            if protocol == "submission":
                extra = "  inet_listener submissions {\n    port = 0\n  }\n"
            if protocol == "lmtp" and self.journal_lmtp is not None:
                extra = (f"  inet_listener lmtp-journal {{\n"
                         f"    address = {self.journal_lmtp.host}\n"
                         f"    port = {self.journal_lmtp.port}\n  }}\n")
            blocks.append(
                f"service {service} {{\n  inet_listener {listener} {{\n"
                f"    address = {endpoint.host}\n    port = {endpoint.port}\n  }}\n{extra}}}\n"
            )
        return f"""# Lab instance {self.name}, written by mailcontinuity lab; do not edit.
instance_name = mailcontinuity-{self.name}-{hashlib.sha1(bytes(root)).hexdigest()[:8]}
base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log_file}
listen = 127.0.0.1
protocols = {protocols}
hostname = {self.name}.lab.test
postmaster_address = postmaster@lab.test
ssl_cert = <{self.certificates.cert_file}
ssl_key = <{self.certificates.key_file}
{settings}auth_mechanisms = plain login
auth_master_user_separator = *
first_valid_uid = {mail_uid}
mail_location = maildir:{self.mail_root}/%d/%n/Maildir
mail_plugins = $mail_plugins
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/masters
  master = yes
  pass = yes
}}
{self.passdb or self._users_passdb()}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
  default_fields = uid={MAIL_USER} gid={MAIL_USER} home={self.mail_root}/%d/%n
}}
submission_host = {self.relay}
{self.lmtp_plugins}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
service auth {{
  unix_listener {POSTFIX_AUTH_SOCKET} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
{"".join(blocks)}"""

    def _users_passdb(self) -> str:
        return (f"passdb {{\n  driver = passwd-file\n"
                f"  args = scheme=PLAIN username_format=%u {self.root}/users\n}}")

    def pid(self) -> int | None:
        return read_pid(self.root / "run" / "master.pid")

    def start(self) -> None:
        if self.pid() is not None:
            return
        if shutil.which("dovecot") is None:
            raise LabError(
                "dovecot not found: apt-get install dovecot-core dovecot-imapd dovecot-lmtpd"
                " dovecot-managesieved dovecot-sieve dovecot-submissiond"
            )
        try:
            run_command(["dovecot", "-c", str(self.config_file)])
        except CommandError as exc:
            raise LabError(f"{self.name} dovecot did not start: {exc}"
                           f" (log: {self.log_file})") from None
        wait_for(self.listeners.values(), up=True, what=f"{self.name} dovecot")

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        stop_process_tree(pid)
        wait_for(self.listeners.values(), up=False, what=f"{self.name} dovecot")


def _write_private(path: Path, text: str) -> None:
    """Credentials files: readable by root and Dovecot's auth process (group dovecot) only."""
    path.touch(mode=0o640, exist_ok=True)
    path.chmod(0o640)
    shutil.chown(path, "root", "dovecot")
    path.write_text(text)
