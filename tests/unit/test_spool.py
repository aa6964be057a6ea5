"""The journal spool's segment log: records, group commit, failures, recovery scans."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from dataclasses import fields
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_mock import MockerFixture

from mailcontinuity.journal.legacy_spool import LEGACY_TRAILER, LegacyImport, import_legacy
from mailcontinuity.journal.spool import (
    HEADER,
    SPILL_BYTES,
    Envelope,
    Record,
    Spool,
    SpoolError,
    Target,
    new_message_id,
    scan_segment,
    spool_usage,
)


def commit(spool: Spool, body: bytes, chunks: int = 1) -> Record:
    message_id = new_message_id(time.time())
    writer = spool.open_message(message_id)
    step = max(1, len(body) // chunks)
    for start in range(0, len(body), step):
        writer.write(body[start:start + step])
    return writer.commit(Envelope(message_id, time.time(), "s@remote.test", "QID",
                                  [Target("alice@example.test", "INBOX")]))


def message_bytes(record: Record) -> bytes:
    with open(record.segment, "rb") as handle:
        handle.seek(record.message_offset)
        return handle.read(record.envelope.size)


def test_records_read_back_with_their_envelopes_and_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    bodies = [b"Subject: one\r\n\r\nbody\r\n", b"Subject: two\n\nbare lf\n"]
    committed = [commit(spool, body) for body in bodies]
    found = spool.records()
    assert [(r.segment, r.offset, r.envelope.id) for r in found] == [
        (r.segment, r.offset, r.envelope.id) for r in committed]
    assert [message_bytes(r) for r in found] == bodies
    assert found[1].envelope.virtual_size == len(bodies[1]) + 3  # three LFs without CR
    assert spool_usage(tmp_path).entries == 2


def test_a_large_message_streams_to_a_segment_of_its_own(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    small = commit(spool, b"Subject: small\r\n\r\nx\r\n")
    body = b"Subject: big\r\n\r\n" + b"y" * (SPILL_BYTES * 2)
    big = commit(spool, body, chunks=7)
    assert big.segment != small.segment and big.offset == 0
    assert message_bytes(big) == body
    assert list(spool.tmp_dir.iterdir()) == []
    assert len(spool.records()) == 2


def test_messages_finishing_together_share_a_sync(tmp_path: Path,
                                                  mocker: MockerFixture) -> None:
    """Eight threads commit at once while each sync takes 50 ms: fewer syncs than messages,
    and every commit returns only after a sync that covered its record."""
    spool = Spool(tmp_path)
    real = os.fdatasync
    synced_sizes: list[int] = []

    def slow_sync(fd: int) -> None:
        time.sleep(0.05)
        real(fd)
        synced_sizes.append(os.fstat(fd).st_size)

    mocker.patch("os.fdatasync", side_effect=slow_sync)
    records: list[Record] = []
    covered: list[bool] = []
    lock = threading.Lock()

    def one(number: int) -> None:
        record = commit(spool, f"Subject: {number}\r\n\r\nbody\r\n".encode())
        end = record.message_offset + record.envelope.size
        with lock:
            records.append(record)
            covered.append(any(size >= end for size in synced_sizes))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(records) == 8 and all(covered)
    assert spool.log.groups < 8
    assert len(spool.records()) == 8


@pytest.mark.parametrize("failing", ["os.pwritev", "os.fdatasync"])
def test_a_failed_append_or_sync_fails_the_message_and_cuts_the_segment_back(
        tmp_path: Path, mocker: MockerFixture, failing: str) -> None:
    spool = Spool(tmp_path)
    first = commit(spool, b"Subject: kept\r\n\r\n1\r\n")
    durable_size = first.segment.stat().st_size
    broken = mocker.patch(failing, side_effect=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match="No space"):
        commit(spool, b"Subject: lost\r\n\r\n2\r\n")
    mocker.stop(broken)
    assert first.segment.stat().st_size == durable_size
    third = commit(spool, b"Subject: next\r\n\r\n3\r\n")
    assert third.segment != first.segment
    assert [r.envelope.id for r in spool.records()] == [first.envelope.id, third.envelope.id]


def test_a_torn_tail_is_ignored_and_damage_between_records_is_reported(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = commit(spool, b"Subject: a\r\n\r\naaaa\r\n")
    second = commit(spool, b"Subject: b\r\n\r\nbbbb\r\n")
    spool.log.close()
    segment = first.segment
    with open(segment, "ab") as handle:  # a write cut short by a crash: never acknowledged
        handle.write(HEADER.pack(b"MCJ1", 0, 0.0, 10, 10_000)[:20])
    scan = scan_segment(segment)
    assert [r.offset for r in scan.records] == [first.offset, second.offset]
    assert scan.damaged == []
    data = bytearray(segment.read_bytes())
    data[first.message_offset + 3] ^= 0xFF  # a flipped byte in the first message
    segment.write_bytes(bytes(data))
    scan = scan_segment(segment)
    assert [r.offset for r in scan.records] == [second.offset]
    assert scan.damaged == [f"offset {first.offset}: checksum mismatch"]


def test_the_listener_hears_of_durable_records_and_closed_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    before = commit(spool, b"Subject: before\r\n\r\nx\r\n")
    heard: list[tuple[list[Record], list[tuple[Path, int]]]] = []
    on_disk = spool.log.listen(lambda records, closed: heard.append((records, closed)))
    assert on_disk == [before.segment]  # rotated away: the listener recovers it
    after = commit(spool, b"Subject: after\r\n\r\ny\r\n")
    assert after.segment != before.segment
    assert heard == [([after], [])]
    spool.log.close()
    assert heard[-1] == ([], [(after.segment, 1)])


def test_done_marks_hide_finished_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = commit(spool, b"Subject: a\r\n\r\na\r\n")
    second = commit(spool, b"Subject: b\r\n\r\nb\r\n")
    spool.mark_done(first.segment, [first.offset])
    assert [r.offset for r in spool.records()] == [second.offset]
    usage = spool_usage(tmp_path)
    assert usage.entries == 1 and usage.bytes == second.envelope.size


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.sampled_from(b"ab\r\n."), max_size=40).map(bytes), max_size=12),
       st.booleans())
def test_virtual_size_counts_every_lf_without_its_cr(tmp_path_factory: pytest.TempPathFactory,
                                                     chunks: list[bytes], spill: bool) -> None:
    """Counted whole at commit for a message kept in memory, chunk by chunk (a CR ending one
    chunk, its LF starting the next) for one streamed to disk."""
    spool = Spool(tmp_path_factory.mktemp("spool"))
    message_id = new_message_id(time.time())
    with mock.patch("mailcontinuity.journal.spool.SPILL_BYTES", 8 if spill else SPILL_BYTES):
        writer = spool.open_message(message_id)
        for chunk in chunks:
            writer.write(chunk)
        record = writer.commit(Envelope(message_id, time.time(), "", "", []))
    body = b"".join(chunks)
    bare = sum(1 for i, byte in enumerate(body) if byte == 0x0A and (i == 0 or body[i - 1] != 0x0D))
    assert record.envelope.size == len(body)
    assert record.envelope.virtual_size == len(body) + bare
    spool.log.close()


def write_legacy_entry(spool_dir: Path, message: bytes, envelope: Envelope) -> Path:
    """An entry as versions before the segment log wrote it: ``new/<id>.msg`` holding the
    message, the envelope's JSON and a footer (magic, the JSON's length in ten digits)."""
    envelope.size = len(message)
    envelope.virtual_size = len(message) + message.count(b"\n") - message.count(b"\r\n")
    trailer = envelope.encode()
    entry = spool_dir / "new" / f"{envelope.id}.msg"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_bytes(message + trailer + LEGACY_TRAILER + b"%010d\n" % len(trailer))
    return entry


def legacy_envelope(address: str = "alice@example.test") -> Envelope:
    now = time.time()
    return Envelope(new_message_id(now), now, "s@remote.test", "QID", [Target(address, "INBOX")],
                    extra={"copy_fields_at": "7"})


def test_an_old_format_spool_is_imported_whole_and_counted_before(tmp_path: Path) -> None:
    """Entries an older version left in new/ were acknowledged to Postfix: status counts them
    before the import, and the import turns each into a record, byte for byte, before the
    old file goes."""
    messages = [b"Subject: old one\r\n\r\nbody\r\n", b"Subject: old two\n\n" + b"z" * 300_000]
    envelopes = [legacy_envelope() for _ in messages]
    for message, envelope in zip(messages, envelopes, strict=True):
        write_legacy_entry(tmp_path, message, envelope)
    before = spool_usage(tmp_path)
    assert before.entries == 2 and before.bytes > sum(map(len, messages))
    spool = Spool(tmp_path)
    assert import_legacy(spool).imported == 2
    records = spool.records()
    assert [r.envelope for r in records] == envelopes
    assert [message_bytes(r) for r in records] == messages
    assert not (tmp_path / "new").exists() and spool_usage(tmp_path).entries == 2
    assert import_legacy(spool).imported == 0


def test_an_import_cut_short_after_the_rename_holds_each_message_once(tmp_path: Path) -> None:
    """A crash after the segment is in log/ but before the old file went: the next start finds
    the message already imported and only removes the old file."""
    envelope = legacy_envelope()
    entry = write_legacy_entry(tmp_path, b"Subject: once\r\n\r\nx\r\n", envelope)
    kept = entry.read_bytes()
    spool = Spool(tmp_path)
    import_legacy(spool)
    entry.parent.mkdir()
    entry.write_bytes(kept)  # as if the unlink never reached the disk
    assert import_legacy(spool).imported == 1
    assert [r.envelope.id for r in spool.records()] == [envelope.id]
    assert not entry.exists()


def test_an_old_entry_without_its_envelope_goes_to_bad(tmp_path: Path) -> None:
    """The old version's crash between rename and fsync left a torn entry (never acknowledged):
    set aside for an operator, never deleted, never blocking the rest."""
    good = legacy_envelope()
    write_legacy_entry(tmp_path, b"Subject: fine\r\n\r\nx\r\n", good)
    torn = tmp_path / "new" / "0-torn.msg"
    torn.write_bytes(b"Subject: torn\r\n\r\nhalf a mess")
    spool = Spool(tmp_path)
    assert import_legacy(spool) == LegacyImport(imported=1, set_aside=1)
    assert (tmp_path / "bad" / "0-torn.msg").read_bytes().startswith(b"Subject: torn")
    assert [r.envelope.id for r in spool.records()] == [good.id]


def test_an_import_that_cannot_write_stops_the_start_and_keeps_the_entries(
        tmp_path: Path, mocker: MockerFixture) -> None:
    """Disk full while importing: a clear error naming the directory and the way out; the old
    entries stay and nothing half-written is left in tmp/ or log/."""
    entry = write_legacy_entry(tmp_path, b"Subject: kept\r\n\r\nx\r\n", legacy_envelope())
    spool = Spool(tmp_path)
    mocker.patch("mailcontinuity.journal.legacy_spool.sync_file_system",
                 side_effect=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(SpoolError, match=r"No space left.*drain .*new with the previous"):
        import_legacy(spool)
    assert entry.exists() and spool.segments() == [] and list(spool.tmp_dir.iterdir()) == []


@given(st.builds(Envelope, id=st.text(), received=st.floats(allow_nan=False),
                 sender=st.text(), queue_id=st.text(),
                 targets=st.lists(st.builds(Target, st.text(), st.text()), max_size=4),
                 size=st.integers(0, 2**40), virtual_size=st.integers(0, 2**40),
                 extra=st.dictionaries(st.text(), st.text(), max_size=3)))
def test_an_envelope_reads_back_as_written(envelope: Envelope) -> None:
    """The hand-written encoder (faster than dataclasses.asdict) keeps every field."""
    assert Envelope.decode(envelope.encode()) == envelope
    assert set(json.loads(envelope.encode())) == {f.name for f in fields(Envelope)}
