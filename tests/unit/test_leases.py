"""Leases (store/leases.py): one merge or follow pass at a time, freed however the holder's
work ends; on each backend (``store_config`` runs a test on SQLite and on PostgreSQL)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from mailcontinuity.config import Config
from mailcontinuity.store.db import open_store
from mailcontinuity.store.leases import (
    LeaseHeld,
    acquire_lease,
    holding_lease,
    lease_holder,
)


def test_a_held_lease_refuses_another_holder_and_is_freed_when_the_block_ends(
        store_config: Config) -> None:
    store = open_store(store_config)
    try:
        with holding_lease(store, "failback", "operator-1"):
            assert lease_holder(store, "failback", time.time()) == "operator-1"
            acquire_lease(store, "failback", "operator-1")  # the holder renews
            with (pytest.raises(LeaseHeld, match=r"failback is in progress .*operator-1"),
                  holding_lease(store, "failback", "sync-agent-2")):
                pytest.fail("the block ran without the lease")
            # The refused one released nothing: the holder still holds it.
            assert lease_holder(store, "failback", time.time()) == "operator-1"
        assert lease_holder(store, "failback", time.time()) is None
    finally:
        store.close()


def test_a_block_that_fails_releases_the_lease(store_config: Config) -> None:
    store = open_store(store_config)
    try:
        with pytest.raises(RuntimeError), holding_lease(store, "follow", "sync-agent-1"):
            raise RuntimeError("the primary went away")
        with holding_lease(store, "follow", "sync-agent-2"):
            assert lease_holder(store, "follow", time.time()) == "sync-agent-2"
    finally:
        store.close()


def test_a_dead_holder_on_this_host_frees_the_lease_at_once(store_config: Config) -> None:
    store = open_store(store_config)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        store.execute("INSERT INTO sync_lease (name, holder, pid, host, expires_at)"
                      " VALUES ('failback', 'killed-1', ?, ?, ?)",
                      [dead.pid, socket.gethostname(), time.time() + 60])
        with holding_lease(store, "failback", "operator-2"):
            assert lease_holder(store, "failback", time.time()) == "operator-2"
    finally:
        store.close()
