"""Fixtures built on the lab controller: real Postfix and Dovecot on loopback, one lab per
session (and one with a PostgreSQL store for the modules that run on both: see backends.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailcontinuity.lab import Lab


def make_lab_dir() -> Path:
    """A lab directory the postfix/dovecot users can reach (pytest's tmp_path is 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix="mclab-", dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def sqlite_lab() -> Iterator[Lab]:
    with Lab.temporary() as lab:
        yield lab


@pytest.fixture(scope="session")
def postgres_lab() -> Iterator[Lab]:
    """The same lab with a PostgreSQL store (``lab up --state postgresql``)."""
    with Lab.temporary(prefix="mclab-pg-", state="postgresql") as lab:
        yield lab


@pytest.fixture(scope="session")
def lab(sqlite_lab: Lab) -> Lab:
    return sqlite_lab


@pytest.fixture
def fresh_lab_dir() -> Iterator[Path]:
    """An empty directory for a test that builds and tears down its own lab."""
    directory = make_lab_dir()
    try:
        yield directory
    finally:
        Lab.down(directory)
        shutil.rmtree(directory, ignore_errors=True)
