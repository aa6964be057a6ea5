"""Daemons' heartbeats: how ``status`` tells a running daemon from a stopped, killed or hung one.

policyd beats every probe round (and marks itself stopped on a clean exit), one row per host (a
site with several gateways runs one policyd on each); the sync agent beats every few seconds. A
heartbeat is only as good as the process behind it, so readers on the same host also check that
the pid is alive (``pid_alive``); a pid on another host means nothing here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mailcontinuity.store.db import StateStore


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie has already exited and only awaits reaping.

    A process whose main thread has exited shows as a zombie while its other threads still
    run (a killed milter tearing down its threads still holds its listening socket): it is
    alive until the last thread is gone.
    """
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        if status.rpartition(")")[2].split()[0] != "Z":
            return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def policyd_beat(store: StateStore, host: str, started_at: float, now: float,
                 stale_after: float) -> None:
    """policyd on ``host`` is alive at ``now``; status calls it down once ``stale_after``
    passes unbeaten."""
    with store.transaction():
        store.execute(
            "INSERT INTO policyd_host (host, pid, started_at, beat_at, stale_after, stopped_at)"
            " VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (host) DO UPDATE SET pid = excluded.pid,"
            " started_at = excluded.started_at, beat_at = excluded.beat_at,"
            " stale_after = excluded.stale_after, stopped_at = NULL",
            [host, os.getpid(), started_at, now, stale_after],
        )


def policyd_stopped(store: StateStore, host: str, now: float) -> None:
    with store.transaction():
        store.execute("UPDATE policyd_host SET stopped_at = ? WHERE host = ? AND pid = ?",
                      [now, host, os.getpid()])


HEARTBEAT_FIELDS = ("host", "pid", "started_at", "beat_at", "stale_after", "stopped_at")


def policyd_heartbeat(store: StateStore, host: str) -> dict[str, Any] | None:
    """The last heartbeat of policyd on ``host``."""
    row = store.one(
        "SELECT host, pid, started_at, beat_at, stale_after, stopped_at FROM policyd_host"
        " WHERE host = ?", [host])
    return None if row is None else dict(zip(HEARTBEAT_FIELDS, row, strict=True))


def policyd_heartbeats(store: StateStore) -> dict[str, dict[str, Any]]:
    """The last heartbeat of every policyd that ever ran, by host."""
    rows = store.query("SELECT host, pid, started_at, beat_at, stale_after, stopped_at"
                       " FROM policyd_host ORDER BY host")
    return {row[0]: dict(zip(HEARTBEAT_FIELDS, row, strict=True)) for row in rows}


def sync_agent_beat(store: StateStore, host: str, started_at: float) -> None:
    with store.transaction():
        store.execute(
            "INSERT INTO sync_agent (id, pid, started_at, heartbeat_at, host)"
            " VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET pid = excluded.pid,"
            " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
            " host = excluded.host",
            [os.getpid(), started_at, time.time(), host])


def sync_agent_heartbeat(store: StateStore) -> tuple[int, float, float] | None:
    """(pid, started_at, heartbeat_at) of the last agent to report."""
    row = store.one("SELECT pid, started_at, heartbeat_at FROM sync_agent")
    return None if row is None else (int(row[0]), float(row[1]), float(row[2]))


def sync_agent_host(store: StateStore) -> str | None:
    """The host of the last agent to report (its pid means something only there)."""
    row = store.one("SELECT host FROM sync_agent")
    return None if row is None else str(row[0])
