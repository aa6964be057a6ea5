"""A private Cyrus IMAP 3.6 under a directory: the lab's primary for ``lab up --primary cyrus``.

Debian's cyrus-imapd conflicts with dovecot-imapd as a package, so it is never installed: its
.debs (and the three libraries a Postfix+Dovecot host lacks) are fetched with ``apt-get download``
and unpacked with ``dpkg-deb -x`` into a cache shared by every lab on the host
(``MAILCONTINUITY_LAB_CACHE``, default /tmp/mailcontinuity-lab-cache), and run from there with
``LD_LIBRARY_PATH``. The verified recipe, and why each setting is there, is in the project's
research note on Cyrus; the settings that bite are commented below.

The layout is Debian's (``altnamespace: no``, ``unixhierarchysep: no``): personal folders live
under ``INBOX.`` with ``.`` as separator. Users log in as ``user@domain`` (``virtdomains:
userid``) with LOGIN and their lab.json password; mailcontinuity logs in as the admin
``mcadmin`` with SASL PLAIN and the user as authorization identity (proxy authentication).
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mailcontinuity.config import Endpoint
from mailcontinuity.lab.dovecot import MAIL_USER, LabUser
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.process import read_pid, stop_pid_file, wait_for
from mailcontinuity.lab.tls import LabCertificates

CACHE_ENV_VAR = "MAILCONTINUITY_LAB_CACHE"
# Under the temporary directory: the lab touches nothing else on an administrator's host.
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "mailcontinuity-lab-cache"
# The server and saslpasswd2, plus the libraries a Postfix+Dovecot Debian 12 host lacks.
CYRUS_DEBS = ("cyrus-imapd", "cyrus-common", "sasl2-bin", "libical3", "libpcre3", "libxapian30")
# The SASL realm of logins without a domain (the admin): Cyrus takes it from servername.
SERVER_NAME = "localhost"
# The largest message the lab's Cyrus takes (LMTP and APPEND): the oversize refusal test.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Folders every new user gets, with their special use (set per folder: the xlist-* options of
# imapd.conf make lowercase attributes that byte-comparing clients miss).
SPECIAL_FOLDERS = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash", "Junk": "\\Junk"}


def cyrus_root() -> Path:
    """The unpacked packages, fetched on first use; a lock keeps two labs from unpacking at
    once."""
    cache = Path(os.environ.get(CACHE_ENV_VAR, DEFAULT_CACHE)) / "cyrus"
    root = cache / "root"
    if (root / "usr/lib/cyrus/bin/master").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    for path in (cache, *cache.parents):
        if path.stat().st_mode & 0o005 != 0o005:
            raise LabError(f"Cyrus cache {cache}: {path} must be readable and searchable by"
                           f" the {MAIL_USER} user; set {CACHE_ENV_VAR} to another directory")
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "usr/lib/cyrus/bin/master").exists():
            return root
        debs = cache / "debs"
        debs.mkdir(exist_ok=True)
        _run(["apt-get", "download", *CYRUS_DEBS], "fetching Cyrus' packages"
             f" into {debs} (check the Debian mirror: apt-get update)", cwd=debs, timeout=300)
        partial = cache / "root.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(partial)], f"unpacking {deb}")
        partial.rename(root)
    return root


def _run(argv: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None,
         stdin: bytes = b"", timeout: float = 60) -> None:
    """Run a setup command; its failure is a LabError saying what was being done."""
    try:
        subprocess.run(argv, cwd=cwd, env=env, input=stdin, capture_output=True, check=True,
                       timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        said = getattr(exc, "stderr", b"") or b""
        raise LabError(f"{what}: {exc} {said.decode(errors='replace').strip()}") from None


@dataclass
class CyrusInstance:
    """One Cyrus master under ``root``; ``listeners`` maps "imap", "lmtp", "sieve" to
    endpoints (the same names as DovecotInstance's, so the lab treats both alike)."""

    name: str
    root: Path
    listeners: dict[str, Endpoint]
    users: list[LabUser]
    admin: LabUser
    certificates: LabCertificates

    @property
    def config_file(self) -> Path:
        return self.root / "conf" / "imapd.conf"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "master.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "run" / "master.pid"

    def _path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def _env(self, binaries: Path) -> dict[str, str]:
        libs = [binaries / "usr/lib/x86_64-linux-gnu", binaries / "lib/x86_64-linux-gnu"]
        return {**os.environ, "LD_LIBRARY_PATH": ":".join(map(str, libs))}

    def write_config(self) -> None:
        """imapd.conf, cyrus.conf, the TLS copy Cyrus reads as the mail user, the SASL users."""
        binaries = cyrus_root()
        bin_dir = binaries / "usr/lib/cyrus/bin"
        for sub in ("conf", "lib/db", "lib/proc", "lib/socket", "lib/log", "lib/lock",
                    "lib/user", "lib/quota", "lib/msg", "spool", "sieve", "run/socket", "tls",
                    "log"):
            self._path(sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        # Cyrus opens its key after dropping to the mail user: it gets a copy of its own.
        shutil.copyfile(self.certificates.cert_file, self._path("tls", "server.pem"))
        key = self._path("tls", "server.key")
        key.touch(mode=0o600)
        shutil.copyfile(self.certificates.key_file, key)
        conf = self.config_file
        conf.write_text(self._imapd_conf())
        ports = {name: endpoint for name, endpoint in self.listeners.items()}
        services = "\n".join(
            f'  {service:<5} cmd="{bin_dir}/{program} -C {conf}{extra}"'
            f' listen="{ports[service].host}:{ports[service].port}" prefork=0 maxchild=30'
            for service, program, extra in (("imap", "imapd", ""),
                                            # -a: LMTP over TCP pre-authorised, as Postfix
                                            # delivers without AUTH.
                                            ("lmtp", "lmtpd", " -a"),
                                            ("sieve", "timsieved", "")))
        self._path("conf", "cyrus.conf").write_text(f"""START {{
  recover cmd="{bin_dir}/ctl_cyrusdb -C {conf} -r"
}}
SERVICES {{
{services}
}}
EVENTS {{
  checkpoint cmd="{bin_dir}/ctl_cyrusdb -C {conf} -c" period=30
}}
DAEMON {{
  idled cmd="{bin_dir}/idled -C {conf}"
}}
""")
        saslpasswd2 = binaries / "usr/sbin/saslpasswd2"
        sasldb = self._path("lib", "sasldb2")
        for user in [self.admin, *self.users]:
            login, _, realm = user.login.partition("@")
            _run([str(saslpasswd2), "-p", "-c", "-f", str(sasldb), "-u", realm or SERVER_NAME,
                  login], f"saslpasswd2 for {user.login}", env=self._env(binaries),
                 stdin=user.password.encode())
        owner = pwd.getpwnam(MAIL_USER)
        for top in ("lib", "spool", "sieve", "run", "tls", "log"):
            for directory, _, files in os.walk(self._path(top)):
                for name in [directory, *(os.path.join(directory, f) for f in files)]:
                    os.chown(name, owner.pw_uid, owner.pw_gid)

    def _imapd_conf(self) -> str:
        p = self._path
        return f"""configdirectory: {p("lib")}
defaultpartition: default
partition-default: {p("spool")}
sievedir: {p("sieve")}
sieveusehomedir: false
proc_path: {p("run", "proc")}
mboxname_lockpath: {p("run", "lock")}
lmtpsocket: {p("run", "socket", "lmtp")}
idlesocket: {p("run", "socket", "idle")}
notifysocket: {p("run", "socket", "notify")}
# Services refuse to run as root; master binds as root, then drops to this user.
cyrus_user: {MAIL_USER}
servername: {SERVER_NAME}
# Debian's layout (the compiled-in defaults are the other way round): INBOX. and "."
altnamespace: no
unixhierarchysep: no
# user@domain logins and recipients; the admin (no domain) administers every domain.
virtdomains: userid
lmtp_downcase_rcpt: yes
admins: {self.admin.login}
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {p("lib", "sasldb2")}
sasl_mech_list: PLAIN LOGIN
tls_server_cert: {p("tls", "server.pem")}
tls_server_key: {p("tls", "server.key")}
syslog_prefix: mclab-{self.name}
# Small enough for a test to exceed (APPENDLIMIT says it; docs/primaries.md).
maxmessagesize: {MAX_MESSAGE_BYTES}
# Otherwise a second delivery of one Message-ID is dropped silently (tests deliver twice).
duplicatesuppression: 0
delete_mode: immediate
autocreate_post: yes
autocreate_quota: 0
autocreate_inbox_folders: {" | ".join(SPECIAL_FOLDERS)}
autocreate_subscribe_folder: {" | ".join(SPECIAL_FOLDERS)}
{"".join(f"xlist-{folder.lower()}: {folder}{chr(10)}" for folder in SPECIAL_FOLDERS)}"""

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def start(self) -> None:
        if self.pid() is not None:
            return
        binaries = cyrus_root()
        _run([str(binaries / "usr/lib/cyrus/bin/master"), "-d", "-C", str(self.config_file),
              "-M", str(self._path("conf", "cyrus.conf")), "-p", str(self.pid_file),
              "-L", str(self.log_file)], f"starting {self.name} cyrus (log: {self.log_file})",
             env=self._env(binaries))
        wait_for(self.listeners.values(), up=True, what=f"{self.name} cyrus")

    def stop(self) -> None:
        if self.pid() is None:
            return
        stop_pid_file(self.pid_file)
        wait_for(self.listeners.values(), up=False, what=f"{self.name} cyrus")
