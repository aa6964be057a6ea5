"""Fixtures both tiers share: the state store on each backend.

Tests that touch the store take ``store_config`` (a configuration whose store is fresh) and run
once per backend: SQLite, and PostgreSQL on one private cluster per test session (the lab's own
``PostgresServer``, in a temporary directory, stopped at the end), each test with a database of
its own. The PostgreSQL runs are marked ``postgres``: ``make check`` leaves them out (the unit
tier starts no server), ``make lab-tests`` runs them.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailcontinuity.config import Config, parse_config
from mailcontinuity.lab.postgres import PostgresServer, state_section, temporary_server

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]

# The smallest valid configuration; the store section is the fixture's.
BASE_CONFIG = """
[domains]
protected = ["example.org"]

[primary]
delivery = "lmtp:127.0.0.1:24"
imap = "127.0.0.1:143"

[standby]
imap = "127.0.0.1:10143"
lmtp = "127.0.0.1:10024"
"""

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole session, with TLS and a password as in production."""
    with temporary_server() as server:
        yield server


def postgres_state(server: PostgresServer) -> dict[str, Any]:
    """The ``[state]`` section of a fresh database on ``server``."""
    return state_section(server, f"test{next(_databases)}")


def config_with_state(directory: Path, state: dict[str, Any],
                      extra: dict[str, Any] | None = None) -> Config:
    data = tomllib.loads(BASE_CONFIG)
    return parse_config({**data, "state": state, **(extra or {})},
                        directory / "mailcontinuity.toml")


@pytest.fixture(params=BACKENDS)
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    """A configuration whose state store is new and empty, on each backend in turn."""
    if request.param == "sqlite":
        return config_with_state(tmp_path, {"path": str(tmp_path / "state.db")})
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return config_with_state(tmp_path, postgres_state(server))
