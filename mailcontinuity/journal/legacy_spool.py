"""The spool format before segments (one file per message under ``new/``), imported at start.

Versions up to issue 17 wrote each accepted message to ``spool_dir/new/<id>.msg``: the message,
its envelope as JSON, then a footer (``MCSPOOL1 `` and the envelope's length in ten digits).
Entries left there by an upgrade are messages Postfix was told were journaled, so they must be
shipped, never ignored. The milter imports them before it accepts anything: each entry becomes
a segment of its own in ``log/`` (named from the entry, so an import cut short by a crash and
done again never holds a message twice), made durable before the old file is removed. An entry
without a readable envelope (a crash of the old version between its rename and its fsync, never
acknowledged) goes to ``bad/`` beside the damaged segments, for an operator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from mailcontinuity.journal.spool import (
    HEADER,
    LEGACY_DIR,
    LEGACY_SUFFIX,
    MAGIC,
    READ_CHUNK,
    SEGMENT_SUFFIX,
    Envelope,
    Spool,
    SpoolError,
    checksum,
    scan_segment,
)
from mailcontinuity.mail.maildir import sync_file_system

log = logging.getLogger(__name__)

LEGACY_TRAILER = b"MCSPOOL1 "
LEGACY_FOOTER_LENGTH = len(LEGACY_TRAILER) + 10 + 1
IMPORT_BATCH = 256


@dataclass(frozen=True)
class LegacyImport:
    """What an import did: entries now in segments, and entries set aside in ``bad/``."""

    imported: int = 0
    set_aside: int = 0


def read_legacy_envelope(path: Path) -> Envelope:
    """The envelope trailer of an old-format entry; SpoolError names the file if unreadable."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-LEGACY_FOOTER_LENGTH, os.SEEK_END)
            footer = handle.read(LEGACY_FOOTER_LENGTH)
            if not footer.startswith(LEGACY_TRAILER):
                raise SpoolError(f"spool entry {path}: no envelope trailer")
            length = int(footer[len(LEGACY_TRAILER):-1])
            handle.seek(-(LEGACY_FOOTER_LENGTH + length), os.SEEK_END)
            envelope = Envelope.decode(handle.read(length))
            end = handle.seek(0, os.SEEK_END)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise SpoolError(f"spool entry {path}: unreadable envelope: {exc}") from None
    if envelope.size != end - LEGACY_FOOTER_LENGTH - length:
        raise SpoolError(f"spool entry {path}: the envelope says {envelope.size} bytes, the file"
                         f" holds {end - LEGACY_FOOTER_LENGTH - length}")
    return envelope


def legacy_segment_name(entry: Path, envelope: Envelope) -> str:
    """Sorts with the segments by acceptance time; the same name every time for one entry."""
    return f"{int(envelope.received * 1_000_000):016x}-legacy-{entry.stem}{SEGMENT_SUFFIX}"


def _write_segment(entry: Path, envelope: Envelope, target: Path) -> None:
    """One record (header, message, envelope) holding the entry's message (not synced: the
    import syncs a batch at once)."""
    encoded = envelope.encode()
    crc = 0
    with open(entry, "rb") as source, open(target, "wb") as output:
        output.write(bytes(HEADER.size))
        remaining = envelope.size
        while remaining:
            chunk = source.read(min(READ_CHUNK, remaining))
            if not chunk:
                raise SpoolError(f"spool entry {entry}: ended {remaining} bytes early")
            output.write(chunk)
            crc = zlib.crc32(chunk, crc)
            remaining -= len(chunk)
        output.write(encoded)
        output.seek(0)
        output.write(HEADER.pack(MAGIC, checksum(crc, encoded, envelope.received, envelope.size),
                                 envelope.received, len(encoded), envelope.size))


def _already_imported(segment: Path, envelope: Envelope) -> bool:
    """A segment of that name holds the entry intact (an import cut short after the rename)."""
    if not segment.exists():
        return False
    try:
        records = scan_segment(segment).records
    except SpoolError:
        return False
    return [r.envelope.id for r in records] == [envelope.id]


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def import_legacy(spool: Spool) -> LegacyImport:
    """Move every old-format entry into a segment of its own; returns what it did.

    Runs before the shipper lists the segments (the daemon calls it at start). Entries go in
    batches: written to ``tmp/``, one ``syncfs`` for the batch, renamed into ``log/``, one fsync
    of ``log/``, and only then the old files removed. An error (disk full, permissions) stops
    the start with a SpoolError naming the file and the way out: the milter must not accept
    mail with a backlog it cannot ship.
    """
    legacy = spool.directory / LEGACY_DIR
    if not legacy.is_dir():
        return LegacyImport()
    entries = sorted(legacy.glob(f"*{LEGACY_SUFFIX}"))
    imported = set_aside = 0
    for first in range(0, len(entries), IMPORT_BATCH):
        batch: list[tuple[Path, Path, Path]] = []  # entry, temporary, final
        done: list[Path] = []
        try:
            for entry in entries[first:first + IMPORT_BATCH]:
                try:
                    envelope = read_legacy_envelope(entry)
                except SpoolError as exc:
                    _set_aside(spool, entry, exc)
                    set_aside += 1
                    continue
                final = spool.log_dir / legacy_segment_name(entry, envelope)
                if _already_imported(final, envelope):
                    done.append(entry)
                    continue
                temporary = spool.tmp_dir / final.name
                batch.append((entry, temporary, final))
                _write_segment(entry, envelope, temporary)
            if batch:
                sync_file_system(spool.tmp_dir)
                for entry, temporary, final in batch:
                    os.rename(temporary, final)
                    done.append(entry)
                _sync_directory(spool.log_dir)
        except (OSError, SpoolError) as exc:
            for _, temporary, _ in batch:
                temporary.unlink(missing_ok=True)
            raise SpoolError(
                f"cannot import the old-format spool entries of {legacy} into {spool.log_dir}:"
                f" {exc}; free space there and start again, or drain {legacy} with the"
                " previous version first") from None
        for entry in done:
            entry.unlink()
        imported += len(done)
    with contextlib.suppress(OSError):  # not empty: something an operator put there stays
        legacy.rmdir()
    if imported or set_aside:
        log.warning("event=spool_legacy_imported entries=%d set_aside=%d spool=%s",
                    imported, set_aside, spool.directory)
    return LegacyImport(imported, set_aside)


def _set_aside(spool: Spool, entry: Path, error: SpoolError) -> None:
    moved = spool.directory / "bad" / entry.name
    moved.parent.mkdir(exist_ok=True, mode=0o700)
    os.rename(entry, moved)
    log.error("event=spool_legacy_entry_set_aside path=%s error=%r action=inspect_the_file",
              moved, str(error))
