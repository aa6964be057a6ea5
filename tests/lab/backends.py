"""The lab tests that touch the state store, on both backends.

The session has one lab per backend: ``sqlite_lab`` (the lab every test shares) and, started
only when a test asks for it, ``postgres_lab`` (the same lab with ``lab up --state postgresql``).
A module whose behaviour depends on the store overrides ``lab`` with
``lab_on_both_stores()`` below, so its tests run once on each (grouped: the SQLite runs, then
the PostgreSQL ones, marked ``postgres``). Only such modules do:
doubling the whole tier would cost CI minutes for tests the store does not touch.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailcontinuity.lab import Lab

LAB_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def lab_on(request: pytest.FixtureRequest) -> Lab:
    """The session's lab on the backend the parametrised fixture ``request`` names."""
    lab: Lab = request.getfixturevalue(
        "postgres_lab" if request.param == "postgresql" else "sqlite_lab")
    return lab


def lab_on_both_stores() -> Callable[..., Lab]:
    """A module's ``lab`` fixture: the session's lab on each backend in turn. Use as
    ``lab_fixture = lab_on_both_stores()`` at module level."""

    @pytest.fixture(scope="module", params=LAB_BACKENDS, name="lab")
    def lab_fixture(request: pytest.FixtureRequest) -> Lab:
        return lab_on(request)

    return lab_fixture
