"""Daemons' heartbeats: how ``status`` tells a running daemon from a stopped, killed or hung one.

policyd beats every probe round (and marks itself stopped on a clean exit); the sync agent
beats every few seconds. A heartbeat is only as good as the process behind it, so readers on the
same host also check that the pid is alive (``pid_alive``).
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


def policyd_beat(store: StateStore, started_at: float, now: float, stale_after: float) -> None:
    """policyd is alive at ``now``; status calls it down once ``stale_after`` passes unbeaten."""
    with store.transaction():
        store.execute(
            "INSERT INTO policyd_heartbeat (id, pid, started_at, beat_at, stale_after, stopped_at)"
            " VALUES (1, ?, ?, ?, ?, NULL) ON CONFLICT (id) DO UPDATE SET pid = excluded.pid,"
            " started_at = excluded.started_at, beat_at = excluded.beat_at,"
            " stale_after = excluded.stale_after, stopped_at = NULL",
            [os.getpid(), started_at, now, stale_after],
        )


def policyd_stopped(store: StateStore, now: float) -> None:
    with store.transaction():
        store.execute("UPDATE policyd_heartbeat SET stopped_at = ? WHERE pid = ?",
                      [now, os.getpid()])


def policyd_heartbeat(store: StateStore) -> dict[str, Any] | None:
    row = store.one(
        "SELECT pid, started_at, beat_at, stale_after, stopped_at FROM policyd_heartbeat")
    if row is None:
        return None
    names = ("pid", "started_at", "beat_at", "stale_after", "stopped_at")
    return dict(zip(names, row, strict=True))


def sync_agent_beat(store: StateStore, started_at: float) -> None:
    with store.transaction():
        store.execute(
            "INSERT INTO sync_agent (id, pid, started_at, heartbeat_at) VALUES (1, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET pid = excluded.pid,"
            " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
            [os.getpid(), started_at, time.time()])


def sync_agent_heartbeat(store: StateStore) -> tuple[int, float, float] | None:
    """(pid, started_at, heartbeat_at) of the last agent to report."""
    row = store.one("SELECT pid, started_at, heartbeat_at FROM sync_agent")
    return None if row is None else (int(row[0]), float(row[1]), float(row[2]))
