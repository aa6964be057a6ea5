"""The state store on both backends, for the cost-curve benches (issue 17).

A bench that measures a store cost runs it on SQLite (one host, ``state.path``) and on
PostgreSQL (the multi-host backend, ``state.url``) side by side in one run: ``Backends`` starts
one private PostgreSQL cluster for the run (the lab's ``PostgresServer`` in a temporary
directory on a free loopback port, TLS and a password as in production; never the machine's own
cluster), hands out a fresh database per measurement, drops it after, and stops the cluster at
the end.

Fills write rows by hand (as a site's years of traffic would leave them): ``insert_rows`` uses
``COPY`` on PostgreSQL (an ``executemany`` of 10 M rows over TLS would take most of an hour) and
``executemany`` on SQLite. ``settle`` then does on PostgreSQL what autovacuum does on a live
site after such a load (``VACUUM ANALYZE``: planner statistics and the visibility map), so the
plans measured are those a site would get, not those of a never-analysed table.

``StatementTimer`` counts time per statement text while a piece of work runs: what a scrape or
``status`` spends where, on each backend.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from mailcontinuity.lab.postgres import PostgresServer, state_section, temporary_server
from mailcontinuity.store.db import PostgresStore, StateStore

NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


class Backends:
    """``[state]`` sections for the backends named, PostgreSQL's cluster started on demand."""

    def __init__(self, names: Sequence[str]) -> None:
        unknown = set(names) - set(NAMES)
        if unknown:
            raise SystemExit(f"--backends: unknown {', '.join(sorted(unknown))}"
                             f" (choose from {', '.join(NAMES)})")
        self.names = list(names)
        self._stack = ExitStack()
        self._server: PostgresServer | None = None
        self._databases = 0

    def __enter__(self) -> Backends:
        if "postgresql" in self.names:
            self._server = self._stack.enter_context(temporary_server("mcbench-pg-"))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @contextmanager
    def state(self, backend: str, directory: Path) -> Iterator[dict[str, str]]:
        """A fresh store's ``[state]`` section; a PostgreSQL database is dropped after."""
        if backend == "sqlite":
            yield {"path": str(directory / "state.db")}
            return
        assert self._server is not None
        self._databases += 1
        name = f"bench{self._databases}"
        try:
            yield state_section(self._server, name)
        finally:
            with self._server.admin() as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def each(self, sizes: Iterable[int], prefix: str, plans: Path | None = None,
             plans_name: str = "plans") -> Iterator[tuple[int, str, Path, dict[str, str],
                                                          Path | None]]:
        """For each size, each backend in turn: (size, backend, a temporary directory, a fresh
        store's ``[state]`` section, where to write its plans or None); cleaned up after each."""
        for size in sizes:
            for backend in self.names:
                with tempfile.TemporaryDirectory(prefix=prefix) as tmp, \
                        self.state(backend, Path(tmp)) as state:
                    target = None
                    if plans is not None:
                        plans.mkdir(parents=True, exist_ok=True)
                        target = plans / f"{plans_name}-{backend}-{size}.txt"
                    yield size, backend, Path(tmp), state, target

    def size_mb(self, store: StateStore, directory: Path) -> float:
        """The store's size on disk (the SQLite file, or the PostgreSQL database)."""
        if store.backend == "postgresql":
            row = store.one("SELECT pg_database_size(current_database())")
            return int(row[0]) / 1e6 if row else 0.0
        return os.path.getsize(directory / "state.db") / 1e6


def insert_rows(store: StateStore, table: str, columns: Sequence[str],
                rows: Iterable[Sequence[Any]]) -> None:
    """Rows written by hand, fast on either backend (one transaction)."""
    if isinstance(store, PostgresStore):
        conn = store._connection()  # the bench's fill only: COPY is not in the store interface
        names = ", ".join(f'"{column}"' for column in columns)
        with conn.transaction(), conn.cursor() as cursor, \
                cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" for _ in columns)
    names = ", ".join(f'"{column}"' for column in columns)
    with store.transaction():
        store.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)


def settle(store: StateStore) -> float:
    """What autovacuum does after a bulk load (PostgreSQL); seconds it took."""
    started = time.perf_counter()
    if store.backend == "postgresql":
        store.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


class StatementTimer:
    """Seconds per statement text spent through ``store`` while ``timing()`` is active."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.spent: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.params: dict[str, Any] = {}

    @contextmanager
    def timing(self) -> Iterator[StatementTimer]:
        originals = {name: getattr(self.store, name) for name in ("query", "one", "execute")}

        depth = [0]  # PostgresStore.one calls query: count the outer call only

        def timed(original: Any) -> Any:
            def run(sql: str, params: Any = ()) -> Any:
                depth[0] += 1
                started = time.perf_counter()
                try:
                    return original(sql, params)
                finally:
                    depth[0] -= 1
                    if not depth[0]:
                        self.spent[sql] += time.perf_counter() - started
                        self.calls[sql] += 1
                        self.params[sql] = params
            return run

        for name, original in originals.items():
            setattr(self.store, name, timed(original))
        try:
            yield self
        finally:
            for name in originals:
                delattr(self.store, name)  # the class's methods again

    def top(self, count: int = 3) -> list[tuple[str, float, int]]:
        """The ``count`` statements that took longest: (text, seconds, calls)."""
        ranked = sorted(self.spent.items(), key=lambda item: -item[1])[:count]
        return [(" ".join(sql.split()), spent, self.calls[sql]) for sql, spent in ranked]


def explain(store: StateStore, sql: str, params: Any = ()) -> list[str]:
    """The plan of one read as run with ``params``: ``EXPLAIN (ANALYZE, BUFFERS)`` on
    PostgreSQL (executed: actual rows and times), ``EXPLAIN QUERY PLAN`` on SQLite."""
    if store.backend == "postgresql":
        return [str(row[0]) for row in store.query(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)]
    return [" ".join(str(part) for part in row[1:])
            for row in store.query(f"EXPLAIN QUERY PLAN {sql}", params)]


def explain_all(store: StateStore, timers: Iterable[StatementTimer]) -> list[str]:
    """Each distinct read the timers saw (with its last parameters), its plan under it."""
    lines = []
    seen: set[str] = set()
    for timer in timers:
        for sql, params in timer.params.items():
            if sql in seen or not sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            seen.add(sql)
            lines.append(f"-- {' '.join(sql.split())}  {list(params)}")
            lines.extend(f"   {line}" for line in explain(store, sql, params))
    return lines


def load() -> str:
    """The load average, for the tables (the machine is shared)."""
    return "/".join(f"{value:.1f}" for value in os.getloadavg())
