"""Waiting for something to become true: the one wait loop of the lab, its scenario and tests.

Mail systems are asynchronous (a queue runs, a daemon probes every half second, a Maildir is
synced when looked at), so checks poll until a condition holds, bounded in time, and a check
that never holds fails with what it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from mailcontinuity.lab.errors import LabError

T = TypeVar("T")


class NotInTime(LabError, AssertionError):
    """A condition did not hold within its time limit; the message names it. An
    AssertionError too, so that a test waiting for it fails rather than errors."""


def eventually(check: Callable[[], T], timeout: float, what: str,
               interval: float = 0.1) -> T:
    """The first truthy result of ``check()`` within ``timeout`` seconds; NotInTime naming
    ``what`` otherwise. ``check`` runs at least once, however small the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise NotInTime(f"{what}: not within {timeout:g}s")
        time.sleep(interval)
