"""Retention benchmark: what ``prune`` costs the state store as it grows, and what it frees.

For each size N: a store holding N journal index rows (copies accepted over 120 days, those
older than 90 days already pruned from the standby), N/10 milter alarms and audit records over
two years, and one merged outage's record of N/2 messages merged 100 days ago. Prints, side by
side: rows before, rows deleted, seconds ``forget_old_records`` took, rows per second, and the
file size before and after (SQLite reuses the freed pages; it does not shrink the file).

    .venv/bin/python bench/retention_bench.py [--sizes 100000,1000000]

Needs no lab: a state store in a temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tomllib
from pathlib import Path

from mailcontinuity.config import parse_config
from mailcontinuity.store.db import SQLiteStore, StateStore
from mailcontinuity.store.journal import recount
from mailcontinuity.store.retention import DAY_SECONDS, forget_old_records

CONFIG = """
[domains]
protected = ["example.org"]
[primary]
delivery = "lmtp:192.0.2.10:24"
imap = "192.0.2.10:143"
[standby]
imap = "127.0.0.1:143"
lmtp = "127.0.0.1:24"
"""


def fill(store: StateStore, size: int, now: float) -> None:
    """A busy site's store: see the module docstring."""
    span = 120 * DAY_SECONDS
    with store.transaction():
        store.executemany(
            "INSERT INTO journal (message_id, address, folder, status, received, recorded)"
            " VALUES (?, ?, 'INBOX', ?, ?, ?)",
            ((f"<{n}@bench>", f"user{n % 10000}@example.org",
              "pruned" if n * span / size > 90 * DAY_SECONDS else "shipped",
              now - n * span / size, now - n * span / size) for n in range(size)))
        store.executemany("INSERT INTO journal_alarm (at, kind, detail) VALUES (?, ?, 'x')",
                          ((now - n * 730 * DAY_SECONDS / (size // 10), "ship_error")
                           for n in range(size // 10)))
        store.executemany(
            "INSERT INTO audit (at, event, cause, actor, detail, origin)"
            " VALUES (?, 'command', 'status', 'root', '{}', 'local')",
            ((now - n * 730 * DAY_SECONDS / (size // 10),) for n in range(size // 10)))
        store.execute("INSERT INTO sync_outage (started_at, status, merged_at)"
                      " VALUES (?, 'merged', ?)", [now - 101 * DAY_SECONDS,
                                                   now - 100 * DAY_SECONDS])
        store.executemany(
            "INSERT INTO sync_message (outage_id, user, folder, basename, filename, path, key,"
            " kind, flags, size, mtime, message_id, present, in_baseline, updated_at)"
            " VALUES (1, ?, 'INBOX', ?, ?, '', ?, ?, '', 1000, 0, '', 1, 1, 0)",
            ((f"user{n % 10000}@example.org", f"b{n}", f"b{n}", f"id:{n}",
              "outage" if n % 50 == 0 else "existing") for n in range(size // 2)))


def count(store: StateStore) -> int:
    return sum(store.one(f"SELECT count(*) FROM {table}")[0]  # type: ignore[index]
               for table in ("journal", "journal_alarm", "audit", "sync_message"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    print(f"{'journal rows':>13} {'rows before':>12} {'deleted':>10} {'seconds':>8}"
          f" {'rows/s':>10} {'file MB':>8}")
    for size in (int(text) for text in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.db"
            config = parse_config(tomllib.loads(CONFIG), Path(tmp) / "mailcontinuity.toml")
            store = SQLiteStore(path)
            now = time.time()
            fill(store, size, now)
            recount(store)  # rows written by hand: the counts the code keeps, rebuilt
            before = count(store)
            started = time.perf_counter()
            forgotten = forget_old_records(config, store, now=now)
            seconds = time.perf_counter() - started
            deleted = sum(forgotten.values())
            assert before - count(store) == deleted
            store.close()
            print(f"{size:>13,} {before:>12,} {deleted:>10,} {seconds:>8.2f}"
                  f" {deleted / seconds:>10,.0f} {path.stat().st_size / 1e6:>8.1f}")


if __name__ == "__main__":
    main()
