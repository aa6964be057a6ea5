"""Bad and unusual input through the real gateway: the standby copy equals the primary's."""

from __future__ import annotations

import os
import smtplib
import socket
import time
import uuid
from pathlib import Path

import pytest

from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.process import read_pid
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.store.db import open_store
from tests.lab.journal_helpers import (
    fetch_by_header,
    journal_id,
    wait_for_empty_spool,
    without_trace,
)

SENDER = "sender@remote.test"
STANDBY_ONLY = (b"received:", b"return-path:", b"delivered-to:",
                JOURNAL_HEADER.lower().encode() + b":")


def send_raw(lab: Lab, raw: bytes, recipients: list[str], options: tuple[str, ...] = ()) -> None:
    with smtplib.SMTP(lab.gateway.smtp.host, lab.gateway.smtp.port, timeout=60) as smtp:
        smtp.ehlo()
        refused = smtp.sendmail(SENDER, recipients, raw, mail_options=list(options))
    assert not refused


def assert_same_on_both(lab: Lab, token: str, count: int = 1) -> list[bytes]:
    """Find the message by a Subject token on the primary and the standby of alice; compare."""
    alice = lab.users[0]
    # Each of ``count`` messages is delivered on its own: wait for the last, not the first.
    primary = eventually(
        lambda: len(got := fetch_by_header(lab, "primary", alice, "Subject", token)) >= count
        and got, 30, f"{count} copies of {token} on the primary")
    assert len(primary) == count, f"primary holds {len(primary)} copies of {token}"
    standby = eventually(
        lambda: len(got := fetch_by_header(lab, "standby", alice, "Subject", token)) >= count
        and got, 30, f"{count} journal copies of {token}")
    by_id = {journal_id(raw): raw for raw in standby}
    assert len(by_id) == count
    for raw in primary:
        assert without_trace(by_id[journal_id(raw)], STANDBY_ONLY) == without_trace(raw)
    return primary


def message(token: str, body: bytes, extra: bytes = b"", newline: bytes = b"\r\n") -> bytes:
    head = [b"From: sender@remote.test", b"To: alice@example.test",
            b"Subject: " + token.encode(), b"Message-ID: <" + token.encode() + b"@remote.test>"]
    return newline.join(head) + newline + extra + newline + body


UTF8_MESSAGE = ("From: Jörg <sender@remote.test>\r\nTo: alice@example.test\r\n"
                "Subject: tutf8 ünïcödé 日本語\r\nX-Check: ✓\r\n\r\nbody ✓\r\n").encode()

BODIES = {
    "8bit": (message("t8bit", "Grüße, ½ € — ünïcödé\r\n".encode() * 20), ("BODY=8BITMIME",)),
    "binary": (message("tbinary", bytes(range(1, 256)).replace(b"\n", b"") + b"\r\n" * 3,
                       b"Content-Transfer-Encoding: 8bit\r\n"), ("BODY=8BITMIME",)),
    "bare-lf": (message("tbarelf", b"line one\nline two\n\nline four\n", newline=b"\n"), ()),
    "nul": (message("tnul", b"before\x00after\r\n\x00\x00\r\n"), ()),
    "no-message-id": (b"From: sender@remote.test\r\nTo: alice@example.test\r\n"
                      b"Subject: tnomsgid\r\n\r\nno message id\r\n", ()),
    "non-ascii-headers": (UTF8_MESSAGE.replace(b"tutf8", b"tnonascii"), ("BODY=8BITMIME",)),
    "long-folded": (message("tfolded", b"body\r\n",
                            b"X-Long: " + b"\r\n\t".join([b"word" * 30] * 5) + b"\r\n"), ()),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_unusual_message_is_journaled_as_the_primary_stores_it(lab: Lab, name: str) -> None:
    raw, options = BODIES[name]
    token = raw.split(b"Subject: ")[1].split()[0].decode()
    send_raw(lab, raw, [lab.users[0].address], options)
    assert_same_on_both(lab, token)


def test_smtputf8_message_the_primary_cannot_take_is_refused_not_journaled(lab: Lab) -> None:
    # Dovecot 2.3's LMTP (the lab's primary) does not offer SMTPUTF8: Postfix alone would say
    # 250 and bounce it (dsn 5.6.7) while the journal kept a copy. The milter refuses it at the
    # end of DATA instead, and the standby keeps nothing (tests/lab/test_international.py has
    # the other cases).
    token = f"tsmtputf8{uuid.uuid4().hex[:8]}"
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send_raw(lab, UTF8_MESSAGE.replace(b"tutf8", token.encode()), [lab.users[0].address],
                 ("SMTPUTF8", "BODY=8BITMIME"))
    assert refused.value.smtp_code == 550 and b"5.6.7" in refused.value.smtp_error
    assert not fetch_by_header(lab, "standby", lab.users[0], "Subject", token, timeout=3)


def test_two_messages_with_one_message_id_are_both_journaled(lab: Lab) -> None:
    token = f"dupid{uuid.uuid4().hex[:8]}"
    for body in (b"first\r\n", b"second, different\r\n"):
        send_raw(lab, message(token, body), [lab.users[0].address])
    primary = assert_same_on_both(lab, token, count=2)
    assert len({journal_id(raw) for raw in primary}) == 2


def test_500_recipients_are_journaled_and_unknown_ones_recorded(lab: Lab) -> None:
    token = f"many{uuid.uuid4().hex[:8]}"
    known = [user.address for user in lab.users]
    unknown = [f"ghost{i}@example.test" for i in range(500 - len(known))]
    send_raw(lab, message(token, b"to many\r\n"), known + unknown)
    # The standby's users of all 500 are asked in one doveadm run (mail.doveadm.mailbox_users;
    # one run per recipient took over 60 s on a loaded 2-core machine).
    copies = [fetch_by_header(lab, "standby", user, "Subject", token, timeout=60)
              for user in lab.users]
    assert all(copies)
    wait_for_empty_spool(lab.config.milter.spool_dir, timeout=60)
    store = open_store(lab.config)
    try:
        statuses = dict(store.query("SELECT address, status FROM journal WHERE message_id = ?"
                                    " AND folder = 'INBOX'", [journal_id(copies[0][0])]))
    finally:
        store.close()
    assert statuses == {**dict.fromkeys(known, "shipped"), **dict.fromkeys(unknown, "unknown")}


def test_large_message_streams_with_bounded_memory(lab: Lab) -> None:
    token = f"large{uuid.uuid4().hex[:8]}"
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    body = line * (50 * 1024 * 1024 // len(line))
    pid = read_pid(lab.dir / "daemons" / "milter.pid")
    # The peak since now, over what the milter already holds (earlier tests, the store's
    # client libraries): "5" resets VmHWM to the current RSS (proc(5), clear_refs).
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before_kb = memory_kb(pid, "VmRSS")
    send_raw(lab, message(token, body), [lab.users[0].address])
    assert_same_on_both(lab, token)
    grown_kb = memory_kb(pid, "VmHWM") - before_kb
    assert grown_kb < 10 * 1024, (f"milter peak RSS grew by {grown_kb} kB (from {before_kb} kB)"
                                  " for a 50 MB message")


def memory_kb(pid: int | None, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1])


def test_client_gone_mid_data_leaves_nothing(lab: Lab) -> None:
    token = f"gone{uuid.uuid4().hex[:8]}"
    with socket.create_connection((lab.gateway.smtp.host, lab.gateway.smtp.port)) as conn:
        replies = conn.makefile("rb")
        replies.readline()
        for command in (b"EHLO client.test", f"MAIL FROM:<{SENDER}>".encode(),
                        f"RCPT TO:<{lab.users[0].address}>".encode(), b"DATA"):
            conn.sendall(command + b"\r\n")
            while (reply := replies.readline())[3:4] == b"-":
                pass
        assert reply.startswith(b"354")
        conn.sendall(message(token, b"x" * 300_000))  # headers and most of a body, no "."
        time.sleep(0.5)
    spool = lab.config.milter.spool_dir
    eventually(lambda: os.listdir(spool / "tmp") == [], 10, "the abandoned message dropped")
    wait_for_empty_spool(spool)
    assert not fetch_by_header(lab, "standby", lab.users[0], "Subject", token, timeout=1)


def email_corpus() -> list[Path]:
    """CPython's own email test messages, from the installed interpreter's test package."""
    try:
        import test
    except ImportError:
        return []
    return sorted(Path(os.path.dirname(test.__file__), "test_email", "data").glob("msg_*.txt"))


@pytest.mark.skipif(not email_corpus(), reason="this Python has no test package (Lib/test)")
def test_cpython_email_corpus_is_journaled_byte_for_byte(lab: Lab) -> None:
    alice = lab.users[0]
    sent = {}
    for path in email_corpus():
        raw = path.read_bytes()
        if raw.startswith(b"From "):  # an mbox separator, not part of the message
            raw = raw.split(b"\n", 1)[1]
        marker = uuid.uuid4().hex
        raw = f"X-Corpus: {marker}\n".encode() + raw
        send_raw(lab, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), [alice.address])
        sent[path.name] = marker
    mismatched = []
    for name, marker in sent.items():
        [primary] = fetch_by_header(lab, "primary", alice, "X-Corpus", marker, timeout=30)
        [standby] = fetch_by_header(lab, "standby", alice, "X-Corpus", marker, timeout=30)
        if without_trace(standby, STANDBY_ONLY) != without_trace(primary):
            mismatched.append(name)
    assert not mismatched, f"standby copy differs from the primary's for {mismatched}"
    assert len(sent) >= 40
