"""Faults: standby down, the milter killed between accept and ship, the spool disk full."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import Milter
import pytest
from click.testing import CliRunner
from Milter.testctx import TestCtx as MilterContext

from mailcontinuity.cli.main import main
from mailcontinuity.journal.daemon import journal_policy
from mailcontinuity.journal.milter import JournalMilter, JournalRuntime, SpoolErrorCounter
from mailcontinuity.journal.sinks import make_sink
from mailcontinuity.journal.spool import HEADER, Spool, SpoolWriter, Target, spool_usage
from mailcontinuity.journal.trace import COPY_FIELDS_AT
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.mail.headers import DEFAULT_ID_HEADER, JOURNAL_HEADER
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.store.heartbeats import pid_alive
from tests.lab.journal_helpers import fetch_by_header, wait_for_empty_spool
from tests.lab.test_milter_lmtp import ship_through_shipper, spool_message
from tests.unit.test_spool import legacy_envelope, write_legacy_entry

SENDER = "sender@remote.test"


def journal_status(lab: Lab) -> dict:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["journal"]


def send_batch(lab: Lab, count: int, subject: str) -> list[str]:
    ids = []
    for number in range(count):
        message = make_message(SENDER, [lab.users[1].address], f"{subject} {number}")
        send_message(lab.gateway.smtp, message, SENDER, [lab.users[1].address])
        ids.append(message["Message-ID"])
    return ids


def wait_for_spooled(spool_dir: Path, count: int, timeout: float = 20.0) -> None:
    eventually(lambda: spool_usage(spool_dir).entries >= count, timeout,
               f"{count} entries spooled")


def stop_standby(lab: Lab) -> None:
    """Stop the standby and let the milter's cache of known users expire (lab: 1 s)."""
    lab.part("standby").stop()
    time.sleep(lab.config.milter.recipient_cache_seconds + 0.1)


def test_standby_down_spool_grows_then_drains_and_lag_shows(lab: Lab) -> None:
    spool_dir = lab.config.milter.spool_dir
    wait_for_empty_spool(spool_dir)
    stop_standby(lab)
    try:
        ids = send_batch(lab, 3, f"while standby down {uuid.uuid4().hex[:6]}")
        wait_for_spooled(spool_dir, 3)
        time.sleep(1.1)
        # The shipper tries again on its backoff (up to retry_max_seconds): wait for its error.
        journal = eventually(lambda: (got := journal_status(lab))["ship_errors"] >= 1 and got,
                             lab.config.milter.retry_max_seconds + 5, "a shipping error")
        assert journal["spooled"] == 3
        assert journal["lag_seconds"] >= 1.0
        assert journal["ship_errors"] >= 1 and "standby" in journal["last_ship_error"]["detail"]
    finally:
        lab.part("standby").start()
    wait_for_empty_spool(spool_dir, timeout=30)
    for message_id in ids:
        assert len(fetch_by_header(lab, "standby", lab.users[1], "Message-ID", message_id)) == 1
    assert journal_status(lab)["lag_seconds"] == 0


def test_milter_killed_between_accept_and_ship_ships_once_after_restart(lab: Lab) -> None:
    spool_dir = lab.config.milter.spool_dir
    milter = lab.part("milter")
    wait_for_empty_spool(spool_dir)
    stop_standby(lab)  # holds the entry in the spool: accepted, not shipped
    try:
        [message_id] = send_batch(lab, 1, f"killed milter {uuid.uuid4().hex[:6]}")
        wait_for_spooled(spool_dir, 1)
        pid = milter.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: not pid_alive(pid), 10, f"milter {pid} gone")
        assert spool_usage(spool_dir).entries == 1
    finally:
        lab.part("standby").start()
        milter.start()
    wait_for_empty_spool(spool_dir, timeout=30)
    time.sleep(1)
    assert len(fetch_by_header(lab, "standby", lab.users[1], "Message-ID", message_id)) == 1


def test_milter_killed_between_a_groups_write_and_its_fsync_loses_nothing(
        lab: Lab, tmp_path: Path) -> None:
    """Three messages reach end of message together: the first waits in the group's fdatasync
    (held there by strace's fault injection), the others wait for it. No SMTP client has its
    250 while the group is not durable; the milter is then killed with SIGKILL, Postfix applies
    milter_default_action (accept), and the restarted milter ships each record (complete in the
    page cache, never synced) exactly once."""
    spool_dir = lab.config.milter.spool_dir
    milter = lab.part("milter")
    wait_for_empty_spool(spool_dir)
    pid = milter.pid()
    assert pid is not None
    trace_log = tmp_path / "strace.err"
    with trace_log.open("wb") as err:
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-p", str(pid), "-o", "/dev/null", "-e", "trace=fdatasync",
             "-e", "inject=fdatasync:delay_enter=60s"], stderr=err)
    pool = ThreadPoolExecutor(3)
    try:
        # strace has attached once its threads are traced (TracerPid in their status).
        eventually(lambda: f"TracerPid:\t{tracer.pid}\n" in Path(f"/proc/{pid}/status").read_text(),
                   10, "strace attached to the milter")
        subject = f"group write then kill {uuid.uuid4().hex[:6]}"
        messages = [make_message(SENDER, [lab.users[1].address], f"{subject} {n}")
                    for n in range(3)]
        sends = [pool.submit(send_message, lab.gateway.smtp, m, SENDER, [lab.users[1].address])
                 for m in messages]
        wait_for_spooled(spool_dir, 3)
        time.sleep(0.5)
        assert not any(send.done() for send in sends), "a 250 before the group's fdatasync"
        os.kill(pid, signal.SIGKILL)
        # Threads held in a ptrace stop finish dying once the tracer lets go; a thread stopped
        # at the entry of fdatasync with SIGKILL pending never runs it.
        tracer.kill()
        tracer.wait(timeout=10)
        eventually(lambda: not pid_alive(pid), 10, f"milter {pid} gone")
        for send in sends:
            send.result(timeout=30)  # milter_default_action = accept: Postfix takes the mail
        assert spool_usage(spool_dir).entries == 3
    finally:
        tracer.kill()
        tracer.wait(timeout=10)
        pool.shutdown(wait=True)
        milter.start()
    wait_for_empty_spool(spool_dir, timeout=30)
    for message in messages:
        copies = fetch_by_header(lab, "standby", lab.users[1], "Message-ID", message["Message-ID"])
        assert len(copies) == 1 and JOURNAL_HEADER.encode() in copies[0]


def test_an_old_format_spool_found_at_start_is_shipped(lab: Lab) -> None:
    """An upgrade finds entries the previous version left in new/ (one file per message, already
    acknowledged to Postfix): the milter imports them at start and ships each copy once, with
    its trace fields; a torn one is set aside in bad/."""
    spool_dir = lab.config.milter.spool_dir
    milter = lab.part("milter")
    wait_for_empty_spool(spool_dir)
    bob = lab.users[1]
    subject = f"old format {uuid.uuid4().hex[:6]}"
    envelopes = []
    milter.stop()
    try:
        for number in range(3):
            envelope = legacy_envelope(bob.address)
            stamp = f"{DEFAULT_ID_HEADER}: {envelope.id}\r\n{JOURNAL_HEADER}: yes\r\n".encode()
            envelope.extra = {COPY_FIELDS_AT: str(len(stamp))}
            message = stamp + (f"From: {SENDER}\r\nSubject: {subject} {number}\r\n"
                               f"Message-ID: <{envelope.id}@remote.test>\r\n\r\nbody\r\n"
                               ).encode()
            write_legacy_entry(spool_dir, message, envelope)
            envelopes.append(envelope)
        torn = spool_dir / "new" / f"{envelopes[0].id}-torn.msg"
        torn.write_bytes(b"Subject: torn\r\n\r\nhalf")
        assert spool_usage(spool_dir).entries == 4  # status shows the backlog meanwhile
    finally:
        milter.start()
    try:
        wait_for_empty_spool(spool_dir, timeout=30)
        for envelope in envelopes:
            [copy] = fetch_by_header(lab, "standby", bob, DEFAULT_ID_HEADER, envelope.id)
            assert subject.encode() in copy
            assert f"Delivered-To: {bob.address}".encode() in copy
        assert not (spool_dir / "new").exists()
        assert (spool_dir / "bad" / torn.name).exists()
    finally:
        (spool_dir / "bad" / torn.name).unlink(missing_ok=True)


def test_a_spool_on_its_own_file_system_still_ships_every_copy(lab: Lab, tmp_path: Path) -> None:
    """A spool on its own tmpfs while the standby's Maildirs stay on /tmp's disk: the maildir
    sink's in-kernel copy crosses file systems (it used to fail with EXDEV and the spool grew)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mount)],
                   check=True)
    spool = None
    try:
        spool = Spool(mount / "spool")
        assert os.stat(spool.directory).st_dev != os.stat(lab.dir / "standby").st_dev
        bob = lab.users[1]
        sent = [spool_message(spool, make_message(SENDER, [bob.address], f"tmpfs {n}"),
                              [Target(bob.address, "INBOX")]) for n in range(3)]
        ship_through_shipper(lab, spool, make_sink(lab.config))
        for _, envelope in sent:
            [copy] = fetch_by_header(lab, "standby", bob, DEFAULT_ID_HEADER, envelope.id)
            assert b"tmpfs" in copy
    finally:
        if spool is not None:
            spool.log.close()  # its directory handle would keep the mount busy
        subprocess.run(["umount", str(mount)], check=True)


def feed(runtime: JournalRuntime, raw: bytes, recipient: str, auth: str = "") -> MilterContext:
    """Run one message through the milter callbacks with pymilter's own test context."""
    Milter.factory = lambda: JournalMilter(runtime)
    ctx = MilterContext()
    ctx._setsymval("{auth_authen}", auth)
    ctx._setsymval("i", "ABC123")
    ctx._connect()
    ctx.rc = ctx._feedFile(BytesIO(raw), "sender@example.test", recipient)
    return ctx


@pytest.fixture
def runtime(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JournalRuntime:
    # The test context stops at the first reply that is not CONTINUE, so offer no "no-reply"
    # protocol steps: every callback then answers CONTINUE as with an old MTA.
    monkeypatch.setattr(MilterContext, "default_opts", [Milter.CURR_ACTS, 0, 0, 0])
    errors: list[str] = []
    counter = SpoolErrorCounter(errors.append)
    return JournalRuntime(journal_policy(lab.config), Spool(tmp_path / "spool"), counter)


RAW = b"From: a@remote.test\nTo: alice@example.test\nSubject: t\n\nbody\n"


@pytest.mark.parametrize("policy", ["accept", "tempfail"])
def test_disk_full_on_the_spool_behaves_as_configured(
    runtime: JournalRuntime, mocker: pytest.MockFixture, policy: str
) -> None:
    runtime.policy = runtime.policy.__class__(**{**runtime.policy.__dict__,
                                                 "tempfail_on_spool_error": policy == "tempfail"})
    full = OSError(errno.ENOSPC, "No space left on device")
    mocker.patch.object(SpoolWriter, "write", side_effect=full)
    ctx = feed(runtime, RAW, "alice@example.test")
    assert ctx.rc == (Milter.TEMPFAIL if policy == "tempfail" else Milter.CONTINUE)
    assert runtime.spool_error.count == 1  # alarmed once, not per chunk
    assert list(runtime.spool.tmp_dir.iterdir()) == [] and runtime.spool.records() == []
    if policy == "tempfail":
        assert ctx._reply[0] == "451"


@pytest.mark.parametrize("failing", ["os.pwritev", "os.fdatasync"])
def test_disk_full_at_commit_loses_no_accepted_mail_silently(
    runtime: JournalRuntime, mocker: pytest.MockFixture, failing: str
) -> None:
    """The append or the group's sync fails: the message is reported (alarm, policy), nothing
    of it stays in the segment, and the next message goes into a fresh segment and is kept."""
    feed(runtime, RAW, "alice@example.test")  # one durable record before the failure
    [before] = runtime.spool.records()
    broken = mocker.patch(failing, side_effect=OSError(errno.ENOSPC, "No space left on device"))
    ctx = feed(runtime, RAW, "alice@example.test")
    assert ctx.rc == Milter.CONTINUE
    assert runtime.spool_error.count == 1
    assert list(runtime.spool.tmp_dir.iterdir()) == []
    assert runtime.spool.records() == [before]
    assert before.segment.stat().st_size == before.offset + HEADER.size + before.envelope.size \
        + len(before.envelope.encode())  # cut back to the durable record
    mocker.stop(broken)
    feed(runtime, RAW, "alice@example.test")
    after = runtime.spool.records()
    assert len(after) == 2 and after[1].segment != before.segment


def test_authenticated_sender_gets_a_sent_copy(runtime: JournalRuntime) -> None:
    # Her own From: (a logged-in user may send only as her own addresses, issue 20).
    own = RAW.replace(b"From: a@remote.test", b"From: Alice <alice@example.test>")
    ctx = feed(runtime, own, "someone@remote.test", auth="alice@example.test")
    assert ctx.rc == Milter.CONTINUE
    [record] = runtime.spool.records()
    envelope = record.envelope
    assert [(t.address, t.folder) for t in envelope.targets] == [("alice@example.test", "Sent")]
