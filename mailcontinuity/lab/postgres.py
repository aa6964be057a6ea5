"""A private PostgreSQL cluster under a directory: the lab's shared state store (part ``state``).

Debian's postgresql package, started with ``pg_ctl`` as the ``postgres`` user on its own address
and port, its data, socket and log under the lab directory, so the system's clusters (if any) are
untouched. It is set up as the Ansible role sets up a production one: TLS with a certificate of
the lab's CA, ``scram-sha-256`` passwords, ``hostssl`` lines only (a client without TLS is
refused), one role owning one database. The unix socket (in a directory only ``postgres`` and
root can enter) trusts its local users: that is how the lab creates the role and the test
fixtures their throwaway databases.
"""

from __future__ import annotations

import glob
import pwd
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from mailcontinuity.config import Endpoint
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.process import free_ports, read_pid, wait_for
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.mail.tools import CommandError, run_command

SYSTEM_USER = "postgres"
PACKAGE = "postgresql"
ROLE = "mailcontinuity"
DATABASE = "mailcontinuity"


def postgres_bin(program: str) -> Path:
    """A server program of the newest installed PostgreSQL (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"),
                   key=lambda path: int(Path(path).parts[4]))
    if not found:
        raise LabError(f"PostgreSQL's {program} not found: apt-get install {PACKAGE}")
    return Path(found[-1])


@dataclass
class PostgresServer:
    """One cluster under ``root``; ``password_file`` holds the ``mailcontinuity`` role's
    password (the lab's configs name it as ``state.password_file``)."""

    root: Path
    listen: Endpoint
    certificates: LabCertificates
    password_file: Path
    launcher: tuple[str, ...] = ()
    """A prefix for the server's command line (``ip netns exec NS``: run it in a host's
    network namespace)."""

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "postgresql.log"

    @property
    def url(self) -> str:
        """The URL the configurations use (the password is in ``password_file``)."""
        host = f"[{self.listen.host}]" if ":" in self.listen.host else self.listen.host
        return f"postgresql://{ROLE}@{host}:{self.listen.port}/{DATABASE}"

    def _as_postgres(self, *argv: str) -> list[str]:
        return [*self.launcher, "runuser", "-u", SYSTEM_USER, "--", *argv]

    def write_config(self) -> None:
        """Create the cluster (initdb), its TLS files, settings and access rules."""
        try:
            owner = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise LabError(f"no {SYSTEM_USER} user: apt-get install {PACKAGE}") from None
        for sub in ("run", "log", "tls"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            shutil.chown(self.root / sub, owner.pw_uid, owner.pw_gid)
        self.root.chmod(0o755)
        self.socket_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
            shutil.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
            try:
                run_command(self._as_postgres(
                    str(postgres_bin("initdb")), "-D", str(self.data_dir), "-U", SYSTEM_USER,
                    "--auth-local=trust", "--auth-host=reject", "-E", "UTF8",
                    "--locale=C.UTF-8"), timeout=120)
            except CommandError as exc:
                raise LabError(f"initdb for the lab's state store failed: {exc}") from None
        tls = self.root / "tls"
        for source, name in ((self.certificates.cert_file, "server.pem"),
                             (self.certificates.key_file, "server.key")):
            shutil.copyfile(source, tls / name)
            shutil.chown(tls / name, owner.pw_uid, owner.pw_gid)
            (tls / name).chmod(0o600)
        settings = {
            "listen_addresses": f"'{self.listen.host}'",
            "port": str(self.listen.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "ssl": "on",
            "ssl_cert_file": f"'{tls / 'server.pem'}'",
            "ssl_key_file": f"'{tls / 'server.key'}'",
            "ssl_min_protocol_version": "'TLSv1.2'",
            "password_encryption": "'scram-sha-256'",
            "max_connections": "200",
            "shared_buffers": "'32MB'",
            # A client on a host the network cut off is noticed within seconds, and with it
            # the write lock it may hold (see store.postgres).
            "tcp_keepalives_idle": "5",
            "tcp_keepalives_interval": "2",
            "tcp_keepalives_count": "3",
            "logging_collector": "off",
            "log_connections": "off",
        }
        (self.data_dir / "mailcontinuity.conf").write_text(
            "# The lab's state store, written by mailcontinuity lab; do not edit.\n"
            + "".join(f"{key} = {value}\n" for key, value in settings.items()))
        conf = self.data_dir / "postgresql.conf"
        include = "include 'mailcontinuity.conf'\n"
        if include not in conf.read_text():
            with conf.open("a") as out:
                out.write(include)
        (self.data_dir / "pg_hba.conf").write_text(
            "# The lab's state store: TLS and a password from the network, trust on the socket"
            " (root and postgres only).\n"
            "local   all all       trust\n"
            f"hostssl all {ROLE} 0.0.0.0/0 scram-sha-256\n")
        if not self.password_file.exists():
            self.password_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_urlsafe(18) + "\n")

    def pid(self) -> int | None:
        return read_pid(self.data_dir / "postmaster.pid")

    def start(self) -> None:
        if self.pid() is not None:
            return
        try:
            run_command(self._as_postgres(
                str(postgres_bin("pg_ctl")), "-D", str(self.data_dir), "-l", str(self.log_file),
                "-w", "-t", "60", "start"), timeout=90)
        except CommandError as exc:
            tail = self.log_file.read_text(errors="replace").strip().splitlines()[-3:] \
                if self.log_file.exists() else []
            raise LabError(f"the lab's state store did not start: {exc}"
                           f" {' | '.join(tail)} (log: {self.log_file})") from None
        wait_for([self.listen], up=True, what="state store postgresql")
        self._provision()

    def stop(self) -> None:
        if self.pid() is None:
            return
        try:
            run_command([*self._as_postgres(str(postgres_bin("pg_ctl")), "-D",
                                            str(self.data_dir), "-m", "fast", "-w", "stop")],
                        timeout=90)
        except CommandError as exc:
            raise LabError(f"the lab's state store did not stop: {exc}") from None

    def admin(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection over the unix socket (the lab's set-up, test fixtures)."""
        return psycopg.connect(host=str(self.socket_dir), port=self.listen.port,
                               user=SYSTEM_USER, dbname=database, autocommit=True)

    def _provision(self) -> None:
        """The role (with the password from ``password_file``) and its database, once."""
        password = self.password_file.read_text().strip()
        with self.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone()
            verb = sql.SQL("ALTER" if exists else "CREATE")
            conn.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                verb, sql.Identifier(ROLE), sql.Literal(password)))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            [DATABASE]).fetchone() is None:
                self.create_database(DATABASE, conn)

    def create_database(self, name: str,
                        conn: psycopg.Connection[tuple[object, ...]] | None = None) -> str:
        """A new empty database owned by the role; returns its URL (throwaway test stores)."""
        if conn is None:
            with self.admin() as admin:
                return self.create_database(name, admin)
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(ROLE)))
        return self.url.rpartition("/")[0] + f"/{name}"



@contextmanager
def temporary_server(prefix: str = "mcpg-") -> Iterator[PostgresServer]:
    """A private cluster in a new directory under /tmp on a free loopback port, with TLS and a
    password as in production; stopped and removed on leaving (test sessions, benches). Never
    the machine's own cluster."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    directory.chmod(0o755)  # the postgres user must reach its data directory
    try:
        server = PostgresServer(directory / "state", Endpoint("127.0.0.1", free_ports(1)[0]),
                                LabCertificates(directory / "tls").create(),
                                directory / "secrets" / "state-password")
        try:
            server.write_config()
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def state_section(server: PostgresServer, database: str) -> dict[str, str]:
    """The ``[state]`` section of a new, empty database ``database`` on ``server``."""
    return {"url": server.create_database(database), "password_file": str(server.password_file),
            "tls_ca_file": str(server.certificates.ca_file)}
