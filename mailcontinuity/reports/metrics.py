"""The Prometheus endpoint: policyd serves what every part of the system knows, at scrape time.

policyd is the one long-running monitor, so it serves ``/metrics``; but the milter, the sync
agent and ``failback`` are other processes. Their numbers are read from the shared state store
and the spool when Prometheus scrapes (the exporter pattern), through the same queries
``status`` uses, so the endpoint and ``status`` never disagree. Only the policy request counter
lives in policyd's memory (see ``PolicyServer``).

A scrape only reads: the collector's connection is opened once at start, and every query is
an autocommit ``SELECT`` (in WAL mode a reader never blocks a writer). A part that cannot be
read is reported as ``mailcontinuity_scrape_error{section=...} 1`` and logged, never raised:
monitoring must not be what takes policyd down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mailcontinuity.config import Config
from mailcontinuity.journal.spool import spool_usage
from mailcontinuity.reports.problems import (
    EMPTY_SPOOL,
    Watch,
    journal_pace,
    readable_spool,
    store_unavailable,
    watch,
    watched_disks,
)
from mailcontinuity.store.db import StateStore, StateStoreError, open_store
from mailcontinuity.store.heartbeats import sync_agent_heartbeat
from mailcontinuity.store.journal import alarm_summary, journal_summary
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.store.probes import latest_probes
from mailcontinuity.store.state import STATES, current_state

log = logging.getLogger(__name__)

PREFIX = "mailcontinuity_"
# sync_progress statuses (sync/failback.py), always exported so that rules can compare them.
FAILBACK_STATUSES = ("done", "reported", "refused")
OUTAGE_STATUSES = ("recording", "merging", "merged")


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _labelled(name: str, documentation: str, label: str,
              values: dict[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def state_metrics(store: StateStore) -> Iterator[Metric]:
    state = current_state(store)
    yield _labelled("state", "1 for the current continuity state, 0 for the others.", "state",
                    {name: float(name == state.name) for name in STATES})
    yield _gauge("state_since_timestamp_seconds", "When the current state began.", state.since)


def journal_metrics(config: Config, store: StateStore) -> Iterator[Metric]:
    """The milter's spool (from disk) and its journal index (from the store), as in status."""
    usage = spool_usage(config.milter.spool_dir)
    yield _gauge("journal_lag_seconds", "Age of the oldest journal copy not yet in the"
                 " standby (0 when the spool is empty).", usage.lag_seconds)
    yield _gauge("journal_spooled_messages", "Accepted messages waiting in the milter's"
                 " spool to be shipped to the standby.", usage.entries)
    yield _gauge("journal_spool_bytes", "Size of the messages waiting in the spool.", usage.bytes)
    summary = journal_summary(store)
    yield CounterMetricFamily(PREFIX + "journal_shipped", "Journal copies shipped to the"
                              " standby (pruned ones included).", value=summary["shipped"])
    yield CounterMetricFamily(PREFIX + "journal_failed", "Journal copies the standby refused"
                              " for good.", value=summary["failed"])
    alarms = CounterMetricFamily(PREFIX + "journal_alarms", "Spool write and shipping errors"
                                 " the milter recorded.", labels=["kind"])
    for kind in ("spool_error", "ship_error"):
        alarms.add_metric([kind], summary[f"{kind}s"])
    yield alarms
    yield _gauge("journal_unknown_recipients", "Recipients the standby does not know (their"
                 " journal copies are skipped).", len(summary["unknown_recipients"]))


def probe_metrics(store: StateStore, host: str) -> Iterator[Metric]:
    """The latest result of each health probe of the primary (delivery, imap) this host's
    policyd ran (each gateway's endpoint serves its own)."""
    labels = ["probe", "target"]
    up = GaugeMetricFamily(PREFIX + "probe_up", "1 if the probe's last run succeeded.",
                           labels=labels)
    latency = GaugeMetricFamily(PREFIX + "probe_latency_seconds", "How long the probe's last"
                                " run took (to its timeout when the primary never answered).",
                                labels=labels)
    at = GaugeMetricFamily(PREFIX + "probe_timestamp_seconds", "When the probe last ran.",
                           labels=labels)
    for probe in latest_probes(store, host):
        key = [probe.probe, probe.target]
        up.add_metric(key, float(probe.ok))
        latency.add_metric(key, probe.latency_ms / 1000)
        at.add_metric(key, probe.at)
    yield from (up, latency, at)


def outage_metrics(store: StateStore) -> Iterator[Metric]:
    """The last outage the sync agent recorded: its status, activity and failback progress.

    The last one, merged or not, so that a dashboard still shows what the last failback merged;
    ``outage_id`` tells one outage from the next without a label per outage.
    """
    changelog = ChangeLog(store)
    outage = changelog.last_outage()
    beat = sync_agent_heartbeat(store)
    if beat is not None:
        yield _gauge("sync_agent_heartbeat_timestamp_seconds", "When the sync agent last"
                     " reported alive.", beat[2])
    # Before the first outage every series exists, as zeros (outage 0, timestamps 0 meaning
    # never), so that rules and panels see 0 rather than nothing.
    number = 0 if outage is None else outage.id
    status = None if outage is None else outage.status
    yield _gauge("outage_id", "Number of the last outage recorded (0: none yet).", number)
    yield _gauge("outage_started_timestamp_seconds", "When the last outage began (0: never).",
                 0.0 if outage is None else outage.started_at)
    merged_at = None if outage is None else outage.merged_at
    yield _gauge("outage_merged_timestamp_seconds", "When the last outage was merged into the"
                 " primary (0: not yet).", 0.0 if merged_at is None else merged_at)
    yield _labelled("outage_status", "1 for the last outage's status.", "status",
                    {name: float(name == status) for name in OUTAGE_STATUSES})
    yield _labelled("outage_activity", "What users did on the standby during the last outage.",
                    "kind", {kind: float(n) for kind, n in changelog.activity(number).items()})
    progress = changelog.progress_counts(number)
    yield _labelled("failback_actions", "Failback actions finished for the last outage"
                    " (done: merged into the primary).", "status",
                    {status: float(progress.get(status, 0)) for status in FAILBACK_STATUSES})


def verdict_metrics(watched: Watch) -> Iterator[Metric]:
    """The verdict ``status`` opens with, per part."""
    yield _gauge("protected", "1 if every watched part answers (status: PROTECTED), 0 if"
                 " status lists a problem.", float(watched.protected))
    since = {problem.part: problem.since for problem in watched.problems}
    yield _labelled("part_ok", "1 if the part has no problem in status, 0 if it has.", "part",
                    {part: float(ok) for part, ok in watched.part_ok().items()})
    yield _labelled("part_problem_since_timestamp_seconds", "Since when the part has had its"
                    " problem (0: none).", "part",
                    {part: since.get(part, 0.0) for part in watched.parts})


def disk_metrics(config: Config) -> Metric:
    free = GaugeMetricFamily(PREFIX + "disk_free_ratio", "Free share (0 to 1) of the file system"
                             " holding the standby's mail, the milter's spool or the state"
                             " store (the lesser of space and inodes).", labels=["part", "path"])
    for disk in watched_disks(config):
        free.add_metric([disk.part, str(disk.path)], min(disk.free_ratio, disk.free_inodes_ratio))
    return free


def watch_metrics(config: Config, store: StateStore) -> Iterator[Metric]:
    """The verdict ``status`` opens with, per part, and the checks behind it (the monitor's
    latest, not run again at scrape time), the disks and the journal's pace.

    A store that cannot be read (a PostgreSQL server stopped or cut off) is the verdict itself,
    as ``status`` gives it: ``part_ok{part="store"} 0`` and ``protected 0``, so that the alerts
    on them fire. (A SQLite store moved away is seen by ``store_problem``'s own connection, as
    the collector's open one still reads the old file; a PostgreSQL connection just fails.)
    The checks and the pace are in the store: not served until it answers."""
    now = time.time()
    usage = readable_spool(config, now)
    try:
        # Of the journal, the verdict needs only the spool errors (the journal section has
        # the rest).
        watched = watch(config, store, current_state(store), alarm_summary(store, "spool_error"),
                        usage, now, live=False)
    except StateStoreError as exc:
        yield from verdict_metrics(store_unavailable(config, str(exc), now))
        yield disk_metrics(config)
        return
    yield from verdict_metrics(watched)
    labels = ["part", "check", "target"]
    up = GaugeMetricFamily(PREFIX + "check_up", "1 if the monitor's last check of the part"
                           " succeeded (standby lmtp/imap/submission, milter socket, webmail"
                           " http).", labels=labels)
    latency = GaugeMetricFamily(PREFIX + "check_latency_seconds", "How long that check took"
                                " (to its timeout when the part never answered).", labels=labels)
    for record in watched.checks:
        key = [record.check.part, record.check.name, record.check.target]
        up.add_metric(key, float(record.check.ok))
        if record.check.latency_ms is not None:
            latency.add_metric(key, record.check.latency_ms / 1000)
    yield from (up, latency)
    yield disk_metrics(config)
    pace = journal_pace(config, store, usage or EMPTY_SPOOL, now)
    yield _gauge("pace_accepted_messages", "Messages the gateway accepted for protected domains"
                 " in the last [watch] journal_pace_seconds (policyd's count).", pace.accepted)
    yield _gauge("pace_journaled_messages", "Of the same window, messages with a journal copy"
                 " (shipped or in the spool).", pace.journaled)


class StoreCollector(Collector):
    """Reads every section at scrape time; one section's failure does not hide the others."""

    def __init__(self, config: Config, store: StateStore) -> None:
        self.sections: dict[str, Callable[[], Iterator[Metric]]] = {
            "state": lambda: state_metrics(store),
            "journal": lambda: journal_metrics(config, store),
            "probes": lambda: probe_metrics(store, config.host_name),
            "outage": lambda: outage_metrics(store),
            "watch": lambda: watch_metrics(config, store),
        }
        self.failing: set[str] = set()
        # Prometheus may scrape concurrently; one connection serves one query at a time.
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            started = time.perf_counter()
            errors = GaugeMetricFamily(PREFIX + "scrape_error", "1 if this part could not be"
                                       " read at this scrape (see policyd's log).",
                                       labels=["section"])
            families: list[Metric] = []
            for name, section in self.sections.items():
                errors.add_metric([name], float(not self._read(name, section, families)))
            duration = time.perf_counter() - started
        yield from families
        yield errors
        yield _gauge("scrape_duration_seconds", "How long reading the state store and the"
                     " spool took.", duration)

    def _read(self, name: str, section: Callable[[], Iterator[Metric]],
              into: list[Metric]) -> bool:
        try:
            read = list(section())  # all of a section or none of it
        except Exception as exc:  # noqa: BLE001 - a scrape reports, it never crashes policyd
            level = logging.DEBUG if name in self.failing else logging.ERROR
            log.log(level, "event=metrics_section_failed section=%s error=%r", name, str(exc))
            self.failing.add(name)
            return False
        into.extend(read)
        if name in self.failing:
            log.info("event=metrics_section_recovered section=%s", name)
            self.failing.discard(name)
        return True


class MetricsEndpoint:
    """The HTTP listener, in a daemon thread of policyd, with its own state store connection
    (opened once here: opening one briefly takes the write lock, a scrape must not)."""

    def __init__(self, config: Config, registry: CollectorRegistry) -> None:
        self.config = config
        self.registry = registry
        self._store: StateStore | None = None
        self._server: WSGIServer | None = None

    def start(self) -> bool:
        """Listen; if the port cannot be had, say so and go on without metrics (outage
        detection matters more than its dashboard; Prometheus' ``up == 0`` alerts on it)."""
        listen = self.config.metrics.listen
        self._store = open_store(self.config, connect=False)
        self.registry.register(StoreCollector(self.config, self._store))
        ProcessCollector(registry=self.registry)  # CPU, memory, open files of policyd
        try:
            self._server, _ = start_http_server(listen.port, listen.host, self.registry)
        except OSError as exc:
            log.error("event=metrics_listen_failed listen=%s error=%r action=serve_without"
                      " hint=%r", listen, exc.strerror or str(exc),
                      "free the port or change [metrics] listen")
            return False
        log.info("event=metrics_listening listen=%s", listen)
        return True

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._store is not None:
            self._store.close()
            self._store = None
