"""SMTPUTF8 through the real gateway: refused while the client is connected, never 250 and then
a bounce, in normal state (the lab's primary, Dovecot 2.3, lacks SMTPUTF8) and during an outage
(nor has the standby); mail that needs no SMTPUTF8 still flows and is journaled."""

from __future__ import annotations

import smtplib
import uuid
from email.parser import BytesHeaderParser
from email.policy import compat32

from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT
from tests.lab.journal_helpers import fetch_by_header, wait_for_empty_spool
from tests.lab.outage_helpers import forced_outage

ASCII_SENDER = "sender@remote.test"
UTF8_SENDER = "pelé@remote.test"


def from_the_internet(lab: Lab) -> smtplib.SMTP:
    """An SMTP session with the gateway as a remote server opens it (EHLO said)."""
    gateway = lab.gateway.smtp
    smtp = smtplib.SMTP(gateway.host, gateway.port, timeout=60,
                        source_address=(INTERNET_CLIENT, 0))
    smtp.ehlo("client.remote.test")
    return smtp


def transaction(lab: Lab, sender: str, recipient: str, subject: str,
                options: tuple[str, ...] = ("SMTPUTF8",)) -> tuple[int, int | None]:
    """One SMTP transaction from "the internet": the RCPT reply code and, if RCPT was
    accepted, the end-of-data reply code."""
    message_id = f"<{uuid.uuid4().hex}@remote.test>"
    raw = (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n"
           f"Message-ID: {message_id}\r\n\r\nbody\r\n").encode()
    with from_the_internet(lab) as smtp:
        assert smtp.has_extn("smtputf8")
        smtp.command_encoding = "utf-8"  # an undeclared UTF-8 address is sent as is, too
        code, text = smtp.mail(sender, list(options))
        assert code == 250, text
        rcpt, _ = smtp.rcpt(recipient)
        if rcpt >= 300:
            return rcpt, None
        final, _ = smtp.data(raw)
        return rcpt, final


def no_bounce_since(lab: Lab, offset: int) -> None:
    log = lab.gateway.log_file.read_text(errors="replace")[offset:]
    assert "status=bounced" not in log, log
    assert "sender non-delivery notification" not in log, log


def log_offset(lab: Lab) -> int:
    return len(lab.gateway.log_file.read_text(errors="replace"))


def test_smtputf8_in_normal_state_is_answered_at_smtp_time(lab: Lab) -> None:
    alice = lab.users[0]
    start = log_offset(lab)
    token = uuid.uuid4().hex[:10]
    # A UTF-8 sender, a UTF-8 recipient: refused at RCPT, for good (the primary never takes it).
    assert transaction(lab, UTF8_SENDER, alice.address, f"utf8-sender {token}") == (550, None)
    assert transaction(lab, ASCII_SENDER, "pelé@example.test", f"utf8-rcpt {token}",
                       options=()) == (550, None)
    # UTF-8 only in a header of an SMTPUTF8 message: known after DATA, refused at its end.
    assert transaction(lab, ASCII_SENDER, alice.address, f"Grüße {token}") == (250, 550)
    # SMTPUTF8 declared but nothing needs it: delivered (Postfix's own rule) and journaled.
    assert transaction(lab, ASCII_SENDER, alice.address, f"ascii {token}") == (250, 250)
    assert fetch_by_header(lab, "primary", alice, "Subject", f"ascii {token}", timeout=30)
    assert fetch_by_header(lab, "standby", alice, "Subject", f"ascii {token}", timeout=30)
    wait_for_empty_spool(lab.config.milter.spool_dir)
    # Nothing of the refused mail was kept as history (only the ASCII one carries the token),
    # and nothing bounced.
    assert len(fetch_by_header(lab, "standby", alice, "Subject", token)) == 1
    assert len(fetch_by_header(lab, "primary", alice, "Subject", token)) == 1
    no_bounce_since(lab, start)


def test_smtputf8_during_an_outage_is_refused_temporarily(lab: Lab) -> None:
    alice = lab.users[0]
    token = uuid.uuid4().hex[:10]
    with forced_outage(lab):
        start = log_offset(lab)
        assert transaction(lab, UTF8_SENDER, alice.address, f"utf8 {token}") == (451, None)
        assert transaction(lab, ASCII_SENDER, alice.address, f"Grüße {token}") == (250, 451)
        message_id = f"ascii-{token}"
        assert transaction(lab, ASCII_SENDER, alice.address, message_id) == (250, 250)
        assert fetch_by_header(lab, "standby", alice, "Subject", message_id, timeout=30)
        eventually(lambda: "status=sent" in lab.gateway.log_file.read_text(
            errors="replace")[start:], 20, "the ASCII message delivered to the standby")
        no_bounce_since(lab, start)


def trace_fields(raw: bytes) -> dict[str, list[str]]:
    """Return-Path, Delivered-To and the gateway's Received fields, unfolded, date dropped."""
    parsed = BytesHeaderParser(policy=compat32).parsebytes(raw)
    gateway = [" ".join(str(v).split()).rpartition(";")[0]
               for v in parsed.get_all("Received", []) if "(Postfix)" in str(v)]
    return {"return-path": [str(v) for v in parsed.get_all("Return-Path", [])],
            "delivered-to": [str(v) for v in parsed.get_all("Delivered-To", [])],
            "received-by-gateway": gateway}


def test_journal_copy_carries_the_primarys_trace_fields(lab: Lab) -> None:
    alice, bob = lab.users[0], lab.users[1]
    token = uuid.uuid4().hex[:10]
    for recipients in ([alice.address], [alice.address, bob.address]):
        subject = f"trace {len(recipients)} {token}"
        raw = (f"From: <{ASCII_SENDER}>\r\nSubject: {subject}\r\n"
               f"Message-ID: <{uuid.uuid4().hex}@remote.test>\r\n\r\nbody\r\n").encode()
        with from_the_internet(lab) as smtp:
            assert not smtp.sendmail(ASCII_SENDER, recipients, raw)
        [primary] = fetch_by_header(lab, "primary", alice, "Subject", subject, timeout=30)
        [standby] = fetch_by_header(lab, "standby", alice, "Subject", subject, timeout=30)
        expected = trace_fields(primary)
        assert expected["return-path"] == [f"<{ASCII_SENDER}>"]
        assert len(expected["received-by-gateway"]) == 1, primary
        assert trace_fields(standby) == expected, (primary, standby)
