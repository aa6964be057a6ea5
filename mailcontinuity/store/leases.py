"""Leases: only one process merges an outage at a time, whichever started it.

The sync agent and an operator's ``mailcontinuity failback`` both merge; the one that holds the
lease works, the other waits or gives up with the holder's name. A lease expires unless renewed,
so a holder that dies frees it; on the same host a dead holder frees it at once.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mailcontinuity.store.db import StateStore
from mailcontinuity.store.heartbeats import pid_alive

LEASE_SECONDS = 60.0


class LeaseHeld(Exception):
    """Another process holds the lease; the message names it."""


def acquire_lease(store: StateStore, name: str, holder: str) -> None:
    """Take (or renew) the lease, or raise LeaseHeld naming the live holder.

    A holder on this host whose process is gone (kill -9) loses the lease at once, so a re-run
    after a crash never waits for the expiry.
    """
    now, host, pid = time.time(), socket.gethostname(), os.getpid()
    with store.transaction():
        row = store.one("SELECT holder, pid, host, expires_at FROM sync_lease WHERE name = ?",
                        [name])
        if (row is not None and row[0] != holder and row[3] > now
                and not (row[2] == host and not pid_alive(row[1]))):
            raise LeaseHeld(f"{name} is in progress in process {row[1]} on {row[2]}"
                            f" ({row[0]}); wait for it to finish")
        store.execute(
            "INSERT INTO sync_lease (name, holder, pid, host, expires_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, pid = excluded.pid,"
            " host = excluded.host, expires_at = excluded.expires_at",
            [name, holder, pid, host, now + LEASE_SECONDS])


@contextmanager
def holding_lease(store: StateStore, name: str, holder: str) -> Iterator[None]:
    """Hold the lease for the ``with`` block: taken on entry (LeaseHeld, naming the live
    holder, if another has it: the block does not run), released on the way out however the
    block ends, so a failed merge or follow pass never keeps others waiting for the expiry.
    Long work renews it with ``acquire_lease`` under the same holder name."""
    acquire_lease(store, name, holder)
    try:
        yield
    finally:
        release_lease(store, name, holder)


def release_lease(store: StateStore, name: str, holder: str) -> None:
    with store.transaction():
        store.execute("DELETE FROM sync_lease WHERE name = ? AND holder = ?", [name, holder])


def lease_holder(store: StateStore, name: str, now: float) -> str | None:
    """Who holds the lease ``name`` now (its holder name), or None if it is free or expired."""
    row = store.one("SELECT holder FROM sync_lease WHERE name = ? AND expires_at > ?",
                    [name, now])
    return None if row is None else str(row[0])
