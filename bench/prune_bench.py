"""Prune cost curve: one day of retention removed, from an index of N journal copies (issue 17).

A site whose index holds N copies received evenly over 121 days, as the daily ``prune`` leaves
it with the default retentions (``standby.retention_days`` 30, ``state.retention_days`` 90):
copies younger than 30 days are ``shipped`` (on the standby), older ones ``pruned`` (their
rows kept 90 days after pruning). The day that is due, received 30 to 31 days ago, has its
files on the standby's disk (the maildir sink's layout, 1,000 users, the journal header on
each); the other copies exist only as rows (prune reads no other file). One ``prune`` then:

1. ``prune_journal``: finds the day's copies in the index, checks each file's journal header,
   unlinks it and marks its row pruned: time per file;
2. ``forget_old_records``: forgets the rows pruned more than 90 days ago (one day of them).

Each phase's seconds are printed beside N and the rows/files of the day, so that a phase whose
time grows with N rather than with the day's work shows at once.

On SQLite and PostgreSQL side by side (``--backends``, bench/stores.py: a private cluster in
a temporary directory, a fresh database per size).

    .venv/bin/python bench/prune_bench.py [--sizes 100000,300000,1000000]

Needs no lab: a state store and Maildirs in a temporary directory.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

from stores import NAMES, Backends, explain, insert_rows, load, settle

from mailcontinuity.config import parse_config
from mailcontinuity.journal.prune import prune_journal
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.store.db import StateStore, open_store
from mailcontinuity.store.journal import PRUNABLE_WINDOW_SECONDS, SETTLED, recount
from mailcontinuity.store.retention import DAY_SECONDS, forget_old_records

SPAN_DAYS = 121
USERS = 1000


def fill(store: StateStore, maildirs: Path, size: int, now: float) -> int:
    """The index (see the module docstring); returns how many files were written."""
    files = 0

    def rows() -> Iterator[tuple[str, str, str, str, float, float, str | None]]:
        nonlocal files
        for n in range(size):
            received = now - (n + 0.5) * SPAN_DAYS * DAY_SECONDS / size
            age = (now - received) / DAY_SECONDS
            user = f"user{n % USERS:04d}"
            location = None
            if age < 30:
                status, recorded = "shipped", received
            elif age < 31:
                status, recorded = "shipped", received
                new = maildirs / user / "new"
                new.mkdir(parents=True, exist_ok=True)
                path = new / f"{int(received)}.M{n}P1.standby"
                path.write_bytes(f"{JOURNAL_HEADER}: yes\r\nMessage-ID: <{n}@bench>\r\n\r\nx\r\n"
                                 .encode())
                location, files = str(path), files + 1
            else:
                status, recorded = "pruned", received + 30 * DAY_SECONDS
            yield (f"<{n}@bench>", f"{user}@example.org", "INBOX", status, received, recorded,
                   location)

    insert_rows(store, "journal", ("message_id", "address", "folder", "status", "received",
                                   "recorded", "location"), rows())
    recount(store)  # rows written by hand: the counts the code keeps, rebuilt
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--plans", type=Path,
                        help="write the plans of prune's reads and writes (EXPLAIN ANALYZE of"
                             " the reads on PostgreSQL) into DIR/prune-plans-BACKEND-SIZE.txt")
    parser.add_argument("--backends", default="sqlite,postgresql",
                        help="state stores to measure side by side, each size on each in turn"
                             " (PostgreSQL: a private cluster in a temporary directory)")
    args = parser.parse_args()
    rows = []
    with Backends(args.backends.split(",")) as backends:
        sizes = [int(text) for text in args.sizes.split(",")]
        for size, backend, tmp, state, plans in backends.each(sizes, "mc-prunebench-",
                                                              args.plans, "prune-plans"):
            rows.append((backend, size, *one_prune(backends, tmp, state, size, plans)))
            print(f"# {NAMES[backend]} {size:,} copies: filled in {rows[-1][-2]:.0f}s,"
                  f" load {rows[-1][-1]}", flush=True)
    print(f"\nprune of one day, index spanning {SPAN_DAYS} days")
    print(f"{'store':>10} {'index rows':>11} {'day files':>9} {'standby s':>9} {'ms/file':>8}"
          f" {'rows forgot':>11} {'forget s':>8} {'us/row':>7} {'store MB':>8} {'fill s':>7}"
          f" {'load':>14}")
    for backend, size, files, standby, forgot, forget, mb, filled, at in rows:
        print(f"{NAMES[backend]:>10} {size:>11,} {files:>9,} {standby:>9.2f}"
              f" {1000 * standby / files:>8.3f} {forgot:>11,} {forget:>8.2f}"
              f" {1e6 * forget / max(forgot, 1):>7.1f} {mb:>8.1f} {filled:>7.0f} {at:>14}")
    for backend in backends.names:
        mine = [row for row in rows if row[0] == backend]
        first, last = mine[0], mine[-1]
        if first is last:
            continue
        grow = last[1] / first[1]
        print(f"{NAMES[backend]}: x{grow:.0f} index rows (and x{grow:.0f} the day's work):"
              f" standby phase x{last[3] / first[3]:.1f}, forget phase x{last[5] / first[5]:.1f}")


def prune_plans(store: StateStore, now: float) -> list[str]:
    """The plans of the statements one prune runs (store/journal.py), with the day's
    parameters: the reads executed (EXPLAIN ANALYZE on PostgreSQL), the writes explained."""
    due = now - 30 * DAY_SECONDS
    forget = now - 90 * DAY_SECONDS
    shipped = "FROM journal WHERE status = 'shipped' AND received >= ? AND received < ?"
    oldest = store.one(f"SELECT MIN(received) {shipped}", [float("-inf"), due])
    start = float(oldest[0]) if oldest and oldest[0] is not None else due
    statements: list[tuple[str, list[object]]] = [
        # before: prunable's one read (PostgreSQL scanned the index: see store/journal.py)
        ("SELECT message_id, address, folder, status, received, location, detail FROM journal"
         " WHERE status = 'shipped' AND received < ? ORDER BY received", [due]),
        # now: the oldest shipped copy left, then a day's window from it
        (f"SELECT MIN(received) {shipped}", [float("-inf"), due]),
        ("SELECT message_id, address, folder, status, received, location, detail"
         f" {shipped} ORDER BY received", [start, min(start + PRUNABLE_WINDOW_SECONDS, due)]),
        ("SELECT 'journal:' || status, count(*) FROM journal WHERE status IN (?, ?, ?)"
         " AND recorded < ? GROUP BY status", [*SETTLED, forget]),
    ]
    lines = []
    for sql, params in statements:
        lines.append(f"-- {sql}  {params}")
        lines.extend(f"   {line}" for line in explain(store, sql, params))
    for sql, params in (
            ("UPDATE journal SET status = 'pruned', recorded = ? WHERE message_id = ?"
             " AND address = ? AND folder = ? AND status = ?",
             [now, "<1@bench>", "user0001@example.org", "INBOX", "shipped"]),
            ("DELETE FROM journal WHERE status IN (?, ?, ?) AND recorded < ?",
             [*SETTLED, forget])):
        lines.append(f"-- {sql}  {params}")
        plan = store.query(("EXPLAIN " if store.backend == "postgresql" else
                            "EXPLAIN QUERY PLAN ") + sql, params)
        lines.extend(f"   {' '.join(str(part) for part in row)}" for row in plan)
    return lines


def one_prune(backends: Backends, root: Path, state: dict[str, str], size: int,
              plans: Path | None = None) -> tuple[int, float, int, float, float, float, str]:
    """(day's files, standby s, rows forgotten, forget s, store MB, fill s, load after)."""
    (root / "spool").mkdir()
    config = parse_config({
        "state": state,
        "domains": {"protected": ["example.org"]},
        "primary": {"delivery": "smtp:192.0.2.1:25", "imap": "192.0.2.1:143"},
        "standby": {"imap": "127.0.0.1:143", "lmtp": "127.0.0.1:24",
                    "maildir": str(root / "mail" / "%d" / "%n")},
        "milter": {"spool_dir": str(root / "spool")},
    }, root / "mailcontinuity.toml")
    store = open_store(config)
    try:
        now = time.time()
        started = time.perf_counter()
        files = fill(store, root / "mail" / "example.org", size, now)
        settle(store)
        filled = time.perf_counter() - started
        if plans is not None:
            plans.write_text("\n".join(prune_plans(store, now)) + "\n")
        started = time.perf_counter()
        report = prune_journal(config, store, now)
        standby = time.perf_counter() - started
        assert report["deleted"] == files, report
        started = time.perf_counter()
        forgotten = forget_old_records(config, store, now)
        forget = time.perf_counter() - started
        megabytes = backends.size_mb(store, root)
    finally:
        store.close()
    return files, standby, forgotten["journal_rows"], forget, megabytes, filled, load()


if __name__ == "__main__":
    main()
