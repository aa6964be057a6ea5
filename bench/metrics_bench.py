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

    .venv/bin/python bench/metrics_bench.py [--sizes 10000,100000,1000000] [--statements]

Each size on SQLite and PostgreSQL in turn (``--backends``; bench/stores.py: a private cluster
in a temporary directory, a fresh database per size). Needs no lab: a state store and a spool
in a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from stores import NAMES, Backends, StatementTimer, explain_all, insert_rows, load, settle

from mailcontinuity.config import LOCAL_HOST, Config, parse_config
from mailcontinuity.mail.maildir import MessageFile
from mailcontinuity.monitor.protocol import action_kind
from mailcontinuity.reports.metrics import StoreCollector
from mailcontinuity.reports.status import collect_status
from mailcontinuity.store.accepted import add_accepted
from mailcontinuity.store.checks import Check, record_checks
from mailcontinuity.store.db import StateStore, open_store
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
    insert_rows(store, "journal", ("message_id", "address", "folder", "status", "received",
                                   "recorded"),
                ((f"<{n}@bench>", f"user{n % 500}@example.org", "INBOX",
                  "shipped" if n % 100 else "pruned", now - n, now - n) for n in range(copies)))
    insert_rows(store, "health_probes", ("at", "probe", "target", "ok", "latency_ms", "error"),
                ((now - n, ("delivery", "imap")[n % 2], "primary:143", 1, 1.5, "")
                 for n in range(PROBE_ROWS)))
    store.execute("INSERT INTO sync_outage (started_at, status) VALUES (?, 'recording')", [now])
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
    insert_rows(store, "sync_message",
                ("outage_id", "user", "folder", "basename", "filename", "path", "key", "kind",
                 "flags", "size", "mtime", "message_id", "present", "in_baseline", "base_flags",
                 "updated_at", "first_flags", "touched"),
                ((outage_id, user, folder, name, f"{name}:2,{flags}", "", key, kind, flags, 1000,
                  now, "", present, in_baseline, base, now, flags,
                  int((kind, present, in_baseline, flags) != ("existing", 1, 1, base)))
                 for user, folder, name, key, kind, flags, present, in_baseline, base in rows))
    with store.transaction():
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


def activity_curve(backends: Backends, baselines: list[int], touched: int) -> None:
    """The summary's cost as the baseline grows and what users did stays the same."""
    print(f"\noutage activity summary, {touched:,} history messages changed and {touched:,}"
          " outage messages, baseline growing")
    print(f"{'store':>10} {'baseline messages':>18} {'now (kept counts) ms':>22}"
          f" {'every row read ms':>22} {'load':>14}")
    for baseline, backend, tmp, state, _ in backends.each(baselines, "mcactivity-"):
        store = open_store(bench_config(tmp, state))
        try:
            store.execute("INSERT INTO sync_outage (started_at, status)"
                          " VALUES (?, 'recording')", [time.time()])
            record_outage(store, 1, baseline, touched, time.time())
            settle(store)
            now, before = activity_times(store, 1)
        finally:
            store.close()
        print(f"{NAMES[backend]:>10} {baseline:>18,} {now * 1000:>22.1f}"
              f" {before * 1000:>22.1f} {load():>14}", flush=True)


def recorder_cost(backends: Backends, baseline: int, events: int = 2000) -> None:
    """Seconds per recorder event (a flag change, a file gone, a new file, as scan.py writes
    them, a transaction each) with the counts kept and with their upkeep switched off, in
    alternation on the same record of ``baseline`` messages (so load and the disk's fsync
    weigh on both alike): what keeping the counts adds to each event."""
    print(f"\nrecorder, per event ({events:,} events of each kind, half with the upkeep off,"
          f" {baseline:,} baseline messages, one transaction each)")
    print(f"{'store':>10} {'event':>12} {'counts kept us':>15} {'without upkeep us':>18}"
          f" {'load':>14}")
    for _, _, tmp, state, _ in backends.each([baseline], "mcrecorder-"):
        recorder_events(open_store(bench_config(tmp, state)), baseline, events)


def recorder_events(store: StateStore, baseline: int, events: int) -> None:
    """One backend's rows of ``recorder_cost``; closes ``store``."""
    try:
        store.execute("INSERT INTO sync_outage (started_at, status) VALUES (?, 'recording')",
                      [time.time()])
        record_outage(store, 1, baseline, 0, time.time())
        settle(store)
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
            print(f"{NAMES[store.backend]:>10} {name:>12} {spent[0] / (events / 2) * 1e6:>15.0f}"
                  f" {spent[1] / (events / 2) * 1e6:>18.0f} {load():>14}", flush=True)
    finally:
        store.close()


def spool(directory: Path) -> None:
    (directory / "new").mkdir(parents=True)
    for n in range(SPOOLED):
        (directory / "new" / f"{n}.msg").write_bytes(b"x" * 20_000)


def bench_config(directory: Path, state: dict[str, str]) -> Config:
    return parse_config({
        "domains": {"protected": ["example.org"]},
        "primary": {"delivery": "lmtp:127.0.0.1:24", "imap": "127.0.0.1:143"},
        "standby": {"imap": "127.0.0.1:1143", "lmtp": "127.0.0.1:1024"},
        "state": state,
        "milter": {"spool_dir": str(directory / "spool")},
    }, directory / "bench.toml")


def scrape_times(directory: Path, state: dict[str, str], copies: int, scrapes: int = SCRAPES,
                 plans: Path | None = None
                 ) -> tuple[list[float], list[float], dict[str, Any]]:
    """Scrape durations, then ``status`` collection durations (live checks off: fresh); the
    parts, the fill's seconds and the statements that took longest in each."""
    config = bench_config(directory, state)
    store = open_store(config)
    try:
        started = time.perf_counter()
        fill(store, copies)
        filled = time.perf_counter() - started
        settled = settle(store)
        spool(config.milter.spool_dir)
        registry = CollectorRegistry()
        registry.register(StoreCollector(config, store))
        times = []
        with StatementTimer(store).timing() as scrape_sql:
            for _ in range(scrapes):
                started = time.perf_counter()
                generate_latest(registry)
                times.append(time.perf_counter() - started)
        statuses = []
        with StatementTimer(store).timing() as status_sql:
            for _ in range(scrapes):
                started = time.perf_counter()
                report = collect_status(config, store, live=False)
                statuses.append(time.perf_counter() - started)
        assert report["checked_by"] == "policyd", report["checks"]
        # Parts side by side: the journal's counts as kept (journal_count) and as counted
        # from the whole index before; the outage record's activity summary as read now and
        # before (every row).
        parts: dict[str, Any] = {"filled": filled, "settled": settled,
                                 "scrape_sql": scrape_sql.top(), "status_sql": status_sql.top()}
        if plans is not None:
            plans.write_text("\n".join(explain_all(store, (scrape_sql, status_sql))) + "\n")
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
    parser.add_argument("--backends", default="sqlite,postgresql",
                        help="state stores to measure side by side, each size on each in turn"
                             " (PostgreSQL: a private cluster in a temporary directory)")
    parser.add_argument("--baselines", default="",
                        help="also time the outage activity summary alone at these baseline"
                             " sizes (messages), e.g. 100000,1000000,3000000")
    parser.add_argument("--recorder", type=int, default=0,
                        help="also time recorder events on a record of this many baseline"
                             " messages, with and without the kept counts' upkeep")
    parser.add_argument("--touched", type=int, default=10_000,
                        help="history messages changed and outage messages, for --baselines")
    parser.add_argument("--statements", action="store_true",
                        help="print the three statements each scrape and status spent most in")
    parser.add_argument("--plans", type=Path,
                        help="write the plan of every read a scrape and status made (EXPLAIN"
                             " ANALYZE on PostgreSQL) into DIR/plans-BACKEND-SIZE.txt")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size]
    scrapes = args.scrapes
    with Backends(args.backends.split(",")) as backends:
        if sizes:
            print("scrape duration (state store + spool read, text rendered)")
            print(f"{'store':>10} {'journal copies':>15} {'median ms':>10} {'max ms':>8}"
                  f" {'status median ms':>17} {'fill s':>7} {'load':>14}"
                  "   Prometheus default timeout 10000 ms, interval 60000 ms", flush=True)
        for copies, backend, directory, state, plans in backends.each(sizes, "mcmetrics-",
                                                                      args.plans):
            times, statuses, parts = scrape_times(directory, state, copies, scrapes, plans)
            print(f"{NAMES[backend]:>10} {copies:>15,} {statistics.median(times) * 1000:>10.1f}"
                  f" {max(times) * 1000:>8.1f} {statistics.median(statuses) * 1000:>17.1f}"
                  f" {parts['filled'] + parts['settled']:>7.0f} {load():>14}"
                  f"   counts kept {parts['kept'] * 1000:.2f} ms, counted from the index"
                  f" {parts['counted'] * 1000:.1f} ms; outage activity ({copies // 10:,}"
                  f" baseline messages, {copies // 1000:,} changed, {copies // 1000:,}"
                  f" outage mail) {parts['activity'] * 1000:.1f} ms, read in full"
                  f" (before) {parts['activity_before'] * 1000:.1f} ms", flush=True)
            if args.statements:
                for what in ("scrape", "status"):
                    for sql, spent, calls in parts[f"{what}_sql"]:
                        print(f"{'':>10} {what} {spent / scrapes * 1000:8.2f} ms"
                              f" ({calls // scrapes} calls): {sql[:150]}")
        if args.baselines:
            activity_curve(backends, [int(n) for n in args.baselines.split(",")], args.touched)
        if args.recorder:
            recorder_cost(backends, args.recorder)
    cost = counting_cost()
    print("\nper policy request")
    print(f"  counting the answer: {cost * 1e6:.2f} µs"
          f"   policyd p50 request latency: {POLICYD_P50_MS * 1000:.0f} µs"
          f" ({cost * 1000 / POLICYD_P50_MS * 100:.1f}% of it)")


if __name__ == "__main__":
    main()
