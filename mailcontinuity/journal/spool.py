"""The local spool: a journal copy is on disk, fsync'd, before the milter lets Postfix accept.

One file per accepted message under ``spool_dir/new``. The message streams into ``spool_dir/tmp``
chunk by chunk as Postfix hands it over (memory stays bounded whatever the size); at end of
message the envelope (id, recipients' folders, sizes) is appended as a trailer, the file is
fsync'd and renamed into ``new/``. The entry is self-describing, so the hot path never waits for
the state database and a restarted milter finds everything it still has to ship.

Commit is one fsync, after the rename into ``new/``: on a journaling filesystem (ext4, XFS,
btrfs) it makes the data, the size and the new name durable together, the assumption Postfix
makes for its own queue files (which it never fsyncs the directory for either). An earlier
version added a group-committed directory fsync: it took 40% of end-of-message time under load
(docs/benchmarks.md). A crash between the rename and the fsync can leave a torn entry in
``new/``; the message was never accepted, and the shipper sets such an entry aside in ``bad/``.
Many sessions reach end of message at once: their fsyncs overlap (the GIL is released) and the
filesystem journal commits them together.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

TRAILER_MAGIC = b"MCSPOOL1 "
FOOTER_LENGTH = len(TRAILER_MAGIC) + 10 + 1
WRITE_BUFFER = 256 * 1024
SUFFIX = ".msg"


class SpoolError(Exception):
    """A spool entry cannot be written or read; the message names the file."""


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
        data = asdict(self)
        data["targets"] = [[t.address, t.folder] for t in self.targets]
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        data = json.loads(raw)
        data["targets"] = [Target(address, folder) for address, folder in data["targets"]]
        return cls(**data)


def new_message_id(now: float) -> str:
    """Sortable by acceptance time, unique across gateways (48 random bits per microsecond)."""
    return f"{int(now * 1_000_000):x}-{secrets.token_hex(6)}"


class SpoolWriter:
    """One message on its way into the spool; ``write`` streams, ``commit`` makes it durable."""

    def __init__(self, spool: Spool, message_id: str) -> None:
        self._spool = spool
        self.id = message_id
        self.temporary = spool.tmp_dir / f"{message_id}{SUFFIX}"
        self._file = open(self.temporary, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115
        self.size = 0
        self.bare_lf = 0
        self._ends_with_cr = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._file.write(data)
        self.size += len(data)
        # Dovecot's W= is the size with CRLF line ends: count LFs that lack their CR.
        self.bare_lf += data.count(b"\n") - data.count(b"\r\n")
        if self._ends_with_cr and data[0] == 0x0A:
            self.bare_lf -= 1
        self._ends_with_cr = data[-1] == 0x0D

    def commit(self, envelope: Envelope) -> Path:
        """Append the envelope, rename into ``new/``, fsync; the entry survives a crash after."""
        envelope.size = self.size
        envelope.virtual_size = self.size + self.bare_lf
        trailer = envelope.encode()
        self._file.write(trailer + TRAILER_MAGIC + b"%010d\n" % len(trailer))
        self._file.flush()
        final = self._spool.new_dir / self.temporary.name
        os.rename(self.temporary, final)
        try:
            # fsync, not fdatasync: the rename changed the inode, so this commits the new name.
            os.fsync(self._file.fileno())
        except OSError:
            os.rename(final, self.temporary)  # not durable: not committed (discard removes it)
            raise
        self._file.close()
        return final

    def discard(self) -> None:
        """Drop a message that will not be accepted (client gone, message rejected)."""
        with contextlib.suppress(OSError):
            self._file.close()
        self.temporary.unlink(missing_ok=True)


class Spool:
    """The spool directory: ``tmp/`` for messages in flight, ``new/`` for committed entries."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tmp_dir = directory / "tmp"
        self.new_dir = directory / "new"
        for path in (self.tmp_dir, self.new_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def open_message(self, message_id: str) -> SpoolWriter:
        return SpoolWriter(self, message_id)

    def clear_in_flight(self) -> int:
        """Remove half-written messages a killed process left (never answered, so never
        accepted with our id); returns how many."""
        removed = 0
        for path in self.tmp_dir.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def entries(self) -> list[Path]:
        """Committed entries, oldest first (ids sort by acceptance time)."""
        return sorted(self.new_dir.glob(f"*{SUFFIX}"))

    @staticmethod
    def read_envelope(path: Path) -> Envelope:
        try:
            with open(path, "rb") as handle:
                handle.seek(-FOOTER_LENGTH, os.SEEK_END)
                footer = handle.read(FOOTER_LENGTH)
                if not footer.startswith(TRAILER_MAGIC):
                    raise SpoolError(f"spool entry {path}: no envelope trailer")
                length = int(footer[len(TRAILER_MAGIC):-1])
                handle.seek(-(FOOTER_LENGTH + length), os.SEEK_END)
                return Envelope.decode(handle.read(length))
        except (OSError, ValueError, TypeError) as exc:
            raise SpoolError(f"spool entry {path}: unreadable envelope: {exc}") from None

    @staticmethod
    def remove(path: Path) -> None:
        path.unlink(missing_ok=True)

    def quarantine(self, path: Path) -> None:
        """Set an unreadable entry aside in ``bad/`` for an operator, never delete it."""
        bad = self.directory / "bad"
        bad.mkdir(exist_ok=True, mode=0o700)
        os.rename(path, bad / path.name)


@dataclass(frozen=True)
class SpoolUsage:
    """What waits in the spool: entries, their bytes, seconds since the oldest was accepted."""

    entries: int
    bytes: int
    lag_seconds: float


def spool_usage(directory: Path, now: float | None = None) -> SpoolUsage:
    """The spool's backlog, read from disk; readable by any process."""
    new_dir = directory / "new"
    oldest: float | None = None
    count = size = 0
    try:
        with os.scandir(new_dir) as scan:
            for entry in scan:
                if not entry.name.endswith(SUFFIX):
                    continue
                try:
                    info = entry.stat()
                except FileNotFoundError:  # shipped while we looked
                    continue
                count += 1
                size += info.st_size
                oldest = info.st_mtime if oldest is None else min(oldest, info.st_mtime)
    except FileNotFoundError:
        return SpoolUsage(0, 0, 0.0)
    lag = 0.0 if oldest is None else max(0.0, (now or time.time()) - oldest)
    return SpoolUsage(count, size, lag)


def iter_chunks(fd: int, length: int, size: int = 1 << 20) -> Iterator[bytes]:
    """Read the first ``length`` bytes of a file descriptor in bounded chunks."""
    offset = 0
    while offset < length:
        chunk = os.pread(fd, min(size, length - offset), offset)
        if not chunk:
            return
        offset += len(chunk)
        yield chunk
