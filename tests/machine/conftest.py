"""Tests that change the machine they run on (its /etc/postfix, /etc/dovecot, system users,
systemd units): they run only in CI (``CI=true``) or by ``make test-role-on-this-machine``,
never by a plain ``make test`` on an administrator's gateway."""

from __future__ import annotations

import os

import pytest

ALLOWED = (os.environ.get("CI") == "true"
           or os.environ.get("MAILCONTINUITY_CHANGE_THIS_MACHINE") == "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ALLOWED:
        return
    skip = pytest.mark.skip(reason="changes this machine's mail system: runs in CI (CI=true) or"
                            " with 'make test-role-on-this-machine'")
    for item in items:
        if "tests/machine/" in str(item.fspath):
            item.add_marker(skip)
