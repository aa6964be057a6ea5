"""``mailcontinuity sync-agent``: watch the standby's Maildirs and record outage activity.

Outside an outage it only keeps its watches and its heartbeat. During ``failover`` each inotify
event updates the record of that one file; anything that may have cost events (the agent's start,
an inotify queue overflow, a folder created, renamed or removed) triggers a rescan, because
events may be missed but the disk cannot lie. When the state becomes ``failback`` (the health
monitor saw the primary recover) the agent runs the merge itself, unless an operator's
``mailcontinuity failback`` already holds the merge lease. On a site with several hosts the
agent runs on the standby's host (``cluster.standby_host``), which is where the merge must run,
and follows the shared state there.

If the state store cannot be reached the agent keeps its watches and waits: users' activity is
on the standby's disk, so once the store answers again a full rescan records whatever happened
meanwhile, and the agent catches up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType

import pyinotify

from mailcontinuity.config import Config, ConfigError
from mailcontinuity.outage.incident import finish_outage
from mailcontinuity.outage.merge import run_failback
from mailcontinuity.outage.primary import PrimaryError
from mailcontinuity.outage.scan import protected_maildirs, record_file, rescan, rescan_user
from mailcontinuity.store.checks import Check, record_checks
from mailcontinuity.store.db import StateStoreError, open_store
from mailcontinuity.store.heartbeats import sync_agent_beat
from mailcontinuity.store.leases import LeaseHeld
from mailcontinuity.store.outages import ChangeLog, Outage
from mailcontinuity.store.state import current_state
from mailcontinuity.transitions import hook_queue

log = logging.getLogger(__name__)

WATCH_MASK = (pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_MOVED_FROM
              | pyinotify.IN_DELETE)
HEARTBEAT_SECONDS = 2.0
USER_DISCOVERY_SECONDS = 1.0  # a listing of the domain directories: cheap
MERGE_RETRY_SECONDS = 15.0
STORE_RETRY_MILLISECONDS = 1000
MESSAGE_DIRS = ("new", "cur")


class SyncAgent(pyinotify.ProcessEvent):
    """The watcher; pyinotify calls ``process_default`` for every event."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        cluster = config.cluster
        if cluster is not None and not cluster.has_standby_maildirs:
            raise ConfigError(
                f"{config.source}: the sync agent runs where the standby's Maildirs are: on"
                f" {cluster.standby_host} (key 'cluster.standby_host'), not on {cluster.host}")
        self.config = config
        self.store = open_store(config, connect=False)
        self.changelog = ChangeLog(self.store)
        self.watches = pyinotify.WatchManager()
        self.notifier = pyinotify.Notifier(self.watches, self, timeout=1000)
        self.maildirs: dict[str, Path] = {}
        self.outage: Outage | None = None
        self.rescan_all = True
        self.rescan_users: set[str] = set()
        self.stopping = False
        self.started_at = time.time()
        self.next_merge = 0.0
        # The transitions' hooks in a thread of their own: the heartbeat never waits for them.
        self.hooks = hook_queue(config)
        self.store_error: str | None = None

    # --- watching ----------------------------------------------------------------------
    def discover_users(self) -> None:
        """Watch every protected user's Maildir, folders created later included."""
        for user, maildir in protected_maildirs(self.config).items():
            if user not in self.maildirs:
                self.watches.add_watch(str(maildir), WATCH_MASK, rec=True, auto_add=True)
                self.maildirs[user] = maildir
                self.rescan_users.add(user)
                log.info("event=watching user=%s maildir=%s", user, maildir)

    def _owner(self, path: Path) -> tuple[str, Path] | None:
        for user, maildir in self.maildirs.items():
            if path == maildir or maildir in path.parents:
                return user, maildir
        return None

    def process_IN_Q_OVERFLOW(self, event: pyinotify.Event) -> None:  # noqa: N802 - pyinotify
        log.warning("event=inotify_overflow action=full_rescan")
        self.rescan_all = True

    def process_default(self, event: pyinotify.Event) -> None:
        if self.outage is None:
            return  # outside an outage nothing is recorded
        path = Path(event.pathname)
        owner = self._owner(path)
        if owner is None:
            return
        user, maildir = owner
        if event.dir:
            # A folder appeared, moved or went: its contents may predate the watch.
            self.rescan_users.add(user)
        elif path.parent.name in MESSAGE_DIRS:
            record_file(self.changelog, self.outage.id, user, maildir, path,
                        self.config.milter.id_header)

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("event=sync_agent_start host=%s", self.config.host_name)
        last_beat = last_discovery = 0.0
        try:
            self._report_process(True, f"runs (pid {os.getpid()})")
        except StateStoreError as exc:
            self._store_unreachable(exc)
        while not self.stopping:
            now = time.time()
            if now - last_discovery >= USER_DISCOVERY_SECONDS:
                self.discover_users()
                last_discovery = now
            try:
                self.follow_state()
                if now - last_beat >= HEARTBEAT_SECONDS:
                    sync_agent_beat(self.store, self.config.host_name, self.started_at)
                    last_beat = now
                if self.notifier.check_events(timeout=500):
                    self.notifier.read_events()
                    self.notifier.process_events()
            except StateStoreError as exc:
                self._store_unreachable(exc)
                continue
            if self.store_error is not None:
                log.info("event=store_reachable action=rescanned")
                self.store_error = None
        self.notifier.stop()
        self.hooks.close(self.config.hooks_timeout_seconds + 5)
        with contextlib.suppress(StateStoreError):
            self._report_process(False, f"was stopped (pid {os.getpid()})")
        self.store.close()
        log.info("event=sync_agent_stop")

    def _report_process(self, running: bool, detail: str) -> None:
        """Say at once that the agent runs or has stopped (``status`` need not wait for its
        heartbeat to go stale)."""
        record_checks(self.store, self.config.host_name,
                      [Check("sync-agent", "process", socket.gethostname(), running,
                             time.time(), detail)])

    def _store_unreachable(self, exc: StateStoreError) -> None:
        """Wait for the store; whatever happens on disk meanwhile, a full rescan records."""
        if self.store_error is None:
            log.warning("event=store_unreachable error=%r action=rescan_when_back", str(exc))
        self.store_error = str(exc)
        self.rescan_all = True
        # Events pass unrecorded (no outage known now): the rescan that follows the store's
        # return covers them.
        self.outage = None
        if self.notifier.check_events(timeout=STORE_RETRY_MILLISECONDS):
            self.notifier.read_events()
            self.notifier.process_events()

    def follow_state(self) -> None:
        state = current_state(self.store).name
        # The open outage is read from the store each time rather than remembered: a whole
        # outage can come and go between two looks at the state.
        self.outage = self.changelog.open_outage() if state != "normal" else None
        if state == "failover" and self.outage is None:
            self.outage = self.changelog.start_outage(while_in=("failover",))
            if self.outage is not None:
                self.rescan_all = True
                log.info("event=outage_recording outage=%d", self.outage.id)
        if self.outage is not None:
            if self.rescan_all or self.outage.baseline_at is None:
                self.outage = rescan(self.config, self.changelog, self.outage)
                self.rescan_all = False
                self.rescan_users.clear()
            for user in sorted(self.rescan_users):
                if user in self.maildirs:
                    rescan_user(self.changelog, self.outage.id, user, self.maildirs[user], False,
                                self.config.milter.id_header)
        self.rescan_users.clear()
        if state == "failback" and time.time() >= self.next_merge:
            self.merge()

    def merge(self) -> None:
        """The primary is back: merge, then ``normal`` (run_failback does both)."""
        try:
            report = run_failback(self.config, actor="sync-agent",
                                  cause="primary recovered: automatic failback",
                                  hooks=self.hooks)
        except LeaseHeld as exc:
            log.info("event=merge_deferred reason=%r", str(exc))
        except (PrimaryError, OSError) as exc:
            log.error("event=merge_failed reason=%r retry_in=%.0fs", str(exc),
                      MERGE_RETRY_SECONDS)
            self._merge_check(False, str(exc))
        else:
            log.info("event=merge_done outage=%s counts=%s refused=%d", report.outage,
                     dict(report.counts), len(report.refused))
            self._merge_check(True, f"merged, {len(report.refused)} refused by the primary")
            if report.state == "normal" and report.outage is not None:
                self._report_incident(report.outage)
        self.next_merge = time.time() + MERGE_RETRY_SECONDS

    def _merge_check(self, ok: bool, detail: str) -> None:
        """The last automatic failback attempt, for ``status``: a merge that keeps failing
        is a problem with the server's words and what to do."""
        record_checks(self.store, self.config.host_name, [Check(
            "sync-agent", "failback", str(self.config.primary.imap), ok, time.time(),
            detail if ok else f"failback keeps failing, retried every"
            f" {MERGE_RETRY_SECONDS:.0f}s: {detail}",
            "fix what the message names on the primary or in [sync]; 'mailcontinuity"
            " failback --dry-run' shows what is left; the merge resumes where it stopped")])

    def _report_incident(self, outage_id: int) -> None:
        """Verify and archive the incident report in a thread of its own: verify reads every
        user's primary mailbox, and the heartbeat must not wait for it."""

        def work() -> None:
            try:
                finish_outage(self.config, outage_id)
            except Exception:  # a report that fails must not take the agent down
                log.exception("event=incident_report_failed outage=%d", outage_id)

        threading.Thread(target=work, name=f"incident-{outage_id}", daemon=True).start()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
