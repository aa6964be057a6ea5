"""The emergency portal in the lab: Debian's Roundcube on PHP's built-in web server.

Roundcube is pointed at the standby's IMAP and submission, as the Ansible role points it on a
real standby, so users read, search, send and file mail in a browser during an outage with
their usual credentials. The lab keeps everything of its own under ``DIR/webmail`` (config,
SQLite database, logs, temp files); Roundcube's code and defaults come from the package and
``ROUNDCUBE_CONFIG_DIR`` tells it where the lab's configuration is.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mailcontinuity.config import Endpoint
from mailcontinuity.deploy.portal import (
    BANNER_PLUGIN,
    BANNER_PLUGIN_NAME,
    php_string,
    roundcube_portal_php,
)
from mailcontinuity.deploy.webmail import PLUGIN_NAME, ROUNDCUBE_PLUGIN, roundcube_security_php
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.process import free_ports, read_pid, stop_pid_file, wait_for
from mailcontinuity.lab.tls import LabCertificates

ROUNDCUBE_HOME = Path("/var/lib/roundcube")
ROUNDCUBE_ETC = Path("/etc/roundcube")
ROUNDCUBE_SCHEMA = Path("/usr/share/roundcube/SQL/sqlite.initial.sql")
PACKAGES = "roundcube roundcube-sqlite3 roundcube-plugins php-cli php-sqlite3"
WEB_USER = "www-data"
ROUNDCUBE_PLUGIN_DIRS = (ROUNDCUBE_HOME / "plugins", Path("/usr/share/roundcube/plugins"))
# Roundcube's page loads make parallel requests; one PHP worker would serialise them.
PHP_WORKERS = "4"


@dataclass
class Webmail:
    """Roundcube under ``root``, served on ``endpoint``, for the standby's ``imap`` and
    ``submission``."""

    root: Path
    endpoint: Endpoint
    imap: Endpoint
    submission: Endpoint
    source: str | None = None
    """The address Roundcube connects to the standby's IMAP from (``standby.webmail_address``)."""
    certificates: LabCertificates | None = None
    """With these, the portal is served over HTTPS (``lab.tlsproxy`` in front of ``php -S``)."""
    managesieve: Endpoint | None = None
    """The standby's ManageSieve, for Roundcube's managesieve plugin (out-of-office)."""
    status_file: Path | None = None
    """``portal.status_file``: the banner plugin shows what it says (issue 18)."""

    @property
    def url(self) -> str:
        return f"{'https' if self.certificates else 'http'}://{self.endpoint}/"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def log_file(self) -> Path:
        return self.root / "logs" / "php-server.log"

    def write_config(self) -> None:
        """Roundcube's config and an initialised SQLite database; kept if already there."""
        _check_installed()
        for sub in ("config", "logs", "temp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for shipped in ("defaults.inc.php", "mimetypes.php"):
            link = self.config_dir / shipped
            if not link.is_symlink():
                link.symlink_to(ROUNDCUBE_ETC / shipped)
        database = self.root / "roundcube.sqlite"
        if not database.exists():
            with sqlite3.connect(database) as db:
                db.executescript(ROUNDCUBE_SCHEMA.read_text())
            db.close()
        config = self.config_dir / "config.inc.php"
        if config.exists():
            return
        settings = {
            "db_dsnw": f"sqlite:///{database}?mode=0600",
            "imap_host": f"{self.imap.host}:{self.imap.port}",
            "smtp_host": f"{self.submission.host}:{self.submission.port}",
            "smtp_user": "%u",
            "smtp_pass": "%p",
            "des_key": secrets.token_urlsafe(18)[:24],
            "product_name": "Emergency mail (lab standby)",
            "log_dir": str(self.root / "logs"),
            "temp_dir": str(self.root / "temp"),
            "skin": "elastic",
            "support_url": "",
        }
        lines = [f"$config[{php_string(key)}] = {php_string(value)};"
                 for key, value in settings.items()]
        lines += ["$config['plugins'] = [];", "$config['enable_spellcheck'] = false;"]
        config.write_text("<?php\n// Written by mailcontinuity lab; do not edit.\n$config = [];\n"
                          + "\n".join(lines) + "\n" + roundcube_security_php(self.source)
                          + self._portal_php())
        config.chmod(0o600)
        self._harden()

    @property
    def pid_file(self) -> Path:
        return self.root / "php-server.pid"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def start(self) -> None:
        if self.pid() is not None:
            return
        _check_installed()
        env = {**os.environ, "ROUNDCUBE_CONFIG_DIR": str(self.config_dir),
               "PHP_CLI_SERVER_WORKERS": PHP_WORKERS}
        self._harden()
        php = (Endpoint("127.0.0.1", free_ports(1)[0]) if self.certificates is not None
               else self.endpoint)
        with open(self.log_file, "ab") as log:
            # Never as root: PHP runs as the web server's user, which owns only DIR/webmail.
            process = subprocess.Popen(
                ["php", "-d", f"auto_prepend_file={self.root / 'prepend.php'}",
                 "-S", str(php), "-t", str(ROUNDCUBE_HOME / "public_html")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True, user=WEB_USER, group=WEB_USER, extra_groups=[])
        self.pid_file.write_text(f"{process.pid}\n")
        try:
            wait_for([php], up=True, what="webmail (php -S)")
            if self.certificates is not None:
                self._start_tls_proxy(php, self.certificates)
        except LabError:
            self.stop()
            raise LabError(f"webmail did not start; see {self.log_file}") from None

    def stop(self) -> None:
        stop_pid_file(self.tls_pid_file)
        stop_pid_file(self.pid_file)

    @property
    def tls_pid_file(self) -> Path:
        return self.root / "tls-proxy.pid"

    def _start_tls_proxy(self, php: Endpoint, certificates: LabCertificates) -> None:
        """HTTPS on ``endpoint`` with the lab's certificate, piped to ``php``."""
        with open(self.root / "logs" / "tls-proxy.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mailcontinuity.lab.tlsproxy", str(self.endpoint),
                 str(php), str(certificates.cert_file), str(certificates.key_file), WEB_USER],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.tls_pid_file.write_text(f"{process.pid}\n")
        wait_for([self.endpoint], up=True, what="webmail (HTTPS)")

    def _harden(self) -> None:
        """The portal's own plugin directory (Roundcube's plugins plus ours, deploy.webmail),
        and everything under DIR/webmail owned by the web server's user; the database and the
        configuration (session ids, the des_key) mode 0600."""
        plugins = self.root / "plugins"
        plugins.mkdir(exist_ok=True)
        for shipped in ROUNDCUBE_PLUGIN_DIRS:
            for plugin in sorted(shipped.glob("*")) if shipped.is_dir() else []:
                link = plugins / plugin.name
                if not link.is_symlink() and not link.exists():
                    link.symlink_to(plugin)
        ours = plugins / PLUGIN_NAME
        ours.mkdir(exist_ok=True)
        (ours / f"{PLUGIN_NAME}.php").write_text(ROUNDCUBE_PLUGIN)
        self._install_portal_plugins(plugins)
        (self.root / "prepend.php").write_text(
            "<?php\n// Written by mailcontinuity lab: Roundcube's plugins from DIR/webmail.\n"
            f"define('RCUBE_PLUGINS_DIR', {php_string(str(plugins) + '/')});\n")
        web = pwd.getpwnam(WEB_USER)
        self.root.chmod(0o700)
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, web.pw_uid, web.pw_gid, follow_symlinks=False)
        for private in (self.root / "roundcube.sqlite", self.config_dir / "config.inc.php"):
            if private.exists():
                private.chmod(0o600)

    def _portal_php(self) -> str:
        """The banner and managesieve lines (deploy.portal), as the role writes them."""
        return roundcube_portal_php(self.status_file, self.managesieve)

    def _install_portal_plugins(self, plugins: Path) -> None:
        """The banner plugin beside Roundcube's own; managesieve comes from Debian's
        roundcube-plugins, linked with the others."""
        if self.status_file is not None:
            banner = plugins / BANNER_PLUGIN_NAME
            banner.mkdir(exist_ok=True)
            (banner / f"{BANNER_PLUGIN_NAME}.php").write_text(BANNER_PLUGIN)
        if self.managesieve is not None and not (plugins / "managesieve").exists():
            raise LabError("Roundcube's managesieve plugin is missing: apt-get install"
                           " roundcube-plugins (scripts/install-system-deps.sh)")


def _check_installed() -> None:
    if shutil.which("php") is None or not (ROUNDCUBE_HOME / "public_html").is_dir():
        raise LabError(f"the lab's webmail needs Debian's packages: apt-get install {PACKAGES}"
                       " (scripts/install-system-deps.sh preseeds Roundcube for SQLite)")
