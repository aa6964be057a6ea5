"""The Ansible role, applied to this machine as CI does (gateway and standby on one host).

It configures the system's own Postfix and Dovecot (not the lab's private instances), so the
servers it configures are started by hand here and stopped again; no running systemd is needed.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from mailcontinuity.config import Endpoint
from mailcontinuity.deploy.routing import ROUTE_HEADER, STANDBY_TRANSPORT
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import wait_for_message
from mailcontinuity.lab.process import accepts_unix_connections
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.mail.tools import run_command
from mailcontinuity.store.migrations import MIGRATIONS

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
VENV_BIN = Path(sys.executable).parent
CI_USERS = Path("/etc/dovecot/mailcontinuity-ci-users")
CI_MASTERS = Path("/etc/dovecot/mailcontinuity-ci-masters")
UNITS = [Path(f"/etc/systemd/system/mailcontinuity-{name}")
         for name in ("milter.service", "policyd.service", "sync-agent.service",
                      "prune.service", "prune.timer", "sieve-sync.service",
                      "sieve-sync.timer")]


def run(*argv: str | Path, cwd: Path = ANSIBLE,
        timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


def play(wheel_dir: Path, inventory: str | Path = "localhost,",
         *extra_vars: str) -> subprocess.CompletedProcess:
    return run(VENV_BIN / "ansible-playbook", "-c", "local", "-i", inventory,
               "tests/localhost.yml", "-e", f"wheel_dir={wheel_dir}", "-e", "primary_port=12525",
               *(option for value in extra_vars for option in ("-e", value)))


def recap(result: subprocess.CompletedProcess) -> str:
    return next(line for line in result.stdout.splitlines()
                if line.startswith("localhost") and "ok=" in line)


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout as a wheel, which the role installs with pip."""
    built_dir = tmp_path_factory.mktemp("wheels")
    built = run(VENV_BIN / "pip", "wheel", "--no-deps", "-q", "-w", built_dir, ROOT, cwd=ROOT)
    assert built.returncode == 0, built.stderr
    return built_dir


@pytest.fixture(scope="module")
def applied(wheel_dir: Path) -> Iterator[list[str]]:
    """Apply the role (SQLite store); yields the run's recap line and the inotify limit before
    and after. Its second run, which must change nothing, is the store case's (below): the same
    tasks, plus the store's."""
    if shutil.which("postfix") is None or shutil.which("dovecot") is None:
        pytest.fail("postfix and dovecot must be installed (scripts/install-system-deps.sh)")
    # A fresh venv each time: the same version from a new wheel is not reinstalled by pip.
    shutil.rmtree("/opt/mailcontinuity", ignore_errors=True)
    # And a fresh state store: one left by another build may have a newer schema or an outage.
    for leftover in Path("/var/lib/mailcontinuity").glob("state.db*"):
        leftover.unlink()
    CI_USERS.write_text("ci@ci.test:{PLAIN}ci-password::::::\n")
    CI_MASTERS.write_text("cimaster:{PLAIN}ci-master-password\n")
    for credentials in (CI_USERS, CI_MASTERS):
        shutil.chown(credentials, "root", "dovecot")
        credentials.chmod(0o640)
    recaps = []
    # Just below what the role wants, so that it must raise the limit (the store case checks
    # that a higher one is kept); never lower than a value this test or the role did not set.
    if inotify_watches() <= INOTIFY_HIGHER:
        set_inotify_watches(INOTIFY_WANTED - 1)
    watches_before = inotify_watches()
    # An install from before the tables moved out of /etc/postfix (none where they are now): the
    # role carries them over, then removes them.
    shutil.rmtree(TRANSPORT.parent, ignore_errors=True)
    FORMER_TABLES.mkdir(exist_ok=True)
    (FORMER_TABLES / "transport").write_text(
        f"{ROUTE_HEADER}primary\n{CARRIED_OVER}\nci.test smtp:[127.0.0.1]:12525\n")
    result = play(wheel_dir)
    assert result.returncode == 0, f"the run failed:\n{result.stdout[-4000:]}"
    recaps += [recap(result), str(watches_before), str(inotify_watches())]
    yield recaps


def test_postfix_has_the_settings(applied: list[str]) -> None:
    assert run("postfix", "check").returncode == 0
    settings = run("postconf", "-n").stdout
    assert "relay_domains = ci.test" in settings
    assert f"transport_maps = hash:{TRANSPORT}" in settings
    assert "inet_interfaces = loopback-only" in settings
    # The sockets, under the queue directory, named relative to it: smtpd is chrooted there.
    assert "smtpd_milters = unix:mailcontinuity/milter/milter.sock" in settings
    assert "check_policy_service { unix:mailcontinuity/policyd/policyd.sock," in settings
    assert "ci.test smtp:[127.0.0.1]:12525" in TRANSPORT.read_text()
    assert CARRIED_OVER in TRANSPORT.read_text()
    assert not FORMER_TABLES.exists()
    tables = TRANSPORT.parent.stat()
    assert (pwd.getpwuid(tables.st_uid).pw_name, oct(tables.st_mode & 0o7777)) == (
        "mailcontinuity", "0o2770")
    config = tomllib.loads(Path(CONFIG).read_text())
    assert config["gateway"]["outage_alias_map"] == str(TRANSPORT.parent / "outage_aliases")
    # The standby's delivery service: its refusals defer mail for the primary, never bounce it.
    standby = run("postconf", "-M", "mailcontinuity-standby/unix").stdout.split()
    assert standby[-3:] == ["lmtp", "-o", "soft_bounce=yes"], standby


def test_postfix_check_warns_about_nothing(applied: list[str]) -> None:
    """``postfix check`` warns about anything in /etc/postfix not owned by root or writable by
    a group; it says so on a terminal only (script gives it one)."""
    result = run("script", "-qec", "postfix check", "/dev/null")
    assert result.returncode == 0, result.stdout
    assert "warning" not in result.stdout, result.stdout


def test_dovecot_has_the_standby_settings(applied: list[str]) -> None:
    result = run("doveconf", "-n")
    assert result.returncode == 0, result.stderr
    assert "mail_location = maildir:/var/vmail/%d/%n/Maildir" in result.stdout
    for port in (10143, 10024, 10587, 14190):
        assert f"port = {port}" in result.stdout
    # The hardening check-config prints wins over Debian's conf.d (ssl = yes there).
    hardening = {"ssl": "required", "disable_plaintext_auth": "yes",
                 "auth_failure_delay": "2 secs", "submission_relay_port": "25"}
    for key, value in hardening.items():
        assert run("doveconf", "-h", key).stdout.strip() == value, key


def test_units_verify(applied: list[str]) -> None:
    result = run("systemd-analyze", "verify", *UNITS)
    assert result.returncode == 0, result.stderr
    milter = UNITS[0].read_text()
    assert "ExecStart=/opt/mailcontinuity/bin/mailcontinuity --config" in milter
    # The maildir sink writes the standby's Maildirs, so the milter runs as their owner.
    assert "User=vmail" in milter and "SupplementaryGroups=mailcontinuity" in milter
    assert "ProtectSystem=strict" in milter and "NoNewPrivileges=true" in milter
    units = {path.name: path.read_text() for path in UNITS}
    assert not any("User=root" in text for text in units.values())
    policyd = units["mailcontinuity-policyd.service"]
    assert "User=mailcontinuity" in policyd and "NoNewPrivileges=false" in policyd
    # systemd forces NoNewPrivileges back on with any of these (systemd.exec(5)), which would
    # break `sudo postfix reload` and the setgid postqueue.
    forcing = [line for line in policyd.splitlines() if line.split("=")[0] in NNP_FORCING]
    assert forcing == []
    assert "NoNewPrivileges=true" in units["mailcontinuity-sync-agent.service"]


def test_root_is_lent_for_postfix_reload_only(applied: list[str]) -> None:
    rule = SUDOERS.read_text()
    assert run("visudo", "-cf", SUDOERS).returncode == 0
    grants = [line for line in rule.splitlines() if "NOPASSWD" in line]
    assert grants == [
        "mailcontinuity ALL=(root) NOPASSWD: /usr/sbin/postfix -c /etc/postfix reload"]
    assert SUDOERS.stat().st_mode & 0o777 == 0o440
    for directory, owner in (("milter", "vmail"), ("policyd", "mailcontinuity")):
        status = (SOCKET_DIR / directory).stat()
        assert status.st_mode & 0o7777 == 0o2750
        assert (pwd.getpwuid(status.st_uid).pw_name, grp.getgrgid(status.st_gid).gr_name) == (
            owner, "postfix")


def test_config_is_validated_and_private(applied: list[str]) -> None:
    config = Path("/etc/mailcontinuity/mailcontinuity.toml")
    assert config.stat().st_mode & 0o007 == 0
    result = run("/opt/mailcontinuity/bin/mailcontinuity", "--config", config, "check-config")
    assert result.returncode == 0, result.stderr


CONFIG = "/etc/mailcontinuity/mailcontinuity.toml"
COMMAND = "/opt/mailcontinuity/bin/mailcontinuity"
TRANSPORT = Path("/var/lib/mailcontinuity/postfix/transport")
FORMER_TABLES = Path("/etc/postfix/mailcontinuity")
CARRIED_OVER = "# the table of an earlier install"
SUDOERS = Path("/etc/sudoers.d/mailcontinuity")
SOCKET_DIR = Path("/var/spool/postfix/mailcontinuity")
NNP_FORCING = {"DynamicUser", "LockPersonality", "MemoryDenyWriteExecute", "PrivateDevices",
               "ProtectClock", "ProtectHostname", "ProtectKernelLogs", "ProtectKernelModules",
               "ProtectKernelTunables", "RestrictAddressFamilies", "RestrictNamespaces",
               "RestrictRealtime", "RestrictSUIDSGID", "SystemCallArchitectures",
               "SystemCallFilter", "SystemCallLog"}
# As their units run them: no daemon as root.
DAEMON_USERS = {
    "milter": ["runuser", "-u", "vmail", "-g", "vmail", "-G", "mailcontinuity", "--"],
    "policyd": ["runuser", "-u", "mailcontinuity", "-g", "mailcontinuity", "--"],
    "sync-agent": ["runuser", "-u", "vmail", "-g", "vmail", "-G", "mailcontinuity", "--"],
}


@pytest.fixture
def installed_servers(applied: list[str]) -> Iterator[None]:
    with running_servers():
        yield


@contextmanager
def running_servers() -> Iterator[None]:
    """The system's Postfix and Dovecot as the role configured them, smtp-sink as the primary,
    and the three daemons started by hand as their units would (user, groups, umask)."""
    started: list[subprocess.Popen] = []
    try:
        started.append(subprocess.Popen(["smtp-sink", "-u", "nobody", "127.0.0.1:12525", "100"]))
        run_command(["dovecot"])  # daemons: run_command does not wait on their inherited pipes
        run_command(["postfix", "start"])
        for name, prefix in DAEMON_USERS.items():
            started.append(subprocess.Popen(
                [*prefix, "sh", "-c", f"umask 0007; exec {COMMAND} --config {CONFIG} {name}"]))
        for name in ("milter", "policyd"):
            wait_for_socket(SOCKET_DIR / name / f"{name}.sock")
        yield
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        run_command(["postfix", "stop"])
        run_command(["doveadm", "stop"])


def wait_for_socket(path: Path, timeout: float = 20.0) -> None:
    eventually(lambda: accepts_unix_connections(path), timeout, f"a listener on {path}")
    status = path.stat()
    assert (grp.getgrgid(status.st_gid).gr_name, status.st_mode & 0o777) == ("postfix", 0o660)


def test_installed_gateway_journals_into_the_installed_standby(installed_servers: None) -> None:
    message = make_message("someone@remote.test", ["ci@ci.test"], "through the installed gateway")
    send_message(Endpoint("127.0.0.1", 25), message, "someone@remote.test", ["ci@ci.test"])
    raw = wait_for_message(Endpoint("127.0.0.1", 10143), "ci@ci.test", "ci-password",
                           message["Message-ID"], timeout=30)
    assert raw is not None, run(COMMAND, "--config", CONFIG, "status").stdout
    assert JOURNAL_HEADER.encode() in raw
    status = run(COMMAND, "--config", CONFIG, "status", "--json")
    report = json.loads(status.stdout)
    assert report["primary"]["policyd"]["running"] is True
    assert report["journal"]["shipped"] >= 1


def test_unprivileged_policyd_fails_over_through_the_sudo_rule(installed_servers: None) -> None:
    fail_over_and_back()


def fail_over_and_back() -> None:
    """The primary (smtp-sink) stops: policyd, running as mailcontinuity, rewrites the table
    and reloads Postfix through sudo; an operator's failback returns to normal."""
    run("pkill", "-f", "smtp-sink -u nobody 127.0.0.1:12525")
    try:
        eventually(lambda: f"ci.test {STANDBY_TRANSPORT}:inet:[127.0.0.1]:10024"
                   in TRANSPORT.read_text(), 60,
                   "the transport table routed to the standby", interval=0.5)
        report = json.loads(run(COMMAND, "--config", CONFIG, "status", "--json").stdout)
        assert report["state"] == "failover"
    finally:
        restarted = subprocess.Popen(["smtp-sink", "-u", "nobody", "127.0.0.1:12525", "100"])
        try:
            # Run here, or by the sync agent (as vmail) if it takes the failback lease first.
            result = run(COMMAND, "--config", CONFIG, "failback", "--yes")
            assert result.returncode == 0 or "is in progress" in result.stderr, result.stderr
            eventually(lambda: json.loads(run(COMMAND, "--config", CONFIG, "status", "--json")
                                          .stdout)["state"] == "normal", 60,
                       "failback back to normal", interval=0.5)
        finally:
            restarted.terminate()
            restarted.wait(timeout=10)
    assert "ci.test smtp:[127.0.0.1]:12525" in TRANSPORT.read_text()


def test_ansible_lint_is_clean() -> None:
    result = run(VENV_BIN / "ansible-lint", "--offline", "roles/mailcontinuity", "site.yml",
                 "tests/localhost.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_portal_and_hooks_are_installed(applied: list[str]) -> None:
    roundcube = Path("/etc/roundcube/config.inc.php").read_text()
    assert "$config['imap_host'] = ['127.0.0.1:10143'];" in roundcube
    assert "$config['smtp_host'] = '127.0.0.1:10587';" in roundcube
    assert re.search(r"\$config\['des_key'\] = '[^']{24}';", roundcube)
    # Issue 20: HTTPS only, the users' own addresses to Dovecot, a private database.
    assert "$config['force_https'] = true;" in roundcube
    assert "$config['plugins'][] = 'mailcontinuity_client_ip';" in roundcube
    assert Path("/var/lib/roundcube/plugins/mailcontinuity_client_ip/"
                "mailcontinuity_client_ip.php").is_file()
    database = Path("/var/lib/dbconfig-common/sqlite3/roundcube/roundcube").stat()
    assert database.st_mode & 0o777 == 0o600
    # Issue 18: the outage banner and out-of-office on the standby's ManageSieve.
    assert "$config['plugins'][] = 'mailcontinuity_banner';" in roundcube
    assert ("$config['mailcontinuity_status_file'] ="
            " '/var/lib/mailcontinuity-portal/status.json';") in roundcube
    assert "$config['plugins'][] = 'managesieve';" in roundcube
    assert "$config['managesieve_host'] = '127.0.0.1:14190';" in roundcube
    assert Path("/var/lib/roundcube/plugins/mailcontinuity_banner/"
                "mailcontinuity_banner.php").is_file()
    assert Path("/var/lib/roundcube/plugins/managesieve").exists()
    status_dir = Path("/var/lib/mailcontinuity-portal").stat()
    assert (status_dir.st_mode & 0o777, pwd.getpwuid(status_dir.st_uid).pw_name,
            grp.getgrgid(status_dir.st_gid).gr_name) == (0o750, "vmail", "www-data")
    toml = Path("/etc/mailcontinuity/mailcontinuity.toml").read_text()
    assert 'status_file = "/var/lib/mailcontinuity-portal/status.json"' in toml
    agent = Path("/etc/systemd/system/mailcontinuity-sync-agent.service").read_text()
    assert "-/var/lib/mailcontinuity-portal" in agent
    # The Apache HTTPS site is not checked here: tests/localhost.yml installs no web server
    # (mailcontinuity_webmail_apache: false); the lab serves the portal over HTTPS instead.
    hook = Path("/etc/mailcontinuity/hooks/on-failover.d/50-webhook")
    assert os.readlink(hook) == "/opt/mailcontinuity/bin/mailcontinuity-hook-webhook"
    environment = Path("/etc/mailcontinuity/hooks/environment")
    assert "MAILCONTINUITY_WEBHOOK_URL=http://127.0.0.1:9/ci" in environment.read_text()
    assert environment.stat().st_mode & 0o007 == 0
    timer = Path("/etc/systemd/system/mailcontinuity-sieve-sync.timer").read_text()
    assert "OnCalendar=*:0/15" in timer


# --- The shared store (issue 14): localhost is also the host of the group mailcontinuity_state.
# Last in this module: it turns the SQLite configuration above into the PostgreSQL one (the next
# run's `applied` turns it back). Debian's own cluster is used and stopped again at the end.
STORE_INVENTORY = """\
[mailcontinuity_gateway]
localhost
[mailcontinuity_standby]
localhost
[mailcontinuity_state]
localhost
"""
PG_CLUSTER = ("15", "main")
STORE_URL = "postgresql://mailcontinuity@localhost:5432/mailcontinuity"
STORE_PASSWORD = Path("/etc/mailcontinuity/secrets/state-password")
STORE_CA = Path("/etc/mailcontinuity/state-ca.pem")
INOTIFY_FILE = Path("/etc/sysctl.d/60-mailcontinuity-inotify.conf")
# The role's default: 10,000 users, 13 watches each, twice that for headroom.
INOTIFY_WANTED = 10_000 * 13 * 2


def cluster_online() -> bool:
    return " online" in run("pg_lsclusters", "-h", *PG_CLUSTER).stdout


INOTIFY_HIGHER = INOTIFY_WANTED + 1000
INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_watches")


def inotify_watches() -> int:
    return int(INOTIFY_LIMIT.read_text())


def set_inotify_watches(value: int) -> None:
    INOTIFY_LIMIT.write_text(f"{value}\n")


@pytest.fixture(scope="module")
def store_applied(applied: list[str], wheel_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Apply the role twice more with localhost in all three groups (the first turns the SQLite
    configuration into the store's); yields both runs' output and the inotify limit before.
    A store left by an earlier run (an outage, a newer schema) is dropped first."""
    inventory = tmp_path_factory.mktemp("inventory") / "hosts.ini"
    inventory.write_text(STORE_INVENTORY)
    set_inotify_watches(max(INOTIFY_HIGHER, inotify_watches()))
    try:
        if Path("/etc/postgresql", *PG_CLUSTER).is_dir():
            if not cluster_online():
                assert run("pg_ctlcluster", *PG_CLUSTER, "start").returncode == 0
            dropped = run("runuser", "-u", "postgres", "--", "dropdb", "--if-exists",
                          "mailcontinuity")
            assert dropped.returncode == 0, dropped.stderr
        outputs = []
        for attempt in ("first", "second"):
            result = play(wheel_dir, inventory)
            assert result.returncode == 0, f"{attempt} run failed:\n{result.stdout[-4000:]}"
            outputs.append(result.stdout + result.stderr)
        yield outputs
    finally:
        if cluster_online():
            run_command(["pg_ctlcluster", *PG_CLUSTER, "stop"])


def store_connect(**options: str) -> psycopg.Connection:
    password = STORE_PASSWORD.read_text().strip()
    return psycopg.connect(STORE_URL, password=password, connect_timeout=10, **options)


def test_second_run_changes_nothing(store_applied: list[str]) -> None:
    """The whole role again, store included: nothing changes (no restart of PostgreSQL, no
    new password or certificate, no daemon restart)."""
    second = next(line for line in store_applied[1].splitlines()
                  if line.startswith("localhost") and "ok=" in line)
    assert re.search(r"\bchanged=0\b", second), second


def test_store_is_named_in_the_config_and_reached_over_verified_tls(
        store_applied: list[str]) -> None:
    config = tomllib.loads(Path(CONFIG).read_text())
    assert config["state"] == {"url": STORE_URL, "password_file": str(STORE_PASSWORD),
                               "tls_ca_file": str(STORE_CA)}
    assert config["cluster"] == {"host": "localhost", "gateways": ["localhost"],
                                 "standby_host": "localhost"}
    # The password: generated, readable by the daemons' group only, never in the play's output.
    status = STORE_PASSWORD.stat()
    assert (status.st_mode & 0o777, pwd.getpwuid(status.st_uid).pw_name,
            grp.getgrgid(status.st_gid).gr_name) == (0o640, "root", "mailcontinuity")
    password = STORE_PASSWORD.read_text().strip()
    assert len(password) >= 32
    assert not any(password in output for output in store_applied[:2])
    # verify-full against the certificate the role handed out; the schema made by `migrate`.
    with store_connect(sslmode="verify-full", sslrootcert=str(STORE_CA)) as conn:
        version = conn.execute("SELECT version FROM schema_version").fetchone()
        assert version == (len(MIGRATIONS),)
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone() == (True,)
    # pg_hba: no plaintext, and no other database for this role.
    for options in ({"sslmode": "disable"},
                    {"sslmode": "verify-full", "sslrootcert": str(STORE_CA),
                     "dbname": "postgres"}):
        with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects|no pg_hba"):
            store_connect(**options).close()


def test_standby_inotify_limit_is_raised_and_never_lowered(applied: list[str],
                                                            store_applied: list[str]) -> None:
    before, after = int(applied[1]), int(applied[2])
    assert after == max(before, INOTIFY_WANTED)  # raised from one below
    # Set higher before the store case's runs: kept, and persisted as it is.
    higher = max(after, INOTIFY_HIGHER)
    assert inotify_watches() == higher
    assert f"fs.inotify.max_user_watches = {higher}\n" in INOTIFY_FILE.read_text()


def test_daemons_share_the_store_and_transition_through_it(store_applied: list[str]) -> None:
    with running_servers():
        report = json.loads(run(COMMAND, "--config", CONFIG, "status", "--json").stdout)
        assert report["store"] == {"backend": "postgresql", "location": STORE_URL,
                                   "reachable": True}
        assert report["state"] == "normal"
        fail_over_and_back()
    with store_connect(sslmode="verify-full", sslrootcert=str(STORE_CA)) as conn:
        # The transitions the daemons recorded, in the shared store (this test's alone: the
        # fixture started from a new database).
        moves = [tuple(row) for row in conn.execute(
            "SELECT from_state, to_state FROM audit WHERE to_state IS NOT NULL ORDER BY id")]
        assert conn.execute("SELECT name FROM state").fetchone() == ("normal",)
    assert ("normal", "failover") in moves, moves
    assert moves[-1][1] == "normal", moves


EXISTING_STORE_INVENTORY = """\
[mailcontinuity_gateway]
localhost
[mailcontinuity_standby]
localhost
"""


def test_an_existing_store_is_taken_as_named(store_applied: list[str], wheel_dir: Path,
                                             tmp_path: Path) -> None:
    """The other way to a shared store: no host in mailcontinuity_state, the server named by
    mailcontinuity_state_url with its password and CA from the controller's files (here the
    server the role set up above, as a site's own DBA would hand it over). The hosts get the
    same [state], the daemons reach it over verified TLS, and the server is left alone."""
    password, ca = tmp_path / "state-password", tmp_path / "state-ca.pem"
    shutil.copy(STORE_PASSWORD, password)
    shutil.copy(STORE_CA, ca)
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(EXISTING_STORE_INVENTORY)
    server_files = {path: path.stat().st_mtime_ns
                    for path in Path("/etc/postgresql", *PG_CLUSTER).iterdir()}
    result = play(wheel_dir, inventory, f"mailcontinuity_state_url={STORE_URL}",
                  f"mailcontinuity_state_password_src={password}",
                  f"mailcontinuity_state_tls_ca_src={ca}")
    assert result.returncode == 0, f"the run failed:\n{result.stdout[-4000:]}"
    output = result.stdout + result.stderr
    assert password.read_text().strip() not in output
    config = tomllib.loads(Path(CONFIG).read_text())
    assert config["state"] == {"url": STORE_URL, "password_file": str(STORE_PASSWORD),
                               "tls_ca_file": str(STORE_CA)}
    assert STORE_PASSWORD.read_text() == password.read_text()
    assert STORE_CA.read_bytes() == ca.read_bytes()
    assert {path: path.stat().st_mtime_ns
            for path in Path("/etc/postgresql", *PG_CLUSTER).iterdir()} == server_files
    report = json.loads(run(COMMAND, "--config", CONFIG, "status", "--json").stdout)
    assert report["store"] == {"backend": "postgresql", "location": STORE_URL,
                               "reachable": True}
