"""Ships spool records to the standby in the background, in batches, with retry and backoff.

Runs as a thread of the milter process, so SMTP never waits for the standby: the spool hands
over each group of durable records, and the shipper works through them in batches gathered for
up to ``BATCH_WINDOW_SECONDS``, at a lower CPU priority than the SMTP path (its thread is
niced). A batch costs one sync of the standby's file system for all its copies (``Sink.flush``),
one transaction in the journal index and one append to the segments' done marks, instead of an
fsync, a transaction and an unlink per message.

For each record it stores every copy not yet settled, makes them durable, records the outcomes,
and only then marks the record done; a segment is deleted once it is closed and every record in
it is done. A crash anywhere in between leaves the record in the spool; on restart its copies
are looked up before being written again (ship once). If the index cannot be read or written
(a shared store that is down), the record stays in the spool with the copies it has stored
remembered, and only the index rows are retried: the copies are not shipped a second time.

Records waiting for a retry are kept as (due, segment, offset) in a heap and their envelopes are
read back when due: a standby down for a day costs a few dozen bytes per waiting message, and
finding the due ones costs O(log n), not a walk over all of them.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailcontinuity.journal.sinks import Sink, TemporaryFailure
from mailcontinuity.journal.spool import (
    Record,
    Spool,
    SpoolError,
    read_done,
    read_envelope,
    scan_segment,
)
from mailcontinuity.store.db import StateStore, StateStoreError
from mailcontinuity.store.journal import CopyRecord, record_alarm, record_copies, settled_copies

log = logging.getLogger(__name__)

BATCH_LIMIT = 256
BATCH_WINDOW_SECONDS = 0.2
IDLE_WAIT_SECONDS = 1.0
ALARM_INTERVAL_SECONDS = 60.0
# The shipper's thread yields the CPU to smtpd, cleanup and the milter's callbacks.
SHIPPER_NICE = 10

Notice = tuple[list[Record], list[tuple[Path, int]]]


@dataclass(order=True)
class Retry:
    """A record whose copies failed for now, due again at ``due`` (monotonic)."""

    due: float
    segment: Path = field(compare=True)
    offset: int = field(compare=True)
    attempts: int = field(compare=False, default=0)


@dataclass
class Shipment:
    """One record in a batch; ``seen``: shipped before (restart, retry), so copies may exist."""

    record: Record
    seen: bool
    attempts: int = 0


@dataclass
class SegmentProgress:
    """How far the shipper is with one segment."""

    fd: int | None = None
    expected: int | None = None  # how many records it holds, once no more will be added
    finished: int = 0
    damaged: list[str] = field(default_factory=list)


class Shipper(threading.Thread):
    """The background shipper; the spool's log calls ``committed`` after each group commit."""

    def __init__(self, spool: Spool, sink: Sink, open_store: Callable[[], StateStore],
                 retry_initial: float, retry_max: float) -> None:
        super().__init__(name="journal-shipper", daemon=True)
        self._spool = spool
        self._sink = sink
        self._open_store = open_store
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._incoming: queue.SimpleQueue[Notice | None] = queue.SimpleQueue()
        self._retries: list[Retry] = []
        self._segments: dict[Path, SegmentProgress] = {}
        self._unrecorded: dict[tuple[Path, int], list[CopyRecord]] = {}
        """Records whose copies are stored but whose index rows the store did not take."""
        self._stopping = threading.Event()
        self._last_alarm = 0.0
        # Every segment already on disk is closed for good (SegmentLog.listen).
        self._recovering = spool.log.listen(self.committed)

    def committed(self, records: list[Record], closed: list[tuple[Path, int]]) -> None:
        self._incoming.put((records, closed))

    def stop(self) -> None:
        self._stopping.set()
        self._incoming.put(None)

    def run(self) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHIPPER_NICE)
        store = self._open_store()
        try:
            self._recover(store)
            while not self._stopping.is_set():
                batch = self._next_batch()
                if batch:
                    try:
                        self._ship(store, batch)
                    except Exception:
                        log.exception("event=ship_batch_error entries=%d", len(batch))
                        for shipment in batch:
                            self._postpone(shipment, "internal error, see log")
        finally:
            for progress in self._segments.values():
                self._close_fd(progress)
            store.close()

    # --- what to ship ----------------------------------------------------------------
    def _recover(self, store: StateStore) -> None:
        """Segments a previous process left: every intact record not marked done is due."""
        waiting = 0
        for segment in self._recovering:
            try:
                scan = scan_segment(segment)
            except SpoolError as exc:
                log.error("event=spool_segment_unreadable error=%r action=inspect_the_file",
                          str(exc))
                continue
            done = read_done(segment)
            progress = self._progress(segment)
            progress.expected = len(scan.records)
            progress.damaged = scan.damaged
            if scan.damaged:
                detail = f"spool segment {segment}: {'; '.join(scan.damaged)}"
                log.error("event=spool_segment_damaged detail=%r action=inspect_bad_dir", detail)
                with contextlib.suppress(StateStoreError):  # the log line stands for it
                    record_alarm(store, "spool_error", detail)
            for record in scan.records:
                if record.offset in done:
                    progress.finished += 1
                else:
                    heapq.heappush(self._retries, Retry(0.0, segment, record.offset))
                    waiting += 1
            self._retire_if_complete(segment)
        self._recovering = []
        if waiting:
            log.info("event=spool_recovered entries=%d", waiting)

    def _next_batch(self) -> list[Shipment]:
        """New records for up to the batch window, then due retries; waits for the first."""
        now = time.monotonic()
        next_due = self._retries[0].due if self._retries else now + IDLE_WAIT_SECONDS
        batch: list[Shipment] = []
        try:
            item = self._incoming.get(timeout=max(0.0, min(next_due - now, IDLE_WAIT_SECONDS)))
            window_ends = time.monotonic() + BATCH_WINDOW_SECONDS
            while item is not None:
                records, closed = item
                for record in records:
                    self._progress(record.segment)
                    batch.append(Shipment(record, seen=False))
                for segment, count in closed:
                    self._progress(segment).expected = count
                    self._retire_if_complete(segment)
                remaining = window_ends - time.monotonic()
                if len(batch) >= BATCH_LIMIT or remaining <= 0:
                    break
                item = self._incoming.get(timeout=remaining)
        except queue.Empty:
            pass
        now = time.monotonic()
        while self._retries and self._retries[0].due <= now and len(batch) < BATCH_LIMIT:
            retry = heapq.heappop(self._retries)
            shipment = self._reread(retry)
            if shipment is not None:
                batch.append(shipment)
        return batch

    def _reread(self, retry: Retry) -> Shipment | None:
        try:
            envelope = read_envelope(self._fd(retry.segment), retry.offset)
        except (SpoolError, OSError) as exc:
            log.error("event=spool_record_unreadable segment=%s error=%r action=inspect_the_file",
                      retry.segment, str(exc))
            self._progress(retry.segment).damaged.append(f"offset {retry.offset}: {exc}")
            self._finished(retry.segment)  # counted, so the segment can be set aside
            return None
        return Shipment(Record(retry.segment, retry.offset, envelope), True, retry.attempts)

    # --- shipping ----------------------------------------------------------------------
    def _ship(self, store: StateStore, batch: list[Shipment]) -> None:
        records: dict[tuple[Path, int], list[CopyRecord]] = {}
        finished: list[Shipment] = []
        postponed: list[tuple[Shipment, str]] = []
        for shipment in batch:
            envelope = shipment.record.envelope
            where = (shipment.record.segment, shipment.record.offset)
            if where in self._unrecorded:  # shipped already: only its index rows are owed
                records[where] = self._unrecorded[where]
                finished.append(shipment)
                continue
            # Only a record seen before (restart, retry) can have settled copies to skip.
            try:
                settled = settled_copies(store, envelope.id) if shipment.seen else set()
            except StateStoreError as exc:  # which copies are stored is unknown: wait
                postponed.append((shipment, f"journal index not readable: {exc}"))
                continue
            pending = [t for t in envelope.targets if (t.address, t.folder) not in settled]
            error = ""
            try:
                results = (self._sink.ship(self._fd(shipment.record.segment),
                                           shipment.record.message_offset, envelope, pending,
                                           shipment.seen) if pending else {})
            except TemporaryFailure as exc:
                results = {target: exc for target in pending}
            done = records.setdefault(where, [])
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
                postponed.append((shipment, error))
            else:
                finished.append(shipment)
        try:
            self._sink.flush()  # the copies are durable before the index says they exist
        except TemporaryFailure as exc:
            for shipment in batch:
                self._postpone(shipment, str(exc))
            self._alarm(store, str(exc))
            return
        try:
            # The index first: then a crash cannot ship twice.
            record_copies(store, [record for rows in records.values() for record in rows])
        except StateStoreError as exc:
            for shipment in finished:
                where = (shipment.record.segment, shipment.record.offset)
                self._unrecorded[where] = records[where]
                self._postpone(shipment, f"journal index not written: {exc}")
            log.warning("event=journal_index_unwritten entries=%d error=%r action=retry",
                        len(finished), str(exc))
            finished = []
        for shipment in finished:
            self._unrecorded.pop((shipment.record.segment, shipment.record.offset), None)
        self._mark_done(finished)
        for shipment, error in postponed:
            self._postpone(shipment, error)
            self._alarm(store, error)
        if finished:
            log.debug("event=shipped entries=%d copies=%d", len(finished),
                      sum(len(records[(shipment.record.segment, shipment.record.offset)])
                          for shipment in finished))

    def _mark_done(self, finished: list[Shipment]) -> None:
        by_segment: dict[Path, list[int]] = {}
        for shipment in finished:
            by_segment.setdefault(shipment.record.segment, []).append(shipment.record.offset)
        for segment, offsets in by_segment.items():
            try:
                self._spool.mark_done(segment, offsets)
            except OSError as exc:  # a hint only: a restart looks the copies up instead
                log.warning("event=spool_done_mark_failed segment=%s error=%r", segment,
                            str(exc))
            for _ in offsets:
                self._finished(segment)

    # --- segments ---------------------------------------------------------------------
    def _progress(self, segment: Path) -> SegmentProgress:
        progress = self._segments.get(segment)
        if progress is None:
            progress = self._segments[segment] = SegmentProgress()
        return progress

    def _fd(self, segment: Path) -> int:
        progress = self._progress(segment)
        if progress.fd is None:
            progress.fd = os.open(segment, os.O_RDONLY | os.O_CLOEXEC)
        return progress.fd

    def _finished(self, segment: Path) -> None:
        self._progress(segment).finished += 1
        self._retire_if_complete(segment)

    def _retire_if_complete(self, segment: Path) -> None:
        """Delete a segment that will get no more records and has none left to ship; one with
        damage goes to ``bad/`` for an operator instead."""
        progress = self._segments.get(segment)
        if progress is None or progress.expected is None or progress.finished < progress.expected:
            return
        self._close_fd(progress)
        del self._segments[segment]
        try:
            if progress.damaged:
                moved = self._spool.quarantine(segment)
                log.error("event=spool_segment_set_aside path=%s action=inspect_the_file", moved)
            else:
                self._spool.remove(segment)
        except OSError as exc:
            log.error("event=spool_segment_remove_failed segment=%s error=%r", segment, str(exc))

    @staticmethod
    def _close_fd(progress: SegmentProgress) -> None:
        if progress.fd is not None:
            with contextlib.suppress(OSError):
                os.close(progress.fd)
            progress.fd = None

    # --- failures ----------------------------------------------------------------------
    def _postpone(self, shipment: Shipment, error: str) -> None:
        attempts = shipment.attempts + 1
        delay = min(self._retry_max, self._retry_initial * 2 ** (attempts - 1))
        heapq.heappush(self._retries, Retry(time.monotonic() + delay, shipment.record.segment,
                                            shipment.record.offset, attempts))
        log.debug("event=ship_retry id=%s attempts=%d delay=%.1f", shipment.record.envelope.id,
                  attempts, delay)

    def _alarm(self, store: StateStore, error: str) -> None:
        """One log line and one status alarm per interval, not one per message."""
        now = time.monotonic()
        if now - self._last_alarm < ALARM_INTERVAL_SECONDS:
            return
        self._last_alarm = now
        log.warning("event=ship_error waiting=%d error=%r action=check_the_standby",
                    len(self._retries), error)
        with contextlib.suppress(StateStoreError):  # the log line above stands for it
            record_alarm(store, "ship_error", error)
