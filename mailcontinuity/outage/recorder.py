"""``mailcontinuity sync-agent``: watch the standby's Maildirs and record outage activity.

Outside an outage it keeps its watches and its heartbeat, and every
``sync.follow_interval_seconds`` makes the standby's journal copies follow what users did on the
primary (``outage.follow``, in a thread of its own). During ``failover`` each inotify
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
import errno
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
from mailcontinuity.deploy.portal import PortalStatus
from mailcontinuity.mail.maildir import folder_dirs
from mailcontinuity.outage.follow import follow_all
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
              | pyinotify.IN_DELETE | pyinotify.IN_ONLYDIR)
HEARTBEAT_SECONDS = 2.0
USER_DISCOVERY_SECONDS = 1.0  # a listing of the domain directories: cheap
MERGE_RETRY_SECONDS = 15.0
# Users the kernel's watch limit left without (all their) watches are rescanned this often
# during an outage, and their watches are tried again (the limit may have been raised).
UNWATCHED_RESCAN_SECONDS = 30.0
STORE_RETRY_MILLISECONDS = 1000
MESSAGE_DIRS = ("new", "cur")
MAX_WATCHES_FILE = Path("/proc/sys/fs/inotify/max_user_watches")
SYSCTL_FILE = "/etc/sysctl.d/60-mailcontinuity.conf"


def wanted_watches(maildir: Path) -> list[Path]:
    """The directories whose events the agent needs for one Maildir: the root (folders are
    created, renamed and removed there: Maildir++ is flat) and each folder's ``new/`` and
    ``cur/``. Not ``tmp/`` (deliveries in progress are not mail yet) nor the folder
    directories themselves: 1 + 2 per folder."""
    wanted = [maildir]
    for directory in folder_dirs(maildir).values():
        wanted += [directory / sub for sub in MESSAGE_DIRS if (directory / sub).is_dir()]
    return wanted


def max_user_watches() -> int | None:
    """The kernel's per-Unix-user limit of inotify watches (every process of the user counts)."""
    try:
        return int(MAX_WATCHES_FILE.read_text().strip())
    except (OSError, ValueError):
        return None


def watch_limit_message(limit: int | None, needed: int, users: int, unwatched: int) -> str:
    """What an operator must read when the limit is reached: the key, the count, the fix."""
    suggest = -(-max(needed * 2, 8192) // 1024) * 1024
    return (f"inotify watch limit reached: fs.inotify.max_user_watches is {limit or 'unknown'}"
            f" and the sync agent needs {needed} watches for {users} users (1 per Maildir, 2 per"
            f" folder); {unwatched} users are recorded by a rescan every"
            f" {UNWATCHED_RESCAN_SECONDS:.0f}s instead of events until it is raised: 'sysctl -w"
            f" fs.inotify.max_user_watches={suggest}' and the same line"
            f" 'fs.inotify.max_user_watches = {suggest}' in {SYSCTL_FILE} (the limit counts"
            f" every watch of this Unix user, Dovecot's IDLE included: leave room)")


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
        # Watch descriptor -> user (O(1) per event), and each user's watched directories.
        self.wd_user: dict[int, str] = {}
        self.user_wds: dict[str, dict[Path, int]] = {}
        # Users missing a watch because the kernel's limit was reached; rescanned instead.
        self.unwatched: set[str] = set()
        self.rewatch_users: set[str] = set()
        self.needed: dict[str, int] = {}
        self.next_unwatched = 0.0
        self.limit_hit = False
        self.watch_reported: tuple[bool, str] | None = None
        # Folders seen created: their new/ and cur/ may appear a moment later; look again
        # each discovery tick until this deadline.
        self.pending_folders: dict[str, float] = {}
        self.outage: Outage | None = None
        self.rescan_all = True
        self.rescan_users: set[str] = set()
        self.stopping = False
        self.started_at = time.time()
        self.next_merge = 0.0
        self.next_follow = time.time() + config.sync.follow_interval_seconds
        self.following: threading.Thread | None = None
        # The transitions' hooks in a thread of their own: the heartbeat never waits for them.
        self.hooks = hook_queue(config)
        # The portal's banner (portal.status_file): this agent runs on the standby, by the portal.
        self.portal = PortalStatus(config)
        self.store_error: str | None = None

    # --- watching ----------------------------------------------------------------------
    def discover_users(self) -> None:
        """Watch every protected user's Maildir (``wanted_watches``); users that appeared
        since the last look are rescanned (their mail may predate the watch)."""
        self.limit_hit = False  # once per pass: after the first ENOSPC nothing more is tried
        for user, maildir in protected_maildirs(self.config).items():
            if user not in self.maildirs:
                self.maildirs[user] = maildir
                self.rescan_users.add(user)
                self.watch_user(user)
                log.info("event=watching user=%s maildir=%s", user, maildir)
        now = time.time()
        for user in sorted(self.rewatch_users):
            self.pending_folders[user] = now + 10 * USER_DISCOVERY_SECONDS
        self.rewatch_users.clear()
        for user, until in list(self.pending_folders.items()):
            if user in self.maildirs:
                self.watch_user(user)
            if now >= until:
                del self.pending_folders[user]
        if self.unwatched and time.time() >= self.next_unwatched:
            # The limit may have been raised meanwhile (sysctl -w acts at once): try again.
            for user in sorted(self.unwatched):
                self.watch_user(user)
        self._report_watches()

    def watch_user(self, user: str) -> None:
        """Bring ``user``'s watches in line with its folders; at the kernel's limit the user
        joins ``unwatched`` (rescanned periodically) rather than going unrecorded."""
        maildir = self.maildirs[user]
        try:
            wanted = wanted_watches(maildir)
        except FileNotFoundError:
            wanted = []
        self.needed[user] = len(wanted)
        have = self.user_wds.setdefault(user, {})
        for path in [p for p in have if p not in set(wanted)]:
            wd = have.pop(path)
            self.wd_user.pop(wd, None)
            if wd in self.watches.watches:
                self.watches.rm_watch(wd, quiet=True)
        missing = False
        for path in wanted:
            if path in have:
                continue
            if self.limit_hit:
                missing = True
                break
            wd = self.add_watch(path)
            if wd >= 0:
                have[path] = wd
                self.wd_user[wd] = user
                # What was written before this watch existed has sent no event: the rescan
                # that follows (in an outage) records it, events record the rest.
                self.rescan_users.add(user)
            elif self.watch_errno() == errno.ENOSPC:
                missing = self.limit_hit = True
                break
            else:
                # Gone between the listing and the watch: the next rescan sees the truth.
                self.rescan_users.add(user)
        if missing:
            if user not in self.unwatched:
                log.error("event=inotify_limit user=%s watched=%d needed=%d", user, len(have),
                          len(wanted))
            self.unwatched.add(user)
        else:
            self.unwatched.discard(user)

    def add_watch(self, path: Path) -> int:
        """One non-recursive watch; a negative result is a failure (``watch_errno`` says which)."""
        result: dict[str, int] = self.watches.add_watch(str(path), WATCH_MASK, quiet=True)
        return result.get(os.path.normpath(str(path)), -1)

    def watch_errno(self) -> int | None:
        """The errno of the last failed ``add_watch`` (ENOSPC: the watch limit)."""
        wrapper = getattr(self.watches, "_inotify_wrapper", None)
        return wrapper.get_errno() if wrapper is not None else None

    def watch_report(self) -> tuple[bool, str]:
        """Whether every user has its watches, and what the operator must know if not."""
        needed = sum(self.needed.values())
        if not self.unwatched:
            return True, (f"{len(self.wd_user)} inotify watches for {len(self.maildirs)} users"
                          f" (limit {max_user_watches() or 'unknown'})")
        return False, watch_limit_message(max_user_watches(), needed, len(self.maildirs),
                                          len(self.unwatched))

    def _report_watches(self) -> None:
        """Record the watches' check when it changes (``status`` shows a failing one); while
        users lack watches, queue their rescan every UNWATCHED_RESCAN_SECONDS."""
        ok, detail = self.watch_report()
        now = time.time()
        if not ok and now >= self.next_unwatched:
            self.rescan_users |= self.unwatched
            self.next_unwatched = now + UNWATCHED_RESCAN_SECONDS
        if (ok, detail) == self.watch_reported:
            return
        if not ok:
            log.error("event=inotify_degraded %s", detail)
        self.watch_reported = (ok, detail)
        record_checks(self.store, self.config.host_name, [Check(
            "sync-agent", "inotify", socket.gethostname(), ok, now, detail,
            "" if ok else "raise fs.inotify.max_user_watches as the detail says; the agent"
            " picks the new limit up by itself within"
            f" {UNWATCHED_RESCAN_SECONDS:.0f}s, no restart needed")])

    def _owner(self, event: pyinotify.Event) -> tuple[str, Path] | None:
        """The user a watch descriptor belongs to: one dictionary look-up per event."""
        user = self.wd_user.get(event.wd)
        return None if user is None else (user, self.maildirs[user])

    def process_IN_IGNORED(self, event: pyinotify.Event) -> None:  # noqa: N802 - pyinotify
        """The kernel dropped a watch (its directory went): forget it."""
        user = self.wd_user.pop(event.wd, None)
        if user is not None:
            have = self.user_wds.get(user, {})
            for path, wd in list(have.items()):
                if wd == event.wd:
                    del have[path]

    def process_IN_Q_OVERFLOW(self, event: pyinotify.Event) -> None:  # noqa: N802 - pyinotify
        log.warning("event=inotify_overflow action=full_rescan")
        self.rescan_all = True

    def process_default(self, event: pyinotify.Event) -> None:
        owner = self._owner(event)
        if owner is None:
            return
        user, maildir = owner
        if event.dir:
            # A folder appeared, moved or went: its new/ and cur/ need watches (they may
            # appear a moment after the folder), in an outage or not.
            self.rewatch_users.add(user)
        if self.outage is None:
            return  # outside an outage nothing is recorded
        path = Path(event.pathname)
        if event.dir:
            # Its contents may predate the watch.
            self.rescan_users.add(user)
        elif path.parent.name in MESSAGE_DIRS:
            record_file(self.changelog, self.outage.id, user, maildir, path,
                        self.config.milter.id_header, self.outage.key_scheme)

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
        current = current_state(self.store)
        self.portal.follow(self.store, current)
        state = current.name
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
                                self.config.milter.id_header, self.outage.key_scheme)
        self.rescan_users.clear()
        if state == "failback" and time.time() >= self.next_merge:
            self.merge()
        if state == "normal":
            self.follow()

    def follow(self) -> None:
        """A follow pass when one is due and none runs (in its own thread: it reads every
        user's primary mailbox, and the heartbeat must not wait for it)."""
        interval = self.config.sync.follow_interval_seconds
        if not interval or time.time() < self.next_follow or (
                self.following is not None and self.following.is_alive()):
            return
        self.next_follow = time.time() + interval

        def work() -> None:
            try:
                follow_all(self.config)
            except LeaseHeld as exc:
                log.info("event=follow_deferred reason=%r", str(exc))
            except Exception:  # a pass that fails must not take the agent down
                log.exception("event=follow_pass_failed")

        self.following = threading.Thread(target=work, name="follow", daemon=True)
        self.following.start()

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
