"""Ships spool entries to the standby in the background, with retry and backoff.

Runs as a thread of the milter process, so SMTP never waits for the standby: the milter hands
over each committed entry through a queue, and the shipper works through them in batches. For
each entry it stores every copy not yet settled, records the outcomes in one transaction per
batch, and only then deletes the entry. A crash anywhere in between leaves the entry in the
spool; on restart its copies are looked up before being written again (ship once). If the
index cannot be written (a shared store that is down), the entry stays in the spool with the
copies it has stored remembered, and only the record is retried: the copies are not shipped a
second time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailcontinuity.journal.sinks import Sink, TemporaryFailure
from mailcontinuity.journal.spool import Spool, SpoolError
from mailcontinuity.store.db import StateStore, StateStoreError
from mailcontinuity.store.journal import CopyRecord, record_alarm, record_copies, settled_copies

log = logging.getLogger(__name__)

BATCH_LIMIT = 256
IDLE_WAIT_SECONDS = 1.0
ALARM_INTERVAL_SECONDS = 60.0


@dataclass
class Backoff:
    """When an entry that failed may be tried again."""

    due: float
    attempts: int


class Shipper(threading.Thread):
    """The background shipper; ``notify`` is called by the milter after each commit."""

    def __init__(self, spool: Spool, sink: Sink, open_store: Callable[[], StateStore],
                 retry_initial: float, retry_max: float) -> None:
        super().__init__(name="journal-shipper", daemon=True)
        self._spool = spool
        self._sink = sink
        self._open_store = open_store
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._incoming: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._waiting: dict[Path, Backoff] = {}
        self._recovered: set[Path] = set()
        self._unrecorded: dict[Path, list[CopyRecord]] = {}
        """Entries whose copies were stored but whose index rows the store did not take."""
        self._stopping = threading.Event()
        self._last_alarm = 0.0

    def notify(self, entry: Path) -> None:
        self._incoming.put(entry)

    def stop(self) -> None:
        self._stopping.set()
        self._incoming.put(None)

    def run(self) -> None:
        store = self._open_store()
        try:
            self._recovered = set(self._spool.entries())
            if self._recovered:
                log.info("event=spool_recovered entries=%d", len(self._recovered))
            for entry in self._recovered:
                self._waiting[entry] = Backoff(0.0, 0)
            while not self._stopping.is_set():
                batch = self._next_batch()
                if batch:
                    try:
                        self._ship(store, batch)
                    except Exception:
                        log.exception("event=ship_batch_error entries=%d", len(batch))
                        for entry in batch:
                            self._postpone(entry, "internal error, see log")
        finally:
            store.close()

    def _next_batch(self) -> list[Path]:
        """New entries and due retries; waits until one is there (or the next retry is due)."""
        now = time.monotonic()
        next_due = min((b.due for b in self._waiting.values()), default=now + IDLE_WAIT_SECONDS)
        batch: list[Path] = []
        try:
            item = self._incoming.get(timeout=max(0.0, min(next_due - now, IDLE_WAIT_SECONDS)))
            while item is not None:
                batch.append(item)
                if len(batch) >= BATCH_LIMIT:
                    break
                item = self._incoming.get_nowait()
        except queue.Empty:
            pass
        now = time.monotonic()
        due = [entry for entry, backoff in self._waiting.items() if backoff.due <= now]
        return batch + due[: max(0, BATCH_LIMIT - len(batch))]

    def _ship(self, store: StateStore, batch: list[Path]) -> None:
        records: dict[Path, list[CopyRecord]] = {}
        finished: list[Path] = []
        postponed: dict[Path, str] = {}
        for entry in batch:
            if entry in self._unrecorded:  # shipped already: only its record is owed
                records[entry] = self._unrecorded[entry]
                finished.append(entry)
                continue
            try:
                envelope = self._spool.read_envelope(entry)
            except SpoolError as exc:
                if not entry.exists():  # already shipped: a retry raced a notification
                    self._forget(entry)
                    continue
                log.error("event=spool_entry_unreadable error=%r action=inspect_the_file", str(exc))
                self._spool.quarantine(entry)
                self._forget(entry)
                continue
            # Only an entry seen before (restart, retry) can have settled copies to skip.
            seen = entry in self._recovered or entry in self._waiting
            try:
                settled = settled_copies(store, envelope.id) if seen else set()
            except StateStoreError as exc:  # which copies are stored is unknown: wait
                postponed[entry] = f"journal index not readable: {exc}"
                continue
            pending = [t for t in envelope.targets if (t.address, t.folder) not in settled]
            error = ""
            fd = os.open(entry, os.O_RDONLY)
            try:
                results = self._sink.ship(fd, envelope, pending, seen) if pending else {}
            except TemporaryFailure as exc:
                results = {target: exc for target in pending}
            finally:
                os.close(fd)
            done = records.setdefault(entry, [])
            for target, outcome in results.items():
                if isinstance(outcome, TemporaryFailure):
                    error = str(outcome)
                    continue
                done.append(CopyRecord(envelope.id, target.address, target.folder,
                                       outcome.status, envelope.received,
                                       outcome.location, outcome.detail))
                if outcome.status != "shipped":
                    log.warning("event=journal_copy_refused id=%s address=%s status=%s"
                                " detail=%r", envelope.id, target.address, outcome.status,
                                outcome.detail)
            if error:
                postponed[entry] = error
            else:
                finished.append(entry)
        try:
            # The index first: then a crash cannot ship twice.
            record_copies(store, [record for entry_records in records.values()
                                  for record in entry_records])
        except StateStoreError as exc:
            self._unrecorded.update((entry, records[entry]) for entry in finished)
            for entry in finished:
                self._postpone(entry, f"journal index not written: {exc}")
            log.warning("event=journal_index_unwritten entries=%d error=%r action=retry",
                        len(finished), str(exc))
            finished = []
        for entry in finished:
            self._spool.remove(entry)
            self._forget(entry)
        for entry, error in postponed.items():
            self._postpone(entry, error)
            self._alarm(store, error)
        if finished:
            log.debug("event=shipped entries=%d copies=%d", len(finished),
                      sum(len(records[entry]) for entry in finished))

    def _forget(self, entry: Path) -> None:
        self._waiting.pop(entry, None)
        self._recovered.discard(entry)
        self._unrecorded.pop(entry, None)

    def _postpone(self, entry: Path, error: str) -> None:
        attempts = self._waiting[entry].attempts + 1 if entry in self._waiting else 1
        delay = min(self._retry_max, self._retry_initial * 2 ** (attempts - 1))
        self._waiting[entry] = Backoff(time.monotonic() + delay, attempts)
        log.debug("event=ship_retry entry=%s attempts=%d delay=%.1f", entry.name, attempts, delay)

    def _alarm(self, store: StateStore, error: str) -> None:
        """One log line and one status alarm per interval, not one per message."""
        now = time.monotonic()
        if now - self._last_alarm < ALARM_INTERVAL_SECONDS:
            return
        self._last_alarm = now
        log.warning("event=ship_error waiting=%d error=%r action=check_the_standby",
                    len(self._waiting), error)
        with contextlib.suppress(StateStoreError):  # the log line above stands for it
            record_alarm(store, "ship_error", error)
