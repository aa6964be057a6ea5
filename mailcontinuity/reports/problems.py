"""Is the site protected? Every watched part, and what is wrong with each, since when, and what
to do next: the verdict ``status`` opens with, ``status --check`` exits with, and the metrics
(``mailcontinuity_protected``, ``mailcontinuity_part_ok``) serve.

Continuity is used a few days a year; its worst failure is the quiet one (the journal stopped
weeks ago, the standby's disk is full) found only when the primary dies. So every part the
design relies on is watched, and anything short of "all answer" is a problem:

- **primary**: its probes (policyd's monitor); while it fails the site runs on the standby, or
  worse, waits in Postfix's queue;
- **standby**: LMTP, IMAP and submission answer (the monitor's checks), the disk of its mail
  store has room;
- **milter**: Postfix can reach it and it negotiates, its journal copies keep pace with the mail
  the gateway accepts, the copies reach the standby in time, its spool's disk has room;
- **policyd**: its heartbeat (a stopped, killed or hung policyd detects no outage);
- **sync-agent**: its heartbeat (nothing records the outage without it), and its inotify
  watches (the kernel's limit reached: a warning naming the sysctl);
- **store**: the state store can be read and written, its disk has room;
- **webmail** (``standby.webmail``): it answers.
- **credentials** (``[credentials]``): the standby's copy of the directory's password hashes is
  there, younger than ``max_age_seconds``, and its last refresh worked.

The monitor records its checks in the store; when policyd is not there to run them, ``status``
runs them itself (``live``), so that it never reports a part as fine on stale evidence.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

from mailcontinuity.config import Config
from mailcontinuity.credentials.freshness import CopyStatus, copy_status
from mailcontinuity.journal.spool import SpoolUsage, spool_usage
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.monitor.watch import check_watched_parts, standby_ready
from mailcontinuity.outage.merge import LEASE as MERGE_LEASE
from mailcontinuity.store.accepted import accepted_since
from mailcontinuity.store.checks import Check, CheckRecord, latest_checks
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.gateways import votes
from mailcontinuity.store.heartbeats import (
    pid_alive,
    policyd_heartbeat,
    policyd_heartbeats,
    sync_agent_heartbeat,
)
from mailcontinuity.store.journal import journaled_since
from mailcontinuity.store.leases import lease_holder
from mailcontinuity.store.probes import ProbeResult, failing_since, latest_probes
from mailcontinuity.store.state import State

Severity = Literal["critical", "warning"]
Verdict = Literal["OK", "WARNING", "CRITICAL", "UNKNOWN"]
# The monitoring-plugin convention (Nagios, Icinga, Zabbix agents).
EXIT_CODES: dict[Verdict, int] = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
PARTS = ("primary", "standby", "milter", "policyd", "sync-agent", "store", "webmail",
         "credentials")
# Without a policyd heartbeat to say how fresh a check must be.
DEFAULT_STALE_SECONDS = 15.0


@dataclass(frozen=True)
class Problem:
    """What is wrong with one part (contract: ``part``, ``since``, ``detail``, ``action`` in
    ``status --json``); ``severity`` decides ``status --check``'s exit status."""

    part: str
    since: float
    detail: str
    action: str
    severity: Severity = "critical"

    def as_dict(self) -> dict[str, Any]:
        return {"part": self.part, "since": self.since, "detail": self.detail,
                "action": self.action}


@dataclass
class Watch:
    """The verdict and the evidence for it."""

    parts: list[str]
    problems: list[Problem] = field(default_factory=list)
    checks: list[CheckRecord] = field(default_factory=list)
    checked_live: bool = False
    """Whether ``checks`` were run by this process (policyd was not there to run them)."""

    @property
    def protected(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> Verdict:
        if any(problem.severity == "critical" for problem in self.problems):
            return "CRITICAL"
        return "WARNING" if self.problems else "OK"

    def part_ok(self) -> dict[str, bool]:
        """Each watched part: False when it has a problem, on this host or (``HOST/PART``) on
        another gateway of the site."""
        failing = {base_part(problem.part) for problem in self.problems}
        return {part: part not in failing for part in self.parts}


def watched_parts(config: Config) -> list[str]:
    optional = {"webmail": config.standby.webmail, "credentials": config.credentials}
    return [part for part in PARTS if optional.get(part, True) is not None]


def expected_checks(config: Config) -> set[tuple[str, str]]:
    """The checks the monitor runs each round for this configuration."""
    expected = {("standby", "lmtp"), ("standby", "imap"), ("milter", "socket")}
    if config.standby.submission is not None:
        expected.add(("standby", "submission"))
    if config.standby.webmail is not None:
        expected.add(("webmail", "http"))
    return expected


# --- policyd and the primary ---------------------------------------------------------------
def policyd_status(config: Config, beat: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """Whether a policyd runs: its heartbeat is fresh and, on this host, its process alive (a
    pid on another host of a site means nothing here)."""
    if beat is None:
        return {"running": False, "detail": "never started on this host", "since": None}
    report = {"pid": beat["pid"], "last_heartbeat": beat["beat_at"],
              "stale_after": beat["stale_after"]}
    if beat["stopped_at"] is not None:
        detail, since = "stopped", beat["stopped_at"]
    elif beat["host"] == config.host_name and not pid_alive(beat["pid"]):
        detail, since = f"process {beat['pid']} is gone (killed or crashed)", beat["beat_at"]
    elif now - beat["beat_at"] > beat["stale_after"]:
        detail, since = (f"no heartbeat for {now - beat['beat_at']:.0f}s (hung, stopped or cut"
                         " off?)", beat["beat_at"])
    else:
        return {"running": True, **report, "detail": "running", "since": beat["started_at"]}
    return {"running": False, **report, "detail": detail, "since": since}


def probing_host(config: Config, store: StateStore) -> str | None:
    """Whose probes of the primary this host's verdict shows: a gateway's own; on another host
    of a site (the standby's), those of the gateway that reported last, preferring one that sees
    the primary as most of them do, so every host names the same problem."""
    if config.routes_mail:
        return config.host_name
    cluster = config.cluster
    assert cluster is not None
    recorded = [vote for vote in votes(store) if vote.host in cluster.gateways]
    if not recorded:
        return None
    failing = sum(1 for vote in recorded if not vote.healthy)
    majority_healthy = failing * 2 < len(recorded)
    return max(recorded, key=lambda vote: (vote.healthy == majority_healthy, vote.at)).host


def host_policyd_status(config: Config, store: StateStore, now: float) -> dict[str, Any]:
    """This host's policyd; on a host of a site that is not a gateway (the standby's), the
    gateways' together: running while one of them runs."""
    cluster = config.cluster
    if cluster is None or cluster.is_gateway:
        return policyd_status(config, policyd_heartbeat(store, config.host_name), now)
    beats = policyd_heartbeats(store)
    every = {name: policyd_status(config, beats.get(name), now) for name in cluster.gateways}
    running = [name for name, daemon in every.items() if daemon["running"]]
    stale = [float(daemon["stale_after"]) for daemon in every.values() if daemon.get("stale_after")]
    since = [daemon["since"] for daemon in every.values() if daemon["since"] is not None]
    return {"running": bool(running), "since": min(since) if since else None,
            "stale_after": max(stale) if stale else None,
            "detail": f"running on {', '.join(running)}" if running
            else f"on no gateway ({', '.join(cluster.gateways)})"}


def policyd_problem(daemon: dict[str, Any], now: float) -> Problem | None:
    if daemon["running"]:
        return None
    return Problem("policyd", daemon["since"] or now, f"policyd {daemon['detail']}: nothing"
                   " probes the primary, so an outage would not be detected (mail still flows"
                   " with the last routing)", "start it: 'systemctl restart"
                   " mailcontinuity-policyd' (or 'mailcontinuity policyd'), then read"
                   " 'journalctl -u mailcontinuity-policyd'")


def primary_problem(state: State, probes: list[ProbeResult], first_failure: float | None,
                    failover_held: str, now: float) -> Problem | None:
    failing = [f"{p.probe} {p.target}: {p.error}" for p in probes if not p.ok]
    slow = [f"{p.probe} {p.target}: {p.error}" for p in probes if p.ok and p.error]
    if not failing and slow:
        return Problem("primary", now, "primary answers, but slowly: " + "; ".join(slow),
                       "not down, so no failover; if the primary's log shows failed logins"
                       " from the probe's address ([health] probe_source_address), block"
                       " the guesser", "warning")
    if not failing:
        return None
    detail = "primary fails its probes: " + "; ".join(failing)
    if state.name == "failover":
        return Problem("primary", first_failure or now, detail + "; mail goes to the standby",
                       "users work on the standby; failback follows when the primary answers"
                       " again ([failback] mode), or run 'mailcontinuity failback'", "warning")
    if failover_held:
        return Problem("primary", first_failure or now, detail + "; the standby is down too,"
                       f" so there is no failover ({failover_held}): mail waits in Postfix's"
                       " queue", "bring back the standby (failover then proceeds) or the"
                       " primary (mail in the queue is delivered to it)")
    return Problem("primary", first_failure or now, detail, "the monitor fails over after"
                   " [health] failures rounds over failure_window_seconds; to do it now:"
                   " 'mailcontinuity failover --reason ...'")


# --- the monitor's checks ------------------------------------------------------------------
def current_checks(config: Config, store: StateStore, now: float, stale_after: float,
                   live: bool) -> tuple[list[CheckRecord], bool]:
    """The watched parts' checks: as the monitor recorded them when fresh, else (when ``live``)
    run here and now. Returns the checks and whether they were run here. A gateway reads its
    own; another host of a site (the standby's) those of the gateway whose probes it shows
    (``probing_host``)."""
    host = probing_host(config, store)
    recorded = ({} if host is None else
                {(r.check.part, r.check.name): r for r in latest_checks(store, host)})
    wanted = expected_checks(config)
    fresh = [recorded[key] for key in sorted(wanted)
             if key in recorded and now - recorded[key].check.at <= stale_after]
    if len(fresh) == len(wanted) or not live:
        return fresh, False
    ran = asyncio.run(check_watched_parts(config, TLSPolicy.of(config, "standby")))
    records = []
    for check in ran:
        before = recorded.get((check.part, check.name))
        since = before.since if before is not None and before.check.ok == check.ok else now
        records.append(CheckRecord(check, since, config.host_name))
    return records, True


def peer_check_problems(config: Config, store: StateStore, shown: list[CheckRecord], now: float,
                        stale_after: float) -> list[Problem]:
    """On a site with several gateways, the fresh failing checks of the gateways other than the
    one whose checks this host shows (gw2's milter socket, the standby as gw2 sees it), each
    named ``HOST/PART``: every host names them, not only the gateway that ran them."""
    cluster = config.cluster
    if cluster is None or len(cluster.gateways) < 2:
        return []
    hosts = {record.host for record in shown}
    failing = [record for record in latest_checks(store)
               if record.host in cluster.gateways and record.host not in hosts
               and not record.check.ok and now - record.check.at <= stale_after]
    by_part: dict[str, list[CheckRecord]] = {}
    for record in failing:
        by_part.setdefault(f"{record.host}/{record.check.part}", []).append(record)
    return [Problem(part, min(r.since for r in records), "; ".join(
                f"{r.check.name} {r.check.target}: {r.check.detail}" for r in records),
                records[0].check.action)
            for part, records in sorted(by_part.items())]


def check_problems(checks: Iterable[CheckRecord]) -> list[Problem]:
    """One problem per part whose checks fail, since the earliest failure."""
    by_part: dict[str, list[CheckRecord]] = {}
    for record in checks:
        if not record.check.ok:
            by_part.setdefault(record.check.part, []).append(record)
    problems = []
    for part, failing in by_part.items():
        detail = "; ".join(f"{r.check.name} {r.check.target}: {r.check.detail}" for r in failing)
        problems.append(Problem(part, min(r.since for r in failing), detail,
                                failing[0].check.action))
    return problems


# --- the sync agent ------------------------------------------------------------------------
def sync_agent_problem(config: Config, store: StateStore, checks: list[CheckRecord],
                       now: float) -> Problem | None:
    action = ("start it: 'systemctl restart mailcontinuity-sync-agent' (or 'mailcontinuity"
              " sync-agent'); during an outage nothing records what users do on the standby,"
              " and failback does not start by itself")
    beat = sync_agent_heartbeat(store)
    if beat is None:
        return Problem("sync-agent", now, "the sync agent has never run with this state store",
                       action)
    process = next((r for r in checks if (r.check.part, r.check.name)
                    == ("sync-agent", "process")), None)
    if process is not None and not process.check.ok and process.check.at >= beat[1]:
        return Problem("sync-agent", process.since, f"the sync agent {process.check.detail}",
                       action)
    silent = now - beat[2]
    holder = lease_holder(store, MERGE_LEASE, now) or ""
    if silent > config.watch.sync_agent_stale_seconds and not holder.startswith("sync-agent"):
        return Problem("sync-agent", beat[2], f"no heartbeat from the sync agent (pid {beat[0]})"
                       f" for {silent:.0f}s: stopped, killed or hung", action)
    return None


def watches_problem(checks: list[CheckRecord]) -> Problem | None:
    """The sync agent runs degraded: the kernel's inotify watch limit left users without
    watches (it rescans them periodically instead). A warning: nothing is lost, but events
    come late and the rescans cost; the detail names the sysctl and the number needed."""
    record = next((r for r in checks if (r.check.part, r.check.name)
                   == ("sync-agent", "inotify")), None)
    process = next((r for r in checks if (r.check.part, r.check.name)
                    == ("sync-agent", "process")), None)
    if record is None or record.check.ok or (process is not None and not process.check.ok):
        return None
    return Problem("sync-agent", record.since, record.check.detail, record.check.action,
                   severity="warning")


def failback_problem(state: State, checks: list[CheckRecord]) -> Problem | None:
    """The sync agent's last automatic failback failed (the primary refused the login, went
    away, throttles): while the state is still failback, that is a problem with its words."""
    record = next((r for r in checks if r.check.name == "failback"), None)
    if state.name != "failback" or record is None or record.check.ok:
        return None
    return Problem("sync-agent", record.since, record.check.detail, record.check.action)


# --- the standby's copy of the credentials ----------------------------------------------------
def credentials_problem(copy: CopyStatus | None, now: float) -> Problem | None:
    """No copy, a copy older than ``max_age_seconds`` (critical: during an outage of the
    directory, users whose password changed, or who were added or locked since, are treated by
    an old list), or a failed last refresh that left a still young copy (warning)."""
    if copy is None:
        return None
    action = ("run 'mailcontinuity credentials-sync' on the standby and fix what it says; the"
              " timer mailcontinuity-credentials-sync.timer refreshes it")
    if copy.written_at is None:
        return Problem("credentials", copy.failing_since or now, f"no copy of the directory's"
                       f" credentials at {copy.copy_file}: if the directory goes down with the"
                       " primary, nobody can log in to the standby", action)
    failed = (f"; last refresh failed: {copy.last_refresh_detail}"
              if copy.last_refresh_ok is False else "")
    if copy.too_old:
        return Problem("credentials", copy.written_at + copy.max_age_seconds,
                       f"the copy {copy.copy_file} is {copy.age_seconds or 0:.0f}s old (over"
                       f" {copy.max_age_seconds:g}s of credentials.max_age_seconds){failed}",
                       action)
    if failed:
        return Problem("credentials", copy.failing_since or now,
                       f"the copy {copy.copy_file} ({copy.age_seconds or 0:.0f}s old) is kept"
                       + failed, action, "warning")
    return None


# --- the store and the disks ---------------------------------------------------------------
def store_problem(config: Config, now: float) -> Problem | None:
    """Whether the state store can be read and written at its configured path. A read-only
    connection is opened for the check: it takes no write lock and creates nothing. (A
    PostgreSQL store is checked by the connection ``status`` has just used: here it answers.)"""
    if config.state.url is not None:
        return None
    path = config.state.path
    action = (f"check {path} and its directory (state.path): a regular file, writable by the"
              " daemons' group, on a file system with room; the daemons cannot record the"
              " state, the journal or an outage without it")
    if not path.is_file():
        return Problem("store", now, f"state store {path} is missing or not a regular file",
                       action)
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
        return Problem("store", now, f"state store {path} or its directory is not writable"
                       " (permissions, a read-only file system)", action)
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            connection.execute("SELECT name FROM state WHERE id = 1").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return Problem("store", now, f"state store {path} cannot be read: {exc}", action)
    return None


@dataclass(frozen=True)
class Disk:
    """Free space of the file system holding one watched path."""

    part: str
    path: Path
    key: str
    free_ratio: float
    free_bytes: int
    free_inodes_ratio: float


def disk_of(part: str, path: Path, key: str) -> Disk | None:
    """The file system holding ``path``; None when ``path`` is not on this host (a standby on
    another machine: its disk is watched there)."""
    if not path.exists():
        return None
    stats = os.statvfs(path)
    if not stats.f_blocks:
        return None
    inodes = stats.f_favail / stats.f_files if stats.f_files else 1.0
    return Disk(part, path, key, stats.f_bavail / stats.f_blocks,
                stats.f_bavail * stats.f_frsize, inodes)


def maildir_root(template: str) -> Path:
    """The fixed part of a ``standby.maildir`` template: ``/var/vmail/%d/%n`` -> ``/var/vmail``."""
    return Path(template.split("%", 1)[0] or "/")


def watched_disks(config: Config) -> list[Disk]:
    disks = [disk_of("standby", maildir_root(config.standby.maildir), "standby.maildir"),
             disk_of("milter", config.milter.spool_dir, "milter.spool_dir"),
             disk_of("store", config.state.path.parent, "state.path")]
    return [disk for disk in disks if disk is not None]


def disk_problems(config: Config, disks: list[Disk], now: float) -> list[Problem]:
    watch = config.watch
    problems = []
    for disk in disks:
        free = min(disk.free_ratio, disk.free_inodes_ratio) * 100
        if free >= watch.disk_warning_percent:
            continue
        what = "space" if disk.free_ratio <= disk.free_inodes_ratio else "inodes"
        problems.append(Problem(
            disk.part, now, f"only {free:.1f}% free {what} ({disk.free_bytes / 2**30:.1f} GiB)"
            f" on the file system of {disk.path} ({disk.key})",
            f"free space there or grow the file system; below"
            f" {watch.disk_critical_percent:g}% mail stops being stored",
            "critical" if free < watch.disk_critical_percent else "warning"))
    return problems


# --- the journal ---------------------------------------------------------------------------
class Pace(NamedTuple):
    """Messages the gateway accepted for protected domains in the pace window, those of them
    with a journal copy (indexed or still in the spool), and when the newest copy came."""

    accepted: int
    journaled: int
    newest: float | None


def journal_pace(config: Config, store: StateStore, usage: SpoolUsage, now: float) -> Pace:
    since = now - config.watch.journal_pace_seconds
    journaled, newest = journaled_since(store, since)
    return Pace(accepted_since(store, since, now), journaled + usage.entries, newest)


def journal_problems(config: Config, store: StateStore, journal: dict[str, Any],
                     usage: SpoolUsage, state: State, now: float) -> list[Problem]:
    """Copies late to the standby, copies the milter could not write, and copies missing for
    mail the gateway accepted (Postfix does not reach the milter)."""
    problems = []
    limit = config.drill.max_journal_lag_seconds
    if usage.lag_seconds > limit:
        problems.append(Problem(
            "milter", now - usage.lag_seconds, f"{usage.entries} journal copies wait to reach"
            f" the standby, the oldest for {usage.lag_seconds:.0f}s (over the"
            f" {limit:g}s of drill.max_journal_lag_seconds)", "check the standby (its LMTP or"
            " mail store) and the milter's log (event=ship_error); nothing is lost, the spool"
            " keeps them", "warning"))
    window = config.watch.journal_pace_seconds
    last_error = journal.get("last_spool_error")
    if last_error and now - last_error["at"] < window:
        problems.append(Problem(
            "milter", last_error["at"], f"the milter could not write journal copies"
            f" ({journal['spool_errors']} so far), last: {last_error['detail']}",
            f"check the file system of {config.milter.spool_dir} (milter.spool_dir): mail"
            " was accepted without its copy in the standby", "warning"))
    since = now - window
    pace = journal_pace(config, store, usage, now)
    if (state.name != "failover" and pace.accepted >= config.watch.journal_pace_min_messages
            and pace.journaled * 2 < pace.accepted):
        accepted, journaled, newest = pace
        problems.append(Problem(
            "milter", newest if newest is not None and newest > since else since,
            f"the gateway accepted {accepted} messages for protected domains in the last"
            f" {window:g}s and the journal has {journaled} of them: Postfix does not reach"
            " the milter (mail flows unjournaled: milter_default_action = accept)",
            "check Postfix's smtpd_milters and non_smtpd_milters against 'mailcontinuity"
            " check-config', a chrooted smtpd (the socket must be under /var/spool/postfix)"
            " and the gateway's mail log (\"connect to Milter service\")"))
    return problems


EMPTY_SPOOL = SpoolUsage(0, 0, 0.0)


def readable_spool(config: Config, now: float) -> SpoolUsage | None:
    """The spool's backlog, or None when it cannot be read (``watch`` says so)."""
    try:
        return spool_usage(config.milter.spool_dir, now)
    except OSError:
        return None


def spool_problem(config: Config, now: float) -> Problem:
    directory = config.milter.spool_dir
    try:
        spool_usage(directory, now)
        reason = "it vanished while being read"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    return Problem("milter", now, f"the journal spool {directory} cannot be read: {reason}",
                   f"check {directory} (milter.spool_dir): its owner, mode and file system")


def merge_by_part(problems: list[Problem]) -> list[Problem]:
    """One problem per part (its details joined, the earliest since, the gravest severity),
    in the order of ``PARTS``."""
    merged: dict[str, Problem] = {}
    for problem in problems:
        have = merged.get(problem.part)
        if have is None:
            merged[problem.part] = problem
            continue
        merged[problem.part] = replace(
            have, since=min(have.since, problem.since), detail=f"{have.detail}; {problem.detail}",
            action=have.action if have.severity == "critical" or problem.severity == "warning"
            else problem.action,
            severity="critical" if "critical" in (have.severity, problem.severity)
            else "warning")
    order = {part: n for n, part in enumerate(PARTS)}
    return sorted(merged.values(), key=lambda p: order.get(base_part(p.part), len(PARTS)))


def base_part(part: str) -> str:
    """``milter`` of ``gw2/milter`` (another gateway's part), ``milter`` of ``milter``."""
    return part.rsplit("/", 1)[-1]


def watch(config: Config, store: StateStore, state: State, journal: dict[str, Any],
          usage: SpoolUsage | None, now: float | None = None, live: bool = True) -> Watch:
    """Every watched part's problems; with ``live``, checks the monitor has not run recently
    are run here (``status``); without, they are left out (the metrics, inside policyd).
    ``usage`` None: the spool could not be read (``readable_spool``)."""
    now = time.time() if now is None else now
    found: list[Problem] = []
    if usage is None:
        found.append(spool_problem(config, now))
        usage = EMPTY_SPOOL
    daemon = host_policyd_status(config, store, now)
    stale_after = daemon.get("stale_after") or DEFAULT_STALE_SECONDS
    checks, checked_live = current_checks(config, store, now, stale_after, live)
    # The sync agent's own reports, wherever it ran (the standby host), the latest first.
    process = sorted((r for r in latest_checks(store) if r.check.part == "sync-agent"),
                     key=lambda r: r.check.at, reverse=True)
    found += check_problems(checks)
    found += peer_check_problems(config, store, checks, now, stale_after)
    ready, held = standby_ready([record.check for record in checks])
    prober = probing_host(config, store)
    if daemon["running"] and prober is not None:
        probes = latest_probes(store, prober)
        fresh = [p for p in probes if now - p.at <= stale_after]
        found += filter(None, [primary_problem(state, fresh, failing_since(store, prober),
                                               "" if ready else held, now)])
    found += filter(None, [
        policyd_problem(daemon, now),
        sync_agent_problem(config, store, process, now),
        failback_problem(state, process),
        watches_problem(process),
        store_problem(config, now),
    ])
    found += filter(None, [credentials_problem(copy_status(config, store, now), now)])
    found += disk_problems(config, watched_disks(config), now)
    found += journal_problems(config, store, journal, usage, state, now)
    return Watch(watched_parts(config), merge_by_part(found), checks, checked_live)


def store_unavailable(config: Config, error: str, now: float | None = None) -> Watch:
    """The verdict when the state store cannot even be opened."""
    now = time.time() if now is None else now
    if config.state.url is not None:
        routing = ("this gateway keeps routing protected mail as it did" if config.routes_mail
                   else "the gateways keep their last routing")
        return Watch(watched_parts(config), [Problem(
            "store", now, f"{error}; {routing} (fail-open), and no failover or failback can"
            " happen until the store answers",
            f"bring the store at {config.state.location} back, or this host's network path to"
            " it; every daemon reconnects by itself and catches up")])
    problem = store_problem(config, now) or Problem(
        "store", now, error, "check state.path and its directory: the daemons cannot record"
        " the state, the journal or an outage without the store")
    return Watch(watched_parts(config), [problem])


def check_as_dict(record: CheckRecord) -> dict[str, Any]:
    check: Check = record.check
    return {"part": check.part, "check": check.name, "target": check.target, "ok": check.ok,
            "since": record.since, "at": check.at, "latency_ms": check.latency_ms,
            "detail": check.detail, "host": record.host}
