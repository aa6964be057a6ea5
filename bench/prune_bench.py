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

    .venv/bin/python bench/prune_bench.py [--sizes 100000,300000,1000000]

Needs no lab: a state store and Maildirs in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from mailcontinuity.config import parse_config
from mailcontinuity.journal.prune import prune_journal
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.store.db import StateStore, open_store
from mailcontinuity.store.journal import recount
from mailcontinuity.store.retention import DAY_SECONDS, forget_old_records

SPAN_DAYS = 121
USERS = 1000


def fill(store: StateStore, maildirs: Path, size: int, now: float) -> int:
    """The index (see the module docstring); returns how many files were written."""
    files = 0
    rows = []
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
        rows.append((f"<{n}@bench>", f"{user}@example.org", status, received, recorded,
                     location))
    with store.transaction():
        store.executemany(
            "INSERT INTO journal (message_id, address, folder, status, received, recorded,"
            " location) VALUES (?, ?, 'INBOX', ?, ?, ?, ?)", rows)
    recount(store)  # rows written by hand: the counts the code keeps, rebuilt
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    args = parser.parse_args()
    rows = []
    for size in (int(text) for text in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="mc-prunebench-") as tmp:
            root = Path(tmp)
            (root / "spool").mkdir()
            config = parse_config({
                "state": {"path": str(root / "state.db")},
                "domains": {"protected": ["example.org"]},
                "primary": {"delivery": "smtp:192.0.2.1:25", "imap": "192.0.2.1:143"},
                "standby": {"imap": "127.0.0.1:143", "lmtp": "127.0.0.1:24",
                            "maildir": str(root / "mail" / "%d" / "%n")},
                "milter": {"spool_dir": str(root / "spool")},
            }, root / "mailcontinuity.toml")
            store = open_store(config)
            now = time.time()
            started = time.perf_counter()
            files = fill(store, root / "mail" / "example.org", size, now)
            filled = time.perf_counter() - started
            started = time.perf_counter()
            report = prune_journal(config, store, now)
            standby = time.perf_counter() - started
            assert report["deleted"] == files, report
            started = time.perf_counter()
            forgotten = forget_old_records(config, store, now)
            forget = time.perf_counter() - started
            store.close()
            rows.append((size, files, standby, forgotten["journal_rows"], forget,
                         os.path.getsize(root / "state.db") / 1e6, filled))
            print(f"# {size:,} copies: filled in {filled:.0f}s", flush=True)
    print(f"\nprune of one day, index spanning {SPAN_DAYS} days (load {os.getloadavg()[0]:.1f})")
    print(f"{'index rows':>11} {'day files':>9} {'standby s':>9} {'ms/file':>8}"
          f" {'rows forgot':>11} {'forget s':>8} {'us/row':>7} {'store MB':>8}")
    for size, files, standby, forgot, forget, mb, _ in rows:
        print(f"{size:>11,} {files:>9,} {standby:>9.2f} {1000 * standby / files:>8.3f}"
              f" {forgot:>11,} {forget:>8.2f} {1e6 * forget / max(forgot, 1):>7.1f} {mb:>8.1f}")
    first, last = rows[0], rows[-1]
    grow = last[0] / first[0]
    print(f"\nx{grow:.0f} index rows (and x{grow:.0f} the day's work): standby phase"
          f" x{last[2] / first[2]:.1f}, forget phase x{last[4] / first[4]:.1f}")
    per_file = last[2] / last[1]
    per_row = last[4] / max(last[3], 1)
    day = 10_000_000 // SPAN_DAYS
    print(f"extrapolated to 10,000,000 rows ({day:,} copies a day), linear in the day's work:"
          f" standby phase ~{per_file * day:.0f}s, forget phase ~{per_row * day:.0f}s")


if __name__ == "__main__":
    main()
