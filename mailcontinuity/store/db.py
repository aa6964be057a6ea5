"""The state store every process opens: ``open_store(config)`` picks the backend.

SQLite (``store.sqlite``) when the configuration names a file (``state.path``, the default: one
host, nothing to install); PostgreSQL (``store.postgres``) when it names a URL (``state.url``: a
site whose gateways and standby live on several hosts and must agree on one truth). Both offer
the interface of ``store.connection.StateStore``, which is all the record modules use.
"""

from __future__ import annotations

from mailcontinuity.config import Config
from mailcontinuity.store.connection import Params, StateStore, StateStoreError
from mailcontinuity.store.postgres import PostgresStore
from mailcontinuity.store.sqlite import SQLiteStore

__all__ = ["Params", "PostgresStore", "SQLiteStore", "StateStore", "StateStoreError",
           "open_store"]


def open_store(config: Config, connect: bool = True) -> StateStore:
    """The state store the configuration names.

    A command wants to fail at once, naming the store, if it cannot be reached (``connect``,
    the default). A daemon passes ``connect=False``: it must start and keep mail flowing with
    the last routing while a shared store is down, and each use tries to connect again. (A
    SQLite file is local: it opens at once either way.)
    """
    if config.state.url is not None:
        return PostgresStore(config, connect=connect)
    return SQLiteStore(config.state.path)
