"""Metrics benchmark: what a scrape costs as the state store grows, and what counting costs
policyd per request.

Prints two tables:

1. scrape duration (median and max of 20 scrapes through prometheus_client, exactly what
   policyd serves) for a state store holding N journal copies, a day of health probes at the
   default interval (86,400 rows), an outage with N/10 recorded messages and 100 spooled
   messages, every watched part's checks fresh and a day of the gateway's accepted counts,
   side by side with Prometheus' default scrape timeout (10 s) and interval (60 s), and with
   ``status``'s own collection on the same store (``status --check`` runs it);
2. per policy request, classifying the answer and incrementing the counter, side by side with
   policyd's measured p50 request latency (docs/benchmarks.md, issue 4).

    .venv/bin/python bench/metrics_bench.py [--sizes 10000,100000,1000000]

Needs no lab: a state store and a spool in a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

from mailcontinuity.config import LOCAL_HOST, parse_config
from mailcontinuity.mail.maildir import MessageFile
from mailcontinuity.monitor.protocol import action_kind
from mailcontinuity.reports.metrics import StoreCollector
from mailcontinuity.reports.status import collect_status
from mailcontinuity.store.accepted import add_accepted
from mailcontinuity.store.checks import Check, record_checks
from mailcontinuity.store.db import SQLiteStore, StateStore, open_store
from mailcontinuity.store.heartbeats import policyd_beat, sync_agent_beat
from mailcontinuity.store.journal import recount
from mailcontinuity.store.outages import ChangeLog, rebuild_activity_counts

SCRAPES = 20
PROBE_ROWS = 86_400
SPOOLED = 100
POLICYD_P50_MS = 0.12  # docs/benchmarks.md, policyd (issue 4): p50 at 1 connection


def fill(store: StateStore, copies: int) -> None:
    """A store as a busy site's would look: journal copies, probes, one outage's record."""
    now = time.time()
    with store.transaction():
        store.executemany(
            "INSERT INTO journal (message_id, address, folder, status, received, recorded)"
            " VALUES (?, ?, 'INBOX', ?, ?, ?)",
            ((f"<{n}@bench>", f"user{n % 500}@example.org",
              "shipped" if n % 100 else "pruned", now - n, now - n) for n in range(copies)))
        store.executemany(
            "INSERT INTO health_probes (at, probe, target, ok, latency_ms, error)"
            " VALUES (?, ?, 'primary:143', 1, 1.5, '')",
            ((now - n, ("delivery", "imap")[n % 2]) for n in range(PROBE_ROWS)))
        store.execute("INSERT INTO sync_outage (started_at, status) VALUES (?, 'recording')",
                      [now])
    record_outage(store, 1, copies // 10, copies // 1000, now)
    recount(store)  # the rows were written by hand: the counts the code keeps, rebuilt
    policyd_beat(store, LOCAL_HOST, now - 3600, now, 1e9)  # fresh for the whole run: no live checks
    sync_agent_beat(store, LOCAL_HOST, now - 3600)
    store.execute("UPDATE sync_agent SET heartbeat_at = ?", [now + 1e9])
    record_checks(store, LOCAL_HOST,
                  [Check(part, name, "127.0.0.1:1", True, now + 1e9, latency_ms=2.0)
                   for part, name in (("standby", "lmtp"), ("standby", "imap"),
                                      ("milter", "socket"))])
    for minute in range(1440):
        add_accepted(store, now - minute * 60, 10)


def record_outage(store: StateStore, outage_id: int, baseline: int, touched: int,
                  now: float) -> None:
    """An outage's record as the recorder leaves it: a baseline of ``baseline`` history
    messages (500 users), ``touched`` of them changed by users (flags, deletions, moves to
    another folder, in turns), and ``touched`` messages of outage mail in INBOX."""
    changed = {n * (baseline // touched): n % 3 for n in range(touched)} if touched else {}
    rows: list[tuple[str, str, str, str, str, str, int, int, str | None]] = []
    for n in range(baseline):
        change = changed.get(n)
        rows.append((f"user{n % 500}", "INBOX", f"h{n}", f"mid:<{n}@bench>:1000", "existing",
                     "FS" if change == 0 else "S", 0 if change in (1, 2) else 1, 1, "S"))
        if change == 2:  # moved: gone from INBOX, new in Archive
            rows.append((f"user{n % 500}", "Archive", f"h{n}b", f"mid:<{n}@bench>:1000",
                         "existing", "S", 1, 0, None))
    rows.extend((f"user{n % 500}", "INBOX", f"o{n}", f"id:{n}", "outage", "", 1, 0, None)
                for n in range(touched))
    with store.transaction():
        store.executemany(
            "INSERT INTO sync_message (outage_id, \"user\", folder, basename, filename, path, key,"
            " kind, flags, size, mtime, message_id, present, in_baseline, base_flags,"
            " updated_at, first_flags, touched) VALUES (?, ?, ?, ?, ?, '', ?, ?, ?, 1000, ?, '',"
            " ?, ?, ?, ?, ?, ?)",
            ((outage_id, user, folder, name, f"{name}:2,{flags}", key, kind, flags, now, present,
              in_baseline, base, now, flags,
              int((kind, present, in_baseline, flags) != ("existing", 1, 1, base)))
             for user, folder, name, key, kind, flags, present, in_baseline, base in rows))
        rebuild_activity_counts(store, outage_id)  # rows written by hand: the kept counts


def activity_times(store: StateStore, outage_id: int, runs: int = 5) -> tuple[float, float]:
    """Median seconds of the outage activity summary as read now (the counts kept as the
    recorder writes, migration 15) and as defined (every row of the record), after checking
    that both give the same counts."""
    changelog = ChangeLog(store)
    assert changelog.activity(outage_id) == changelog.activity_full_read(outage_id)
    medians = []
    for read in (changelog.activity, changelog.activity_full_read):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            read(outage_id)
            times.append(time.perf_counter() - started)
        medians.append(statistics.median(times))
    return medians[0], medians[1]


def activity_curve(directory: Path, baselines: list[int], touched: int) -> None:
    """The summary's cost as the baseline grows and what users did stays the same."""
    print(f"\noutage activity summary, {touched:,} history messages changed and {touched:,}"
          " outage messages, baseline growing")
    print(f"{'baseline messages':>18} {'now (kept counts) ms':>22} {'every row read ms':>22}")
    for baseline in baselines:
        store = SQLiteStore(directory / f"activity-{baseline}.db")
        try:
            store.execute("INSERT INTO sync_outage (started_at, status)"
                          " VALUES (?, 'recording')", [time.time()])
            record_outage(store, 1, baseline, touched, time.time())
            now, before = activity_times(store, 1)
        finally:
            store.close()
        print(f"{baseline:>18,} {now * 1000:>22.1f} {before * 1000:>22.1f}")


def recorder_cost(directory: Path, baseline: int, events: int = 2000) -> None:
    """Seconds per recorder event (a flag change, a file gone, a new file, as scan.py writes
    them, a transaction each) with the counts kept and with their upkeep switched off, in
    alternation on the same record of ``baseline`` messages (so load and the disk's fsync
    weigh on both alike): what keeping the counts adds to each event."""
    print(f"\nrecorder, per event ({events:,} events of each kind, half with the upkeep off,"
          f" {baseline:,} baseline messages, one transaction each)")
    print(f"{'event':>12} {'counts kept us':>15} {'without upkeep us':>18}")
    store = SQLiteStore(directory / "recorder.db")
    try:
        store.execute("INSERT INTO sync_outage (started_at, status) VALUES (?, 'recording')",
                      [time.time()])
        record_outage(store, 1, baseline, 0, time.time())
        log = ChangeLog(store)
        upkeep = (log._reclassify, log._count)

        def found(n: int, flags: tuple[str, ...], basename: str = "",
                  key: str = "") -> MessageFile:
            name = basename or f"h{n}"
            return MessageFile(folder="INBOX", basename=name,
                               filename=f"{name}:2,{''.join(flags)}",
                               path=Path("/nowhere") / name, flags=flags,
                               key=key or f"mid:<{n}@bench>:1000", journal=False,
                               size=1000, mtime=1.0, message_id=f"<{n}@bench>")

        kinds: dict[str, Any] = {
            "flag change": lambda n: log.upsert_file(1, f"user{n % 500}",
                                                     found(n, ("F", "S")), False),
            "file gone": lambda n: log.mark_gone(1, f"user{(n + 1) % 500}", "INBOX", f"h{n + 1}"),
            "new mail": lambda n: log.upsert_file(1, f"user{n % 500}",
                                                  found(n, (), f"o{n}", f"id:{n}"), False),
        }
        step = max(2, baseline // events)
        for name, event in kinds.items():
            spent = [0.0, 0.0]
            for index, n in enumerate(range(0, events * step, step)):
                keep = index % 2 == 0
                if keep:
                    log._reclassify, log._count = upkeep  # type: ignore[method-assign]
                else:
                    log._reclassify = log._count = lambda *args: None  # type: ignore[method-assign,assignment]
                started = time.perf_counter()
                with store.transaction():
                    event(n)
                spent[0 if keep else 1] += time.perf_counter() - started
            print(f"{name:>12} {spent[0] / (events / 2) * 1e6:>15.0f}"
                  f" {spent[1] / (events / 2) * 1e6:>18.0f}")
    finally:
        store.close()


def spool(directory: Path) -> None:
    (directory / "new").mkdir(parents=True)
    for n in range(SPOOLED):
        (directory / "new" / f"{n}.msg").write_bytes(b"x" * 20_000)


def scrape_times(directory: Path, copies: int, scrapes: int = SCRAPES
                 ) -> tuple[list[float], list[float], dict[str, float]]:
    """Scrape durations, then ``status`` collection durations (live checks off: fresh)."""
    config = parse_config({
        "domains": {"protected": ["example.org"]},
        "primary": {"delivery": "lmtp:127.0.0.1:24", "imap": "127.0.0.1:143"},
        "standby": {"imap": "127.0.0.1:1143", "lmtp": "127.0.0.1:1024"},
        "state": {"path": str(directory / "state.db")},
        "milter": {"spool_dir": str(directory / "spool")},
    }, directory / "bench.toml")
    store = open_store(config)
    try:
        fill(store, copies)
        spool(config.milter.spool_dir)
        registry = CollectorRegistry()
        registry.register(StoreCollector(config, store))
        times = []
        for _ in range(scrapes):
            started = time.perf_counter()
            generate_latest(registry)
            times.append(time.perf_counter() - started)
        statuses = []
        for _ in range(scrapes):
            started = time.perf_counter()
            report = collect_status(config, store, live=False)
            statuses.append(time.perf_counter() - started)
        assert report["checked_by"] == "policyd", report["checks"]
        # Parts side by side: the journal's counts as kept (journal_count) and as counted
        # from the whole index before; the outage record's activity summary as read now and
        # before (every row).
        parts: dict[str, float] = {}
        outage = ChangeLog(store).open_outage()
        assert outage is not None
        parts["activity"], parts["activity_before"] = activity_times(store, outage.id)
        for name, read in (
                ("kept", lambda: store.query("SELECT status, count FROM journal_count")),
                ("counted", lambda: store.query(
                    "SELECT status, count(*) FROM journal GROUP BY status"))):
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                read()
                runs.append(time.perf_counter() - started)
            parts[name] = statistics.median(runs)
        return times, statuses, parts
    finally:
        store.close()


def counting_cost(requests: int = 200_000) -> float:
    """Seconds per request of what PolicyServer adds: classify the answer, count it."""
    counter = Counter("bench_requests", "", ["action"], registry=None)
    answers = ["DUNNO"] * 9 + ["550 5.1.1 no such user on the standby mail system"]
    started = time.perf_counter()
    for n in range(requests):
        counter.labels(action_kind(answers[n % 10])).inc()
    return (time.perf_counter() - started) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--scrapes", type=int, default=SCRAPES)
    parser.add_argument("--baselines", default="",
                        help="also time the outage activity summary alone at these baseline"
                             " sizes (messages), e.g. 100000,1000000,3000000")
    parser.add_argument("--recorder", type=int, default=0,
                        help="also time recorder events on a record of this many baseline"
                             " messages, with and without the kept counts' upkeep")
    parser.add_argument("--touched", type=int, default=10_000,
                        help="history messages changed and outage messages, for --baselines")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    scrapes = args.scrapes
    print("scrape duration (state store + spool read, text rendered)")
    print(f"{'journal copies':>15} {'median ms':>10} {'max ms':>8} {'status median ms':>17}"
          "   Prometheus default timeout 10000 ms, interval 60000 ms")
    for copies in sizes:
        with tempfile.TemporaryDirectory(prefix="mcmetrics-") as directory:
            times, statuses, parts = scrape_times(Path(directory), copies, scrapes)
        print(f"{copies:>15,} {statistics.median(times) * 1000:>10.1f}"
              f" {max(times) * 1000:>8.1f} {statistics.median(statuses) * 1000:>17.1f}"
              f"   counts kept {parts['kept'] * 1000:.2f} ms, counted from the index"
              f" {parts['counted'] * 1000:.1f} ms; outage activity ({copies // 10:,} baseline"
              f" messages, {copies // 1000:,} changed, {copies // 1000:,} outage mail)"
              f" {parts['activity'] * 1000:.1f} ms, read in full (before)"
              f" {parts['activity_before'] * 1000:.1f} ms")
    if args.baselines:
        with tempfile.TemporaryDirectory(prefix="mcactivity-") as directory:
            activity_curve(Path(directory), [int(n) for n in args.baselines.split(",")],
                           args.touched)
    if args.recorder:
        with tempfile.TemporaryDirectory(prefix="mcrecorder-") as directory:
            recorder_cost(Path(directory), args.recorder)
    cost = counting_cost()
    print("\nper policy request")
    print(f"  counting the answer: {cost * 1e6:.2f} µs"
          f"   policyd p50 request latency: {POLICYD_P50_MS * 1000:.0f} µs"
          f" ({cost * 1000 / POLICYD_P50_MS * 100:.1f}% of it)")


if __name__ == "__main__":
    main()
