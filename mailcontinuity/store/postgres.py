"""The shared backend: one PostgreSQL database for a site whose parts live on several hosts.

Each process opens its own connection (psycopg 3, autocommit, so a statement outside a
transaction is committed at once, as with SQLite). Three things make it behave as the record
modules expect of any backend:

- ``transaction()`` takes a transaction-scoped advisory lock first: one writer at a time for the
  whole store, as SQLite's ``BEGIN IMMEDIATE``, so a compare-and-set transition stays atomic when
  every gateway of the site races for it. The server drops the lock when the transaction ends,
  when the client dies (its socket closes) and, for a client cut off by the network, when
  ``idle_in_transaction_session_timeout`` ends its session, so a lost host never blocks the
  others for longer than that.
- ``?`` placeholders are rewritten to psycopg's ``%s`` (and literal ``%`` doubled) once per
  statement text.
- A connection that fails (server stopped, network cut, TLS refused) raises ``StateStoreError``
  with what to check; the next call connects again. Timeouts (``connect_timeout``, TCP
  keepalives, ``tcp_user_timeout``) make an unreachable server an error within
  ``state.connect_timeout_seconds`` or so, never a hang.

The password is read from ``state.password_file`` at each connection (a rotated password takes
effect without a restart); TLS is ``sslmode=verify-full`` against ``state.tls_ca_file`` unless
``state.tls = "none"``. Changes of the continuity state are announced on a channel (a trigger,
see ``store.migrations``), which ``wait_for_change`` listens to on a connection of its own.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg import pq

from mailcontinuity.config import Config, ConfigError, read_secret
from mailcontinuity.store.connection import Params, StateStore, StateStoreError

log = logging.getLogger(__name__)

# pg_advisory_xact_lock's key for "the store's one writer": any constant, the same everywhere.
WRITER_LOCK_KEY = 0x6D61696C636F6E74  # "mailcont"
STATE_CHANNEL = "mailcontinuity_state"
IDLE_IN_TRANSACTION_SECONDS = 30
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


@functools.lru_cache(maxsize=1024)
def pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s``, outside quoted literals; every literal ``%``
    doubled (psycopg reads ``%`` as the start of a placeholder everywhere)."""
    out: list[str] = []
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted
        if char == "?" and not quoted:
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class PostgresStore(StateStore):
    """One process's connection to the site's shared PostgreSQL store."""

    backend = "postgresql"

    def __init__(self, config: Config, connect: bool = True) -> None:
        """With ``connect``, fail now if the store cannot be reached (commands); without, the
        first use connects (daemons, which must start and keep mail flowing while it is down)."""
        section = config.state
        assert section.url is not None, "a PostgreSQL store needs state.url"
        self.config = config
        self.location = section.url
        self._conn: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None
        if connect:
            self._connection()

    # --- connecting ------------------------------------------------------------------------
    def _parameters(self) -> dict[str, Any]:
        section = self.config.state
        timeout = section.connect_timeout_seconds
        params: dict[str, Any] = {
            "conninfo": section.url,
            "application_name": f"mailcontinuity-{os.path.basename(sys.argv[0]) or 'python'}",
            "connect_timeout": max(2, math.ceil(timeout)),
            # A server that stops answering (a cut network) is noticed within about the
            # timeout, whether a request is in flight (tcp_user_timeout) or not (keepalives).
            "tcp_user_timeout": int(timeout * 1000),
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(timeout / 2)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_SECONDS}s",
            "autocommit": True,
        }
        if section.tls == "none":
            params["sslmode"] = "disable"
        else:
            params["sslmode"] = "verify-full"
            if section.tls_ca_file is not None:
                params["sslrootcert"] = str(section.tls_ca_file)
            elif pq.version() >= 160000:
                params["sslrootcert"] = "system"
        if section.password_file is not None:
            params["password"] = read_secret(self.config, "state.password_file")
        return params

    def _advice(self, reason: str) -> str:
        section = self.config.state
        lowered = reason.lower()
        if "certificate" in lowered or "ssl" in lowered:
            return ("check that the server's certificate is signed by the CA in"
                    f" state.tls_ca_file ({section.tls_ca_file or 'the system CAs'}) and names"
                    " the URL's host")
        if "password" in lowered or "authentication" in lowered:
            return ("check the user in state.url and the password in state.password_file"
                    f" ({section.password_file}) against the server's pg_hba.conf")
        if "does not exist" in lowered:
            return "create the role and database (docs/topologies.md)"
        return ("check that PostgreSQL runs there and that this host can reach it (firewall,"
                " listen_addresses, pg_hba.conf); mail keeps its last routing meanwhile")

    def _error(self, exc: BaseException, doing: str) -> StateStoreError:
        reason = _first_line(exc)
        return StateStoreError(f"state store {self.location}: cannot {doing}: {reason};"
                               f" {self._advice(reason)}")

    def _open(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(**self._parameters())
        except ConfigError as exc:
            raise StateStoreError(str(exc)) from None
        except psycopg.Error as exc:
            raise self._error(exc, "connect") from None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._discard()
        self._conn = self._open()
        log.debug("event=store_connected url=%s", self.location)
        try:
            self.migrate()
        except BaseException:
            self._discard()
            raise
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    @contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """A lost connection as StateStoreError (and a new connection next time)."""
        try:
            yield
        except CONNECTION_ERRORS as exc:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._discard()
            raise self._error(exc, doing) from None

    # --- the interface ---------------------------------------------------------------------
    def _read_schema_version(self) -> int:
        self.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        row = self.one("SELECT version FROM schema_version")
        if row is None:
            self.execute("INSERT INTO schema_version (version) VALUES (0)")
            return 0
        return int(row[0])

    def _write_schema_version(self, number: int) -> None:
        self.execute("UPDATE schema_version SET version = ?", [number])

    @contextmanager
    def transaction(self) -> Iterator[StateStore]:
        conn = self._connection()
        with self._failures("write"), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [WRITER_LOCK_KEY])
            yield self

    def _run(self, doing: str, action: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        conn = self._connection()
        with self._failures(doing):
            return action(conn)

    def execute(self, sql: str, params: Params = ()) -> int:
        return int(self._run("write", lambda conn: conn.execute(pyformat(sql), list(params))
                             .rowcount))

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        batch = [list(row) for row in rows]
        if not batch:
            return

        def run(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cursor:
                cursor.executemany(pyformat(sql), batch)

        self._run("write", run)

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        rows = self._run("read", lambda conn: conn.execute(pyformat(sql), list(params))
                         .fetchall())
        return [tuple(row) for row in rows]

    def one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def wait_for_change(self, timeout: float) -> bool:
        """Listen for the state's trigger on a connection kept for that alone (notifications
        that arrive while a connection runs other queries can be missed)."""
        try:
            if self._listener is None or self._listener.closed or self._listener.broken:
                self._listener = None
                listener = self._open()
                listener.execute(f"LISTEN {STATE_CHANNEL}")
                self._listener = listener
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except psycopg.Error as exc:
            if self._listener is not None:
                self._listener.close()
            self._listener = None
            raise self._error(exc, "listen") from None

    def close(self) -> None:
        self._discard()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
