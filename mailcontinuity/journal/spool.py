"""The local spool: journal copies in append-only segment files, made durable by group commit.

The milter answers Postfix only once the message's journal copy is on disk (a crash must lose
nothing Postfix accepted). One file per message paid for that with a create, a rename, an fsync
and an unlink per message, about half a millisecond of kernel CPU each on ext4 and the main cost
of the milter after pymilter itself (docs/benchmarks.md). Here messages are appended as records
to a shared segment file, and messages that reach end of message together share one
``fdatasync`` (group commit, as databases and Postfix's own queue designs amortise durability):
the first waiting thread syncs everything appended so far while the others wait for it; what is
appended meanwhile goes into the next group. A new segment's name is made durable by an fsync of
its directory before any record in it is acknowledged.

Layout under ``milter.spool_dir``::

    log/<name>.seg    records, append-only; a new segment every 16 MiB or 60 s, and a new one
                      for every process (a segment is never appended to after a restart)
    log/<name>.done   offsets of the segment's records the shipper has finished: a hint that
                      spares a restart work, never fsync'd (the journal index is the truth)
    tmp/              messages too big to keep in memory, streamed to disk until committed;
                      each becomes a segment of its own
    bad/              segments with a damaged record, set aside for an operator

A record is a header (magic, CRC-32, acceptance time, envelope length, message length), the
message, then the envelope (id, recipients' folders, sizes) as JSON: self-describing, so the hot
path never waits for the state database and a restarted milter finds everything still to ship.

What a failure does: if an append or a sync fails, every record not yet durable is reported
failed to its message (the milter applies ``milter.on_spool_error``), the segment is cut back to
what was durable, and the next message starts a new segment: a record is either durable and
acknowledged, or reported failed. If the milter process dies between a group's write and its
sync, Postfix never got our answer for those messages (``milter_default_action`` applies: accept
in the settings we print); the kernel still holds the complete records, and the shipper ships
them after the restart, so those messages keep their journal copy. After a power loss a record
cut short fails its length or checksum and is ignored: it was never acknowledged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

MAGIC = b"MCJ1"
# magic, CRC-32 of everything after the header, acceptance time, envelope length, message length
HEADER = struct.Struct("<4sIdIQ")
_LENGTHS = struct.Struct("<dIQ")
_OFFSET = struct.Struct("<Q")
SEGMENT_SUFFIX = ".seg"
DONE_SUFFIX = ".done"
SEGMENT_BYTES = 16 << 20
SEGMENT_SECONDS = 60.0
# A message larger than this streams to its own file instead of staying in memory: with
# Postfix's default 100 smtpd processes that bounds the milter's buffers to about 25 MiB.
SPILL_BYTES = 256 << 10
WRITE_BUFFER = 256 << 10
READ_CHUNK = 1 << 20
# The format before segments (journal/legacy_spool.py imports it at start): spool_usage counts
# what waits there, so status never shows an unimported backlog as an empty spool.
LEGACY_DIR = "new"
LEGACY_SUFFIX = ".msg"


_ENCODER = json.JSONEncoder(separators=(",", ":"))


class SpoolError(Exception):
    """A spool segment cannot be read; the message names the file."""


@dataclass(frozen=True)
class Target:
    """One journal copy: a mailbox (address) and the folder it goes into."""

    address: str
    folder: str


@dataclass
class Envelope:
    """What the shipper needs besides the message bytes."""

    id: str
    received: float
    sender: str
    queue_id: str
    targets: list[Target]
    size: int = 0
    virtual_size: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        # Field by field, not dataclasses.asdict: its deep copy cost ~80 us a message, a third
        # of the milter's own Python work per message (bench/milter_profile.py).
        return _ENCODER.encode({
            "id": self.id, "received": self.received, "sender": self.sender,
            "queue_id": self.queue_id,
            "targets": [[t.address, t.folder] for t in self.targets],
            "size": self.size, "virtual_size": self.virtual_size, "extra": self.extra,
        }).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        data = json.loads(raw)
        data["targets"] = [Target(address, folder) for address, folder in data["targets"]]
        return cls(**data)


@dataclass(frozen=True)
class Record:
    """A durable journal record: its segment, where it starts, and its envelope."""

    segment: Path
    offset: int
    envelope: Envelope

    @property
    def message_offset(self) -> int:
        """Where the message bytes (``envelope.size`` of them) start in the segment."""
        return self.offset + HEADER.size


# The shipper's side of the spool: records made durable (in order), then segments that will get
# no more records, with how many they hold.
Committed = Callable[[list[Record], list[tuple[Path, int]]], None]


def new_message_id(now: float) -> str:
    """Sortable by acceptance time, unique across gateways (48 random bits per microsecond)."""
    return f"{int(now * 1_000_000):x}-{secrets.token_hex(6)}"


def segment_name(now: float) -> str:
    """Sortable by creation time, unique across processes."""
    return f"{int(now * 1_000_000):016x}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"


def checksum(message_crc: int, encoded: bytes, received: float, message_length: int) -> int:
    """A record's CRC-32: the message's (``message_crc``), then the envelope and the lengths."""
    crc = zlib.crc32(encoded, message_crc)
    return zlib.crc32(_LENGTHS.pack(received, len(encoded), message_length), crc)


class SpoolWriter:
    """One message on its way into the spool; ``write`` buffers, ``commit`` makes it durable."""

    def __init__(self, spool: Spool, message_id: str) -> None:
        self._spool = spool
        self.id = message_id
        self._parts: list[bytes] = []
        self._file: BinaryIO | None = None
        self._crc = 0
        self.temporary: Path | None = None
        self.size = 0
        self.bare_lf = 0
        self._ends_with_cr = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._file is None and self.size + len(data) > SPILL_BYTES:
            self._spill()
        if self._file is not None:
            self._count_bare_lf(data)
            self._file.write(data)
            self._crc = zlib.crc32(data, self._crc)
        else:
            self._parts.append(data)  # counted once, whole, at commit
        self.size += len(data)

    def _count_bare_lf(self, data: bytes) -> None:
        """Dovecot's W= is the size with CRLF line ends: count LFs that lack their CR, across
        chunk boundaries."""
        self.bare_lf += data.count(b"\n") - data.count(b"\r\n")
        if self._ends_with_cr and data[0] == 0x0A:
            self.bare_lf -= 1
        self._ends_with_cr = data[-1] == 0x0D

    def _spill(self) -> None:
        """Move what is buffered into a file of its own, a segment-to-be (header last)."""
        self.temporary = self._spool.tmp_dir / f"{self.id}{SEGMENT_SUFFIX}"
        self._file = open(self.temporary, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115
        self._file.write(bytes(HEADER.size))
        for part in self._parts:
            self._count_bare_lf(part)
            self._file.write(part)
            self._crc = zlib.crc32(part, self._crc)
        self._parts = []

    def commit(self, envelope: Envelope) -> Record:
        """Write the record and return once it is durable (raises OSError if it is not)."""
        message = b""
        if self._file is None:
            message = b"".join(self._parts)
            self._parts = []
            self.bare_lf = message.count(b"\n") - message.count(b"\r\n")
        envelope.size = self.size
        envelope.virtual_size = self.size + self.bare_lf
        encoded = envelope.encode()
        if self._file is None:
            header = HEADER.pack(MAGIC, checksum(zlib.crc32(message), encoded,
                                                  envelope.received, len(message)),
                                 envelope.received, len(encoded), len(message))
            return self._spool.log.append([header, message, encoded], envelope)
        header = HEADER.pack(MAGIC, checksum(self._crc, encoded, envelope.received, self.size),
                             envelope.received, len(encoded), self.size)
        assert self.temporary is not None
        self._file.write(encoded)
        self._file.flush()
        os.pwrite(self._file.fileno(), header, 0)
        os.fdatasync(self._file.fileno())
        self._file.close()
        self._file = None
        final = self._spool.log_dir / segment_name(time.time())
        os.rename(self.temporary, final)
        self.temporary = None
        try:
            return self._spool.log.adopt(final, envelope)
        except OSError:
            final.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        """Drop a message that will not be accepted (client gone, message rejected)."""
        self._parts = []
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self.temporary is not None:
            self.temporary.unlink(missing_ok=True)
            self.temporary = None


@dataclass
class _Segment:
    """The segment being appended to, or one rotated away with records not yet durable."""

    path: Path
    fd: int
    created: float
    size: int = 0
    durable: int = 0
    records: int = 0
    closed: bool = False
    syncing: bool = False
    finished: bool = False


@dataclass
class _Pending:
    """A record appended and waiting for its group's sync."""

    record: Record
    segment: _Segment | None  # None: a segment of its own, already synced (a large message)
    done: bool = False
    error: OSError | None = None


class SegmentLog:
    """Appends records to the current segment and makes them durable in groups.

    One lock guards the segments; appends happen under it (a ``pwritev`` into the page cache),
    syncs happen outside it, by whichever waiting thread finds no sync in flight.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._dir_fd: int | None = None
        self._lock = threading.Lock()
        self._synced = threading.Condition(self._lock)
        self._current: _Segment | None = None
        self._unsynced: list[_Segment] = []
        self._pending: list[_Pending] = []
        self._closed: list[tuple[Path, int]] = []
        self._syncing = False
        self._directory_dirty = False
        self._committed: Committed = lambda records, closed: None
        self.groups = 0

    def listen(self, committed: Committed) -> list[Path]:
        """Who hears about durable records and finished segments (the shipper); returns the
        segments already on disk, oldest first, for the listener to recover.

        Called before the milter appends (the daemon starts the shipper first). A segment
        appended to before this call is rotated away, so every returned segment is closed for
        good and the listener may delete it once it is shipped."""
        with self._synced:
            while self._syncing:
                self._synced.wait()
            if self._current is not None:
                self._rotate()
            self._closed = []  # the listener finds these on disk
            self._committed = committed
            return sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"))

    def append(self, buffers: list[bytes], envelope: Envelope) -> Record:
        length = sum(len(b) for b in buffers)
        with self._synced:
            segment = self._writable(length)
            offset = segment.size
            try:
                written = os.pwritev(segment.fd, buffers, offset)
                if written != length:
                    raise OSError(errno.ENOSPC, f"short write to {segment.path}"
                                                f" ({written} of {length} bytes)")
            except OSError:
                self._cut(segment, offset)
                raise
            segment.size += length
            segment.records += 1
            if segment not in self._unsynced:
                self._unsynced.append(segment)
            pending = _Pending(Record(segment.path, offset, envelope), segment)
            self._pending.append(pending)
            self._wait(pending)
        return pending.record

    def adopt(self, path: Path, envelope: Envelope) -> Record:
        """A large message's own segment, already synced: durable once its name is."""
        with self._synced:
            pending = _Pending(Record(path, 0, envelope), None)
            self._pending.append(pending)
            self._directory_dirty = True
            self._wait(pending)
        return pending.record

    def close(self) -> None:
        """Stop appending (the process is stopping); the shipper finishes the segment."""
        with self._synced:
            while self._syncing:
                self._synced.wait()
            if self._current is not None:
                self._rotate()
            self._notify([])  # the shipper may delete it once shipped
            if self._dir_fd is not None:
                os.close(self._dir_fd)
                self._dir_fd = None

    # --- with the lock held ------------------------------------------------------------
    def _writable(self, length: int) -> _Segment:
        segment = self._current
        if segment is not None and segment.size > 0 and (
                segment.size + length > SEGMENT_BYTES
                or time.monotonic() - segment.created > SEGMENT_SECONDS):
            self._rotate()
            segment = None
        if segment is None:
            if self._dir_fd is None:
                self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            path = self.directory / segment_name(time.time())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            segment = self._current = _Segment(path, fd, time.monotonic())
            self._directory_dirty = True
        return segment

    def _rotate(self) -> None:
        """No more appends to the current segment; it is closed for good once durable."""
        segment = self._current
        assert segment is not None
        self._current = None
        segment.closed = True
        self._finish_if_idle(segment)

    def _finish_if_idle(self, segment: _Segment) -> None:
        """Close a rotated segment once no record in it waits for a sync."""
        if (segment.closed and not segment.finished and not segment.syncing
                and segment not in self._unsynced):
            segment.finished = True
            os.close(segment.fd)
            self._closed.append((segment.path, segment.records))

    def _cut(self, segment: _Segment, length: int) -> None:
        """Drop what follows ``length`` (never acknowledged) and append no more to it."""
        try:
            os.ftruncate(segment.fd, length)
        except OSError as exc:
            log.error("event=spool_truncate_failed segment=%s error=%r", segment.path, str(exc))
        segment.size = length
        if segment is self._current:
            self._rotate()

    def _wait(self, pending: _Pending) -> None:
        while not pending.done:
            if self._syncing:
                self._synced.wait()
            else:
                self._sync_group()
        if pending.error is not None:
            raise pending.error

    def _sync_group(self) -> None:
        """Make everything appended so far durable, the lock released meanwhile."""
        self._syncing = True
        group, self._pending = self._pending, []
        targets = [(segment, segment.size) for segment in self._unsynced]
        self._unsynced = []
        for segment, _ in targets:
            segment.syncing = True
        sync_directory, self._directory_dirty = self._directory_dirty, False
        error: OSError | None = None
        self._lock.release()
        try:
            for segment, _ in targets:
                os.fdatasync(segment.fd)
            if sync_directory and self._dir_fd is not None:
                os.fsync(self._dir_fd)
        except OSError as exc:
            error = exc
        finally:
            self._lock.acquire()
        for segment, _ in targets:
            segment.syncing = False
        self.groups += 1
        if error is None:
            self._durable(group, targets)
        else:
            self._failed(group, targets, error)
        self._syncing = False
        self._synced.notify_all()

    def _durable(self, group: list[_Pending], targets: list[tuple[_Segment, int]]) -> None:
        for segment, size in targets:
            segment.durable = max(segment.durable, size)
            self._finish_if_idle(segment)
        for pending in group:
            pending.done = True
            if pending.segment is None:
                self._closed.append((pending.record.segment, 1))
        self._notify([p.record for p in group])

    def _failed(self, group: list[_Pending], targets: list[tuple[_Segment, int]],
                error: OSError) -> None:
        """Nothing after the last durable byte is trusted: fail it all, start a new segment."""
        failed = group + self._pending
        self._pending = []
        log.error("event=spool_sync_failed error=%r records=%d", str(error), len(failed))
        for pending in failed:
            pending.done = True
            pending.error = error
            if pending.segment is not None:
                pending.segment.records -= 1
            else:
                pending.record.segment.unlink(missing_ok=True)
        segments = {id(s): s for s in [s for s, _ in targets] + self._unsynced}.values()
        self._unsynced = []
        for segment in segments:
            self._cut(segment, segment.durable)
            self._finish_if_idle(segment)
        self._directory_dirty = True
        self._notify([])

    def _notify(self, records: list[Record]) -> None:
        closed, self._closed = self._closed, []
        if not records and not closed:
            return
        try:
            self._committed(records, closed)
        except Exception:  # the records are durable: a restart ships them
            log.exception("event=spool_notify_failed records=%d", len(records))


class Spool:
    """The spool directory: ``log/`` segments, ``tmp/`` for large messages in flight."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tmp_dir = directory / "tmp"
        self.log_dir = directory / "log"
        for path in (directory, self.tmp_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log = SegmentLog(self.log_dir)

    def open_message(self, message_id: str) -> SpoolWriter:
        return SpoolWriter(self, message_id)

    def clear_in_flight(self) -> int:
        """Remove large messages a killed process left half-written (never answered, so never
        accepted with our id); returns how many."""
        removed = 0
        for path in self.tmp_dir.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def segments(self) -> list[Path]:
        """Segments on disk, oldest first."""
        return sorted(self.log_dir.glob(f"*{SEGMENT_SUFFIX}"))

    def records(self) -> list[Record]:
        """Every intact record not yet finished by the shipper, oldest first (for tests and
        tools; the shipper reads segment by segment)."""
        found: list[Record] = []
        for segment in self.segments():
            done = read_done(segment)
            found += [r for r in scan_segment(segment).records if r.offset not in done]
        return found

    def mark_done(self, segment: Path, offsets: list[int]) -> None:
        """Note records the shipper finished (recorded in the journal index)."""
        with open(done_path(segment), "ab") as handle:
            handle.write(b"".join(_OFFSET.pack(offset) for offset in offsets))

    def remove(self, segment: Path) -> None:
        segment.unlink(missing_ok=True)
        done_path(segment).unlink(missing_ok=True)

    def quarantine(self, segment: Path) -> Path:
        """Set a damaged segment aside in ``bad/`` for an operator, never delete it."""
        bad = self.directory / "bad"
        bad.mkdir(exist_ok=True, mode=0o700)
        target = bad / segment.name
        os.rename(segment, target)
        done_path(segment).unlink(missing_ok=True)
        return target


def done_path(segment: Path) -> Path:
    return segment.with_suffix(DONE_SUFFIX)


def read_done(segment: Path) -> set[int]:
    """Offsets of the segment's records the shipper finished."""
    try:
        raw = done_path(segment).read_bytes()
    except FileNotFoundError:
        return set()
    usable = len(raw) - len(raw) % _OFFSET.size  # a torn last entry is ignored
    return {offset for (offset,) in _OFFSET.iter_unpack(raw[:usable])}


@dataclass
class SegmentScan:
    """A segment read back: its intact records, and what was damaged between them.

    A bad stretch with no intact record after it is a torn tail (a write cut short by a crash,
    never acknowledged) and is not damage; a bad stretch followed by an intact record is.
    """

    records: list[Record]
    damaged: list[str] = field(default_factory=list)


def _headers(handle: BinaryIO, size: int) -> Iterator[tuple[int, int, float, int, int]]:
    """(offset, crc, received, envelope length, message length) of each complete-looking
    record; stops at the first header that is cut short or not a record header."""
    offset = 0
    while offset + HEADER.size <= size:
        handle.seek(offset)
        magic, crc, received, envelope_length, message_length = HEADER.unpack(
            handle.read(HEADER.size))
        end = offset + HEADER.size + message_length + envelope_length
        if magic != MAGIC or end > size:
            return
        yield offset, crc, received, envelope_length, message_length
        offset = end


def _read_record(handle: BinaryIO, segment: Path, offset: int,
                 size: int) -> tuple[Record | None, int, str]:
    """The record at ``offset`` and where it ends, or None and why not."""
    if offset + HEADER.size > size:
        return None, offset, "cut short"
    handle.seek(offset)
    magic, crc, received, envelope_length, message_length = HEADER.unpack(
        handle.read(HEADER.size))
    end = offset + HEADER.size + message_length + envelope_length
    if magic != MAGIC:
        return None, offset, "not a record"
    if end > size:
        return None, offset, "cut short"
    message_crc = 0
    remaining = message_length
    while remaining:
        chunk = handle.read(min(READ_CHUNK, remaining))
        if not chunk:  # the file shrank while we read it
            return None, offset, "cut short"
        message_crc = zlib.crc32(chunk, message_crc)
        remaining -= len(chunk)
    encoded = handle.read(envelope_length)
    if crc != checksum(message_crc, encoded, received, message_length):
        return None, offset, "checksum mismatch"
    try:
        envelope = Envelope.decode(encoded)
    except (ValueError, TypeError, KeyError) as exc:
        return None, offset, f"envelope unreadable: {exc}"
    return Record(segment, offset, envelope), end, ""


def read_envelope(fd: int, offset: int) -> Envelope:
    """The envelope of the record at ``offset`` (checked when it was first read)."""
    try:
        magic, _, _, envelope_length, message_length = HEADER.unpack(
            os.pread(fd, HEADER.size, offset))
        if magic != MAGIC:
            raise ValueError(f"no record at offset {offset}")
        return Envelope.decode(os.pread(fd, envelope_length,
                                        offset + HEADER.size + message_length))
    except (OSError, ValueError, TypeError, KeyError, struct.error) as exc:
        raise SpoolError(f"spool record at offset {offset}: unreadable envelope: {exc}") from None


def _next_magic(handle: BinaryIO, start: int, size: int) -> int | None:
    """The offset of the next record magic at or after ``start``."""
    position = start
    while position < size:
        handle.seek(position)
        chunk = handle.read(READ_CHUNK + len(MAGIC) - 1)
        found = chunk.find(MAGIC)
        if found >= 0:
            return position + found
        position += READ_CHUNK
    return None


def scan_segment(segment: Path) -> SegmentScan:
    """Read every intact record of a segment (checksums checked), resynchronising after a bad
    stretch on the next record that checks out."""
    scan = SegmentScan([])
    try:
        with open(segment, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            offset = 0
            bad: str | None = None
            while offset < size:
                record, end, problem = _read_record(handle, segment, offset, size)
                if record is not None:
                    if bad is not None:
                        scan.damaged.append(bad)
                        bad = None
                    scan.records.append(record)
                    offset = end
                    continue
                bad = bad or f"offset {offset}: {problem}"
                following = _next_magic(handle, offset + 1, size)
                if following is None:
                    break
                offset = following
    except OSError as exc:
        raise SpoolError(f"spool segment {segment}: unreadable: {exc}") from None
    return scan


@dataclass(frozen=True)
class SpoolUsage:
    """What waits in the spool: entries, their bytes, seconds since the oldest was accepted."""

    entries: int
    bytes: int
    lag_seconds: float


def spool_usage(directory: Path, now: float | None = None) -> SpoolUsage:
    """The spool's backlog, read from disk (record headers and the shipper's done marks, and
    old-format entries not imported yet); readable by any process."""
    oldest: float | None = None
    count = size = 0
    segments = sorted((directory / "log").glob(f"*{SEGMENT_SUFFIX}"))
    for segment in segments:
        done = read_done(segment)
        try:
            with open(segment, "rb") as handle:
                length = os.fstat(handle.fileno()).st_size
                for offset, _, received, _, message_length in _headers(handle, length):
                    if offset in done:
                        continue
                    count += 1
                    size += message_length
                    oldest = received if oldest is None else min(oldest, received)
        except FileNotFoundError:  # shipped and removed while we looked
            continue
    with contextlib.suppress(FileNotFoundError), os.scandir(directory / LEGACY_DIR) as scan:
        for entry in scan:
            if not entry.name.endswith(LEGACY_SUFFIX):
                continue
            try:
                info = entry.stat()
            except FileNotFoundError:  # imported while we looked
                continue
            count += 1
            size += info.st_size
            oldest = info.st_mtime if oldest is None else min(oldest, info.st_mtime)
    lag = 0.0 if oldest is None else max(0.0, (now or time.time()) - oldest)
    return SpoolUsage(count, size, lag)


def iter_chunks(fd: int, offset: int, length: int, size: int = 1 << 20) -> Iterator[bytes]:
    """Read ``length`` bytes of a file descriptor from ``offset`` in bounded chunks."""
    end = offset + length
    while offset < end:
        chunk = os.pread(fd, min(size, end - offset), offset)
        if not chunk:
            return
        offset += len(chunk)
        yield chunk
