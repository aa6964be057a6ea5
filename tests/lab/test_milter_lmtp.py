"""The lmtp sink against the lab standby's sieve-free LMTP listener (and smtp-sink for 4xx)."""

from __future__ import annotations

import json
import smtplib
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from click.testing import CliRunner
from sievelib.managesieve import Client as SieveClient

from mailcontinuity.cli.main import main
from mailcontinuity.config import ConfigError, Endpoint, MilterSection
from mailcontinuity.journal.shipper import Shipper
from mailcontinuity.journal.sinks import LmtpSink, Sink, TemporaryFailure, make_sink
from mailcontinuity.journal.spool import Envelope, Record, Spool, Target, new_message_id
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.process import free_ports, wait_for
from mailcontinuity.lab.scenario import restored
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.mail.headers import DEFAULT_ID_HEADER, JOURNAL_HEADER
from mailcontinuity.mail.smtp import data_lines, make_message
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.store.db import open_store
from mailcontinuity.store.journal import journal_summary, settled_copies
from mailcontinuity.transitions import change_state
from tests.lab.backends import lab_on_both_stores
from tests.lab.journal_helpers import fetch_by_header, wait_for_empty_spool

SENDER = "sender@remote.test"

lab_fixture = lab_on_both_stores()  # the shipper writes the journal index: run on both


def lmtp_settings(lab: Lab, **changes: object) -> MilterSection:
    return lab.config.milter.model_copy(update={"sink": "lmtp", **changes})


def spool_message(spool: Spool, message: EmailMessage, targets: list[Target],
                  sender: str = SENDER, message_id: str = "") -> tuple[Record, Envelope]:
    """A spool record as the milter commits it: the message plus id and journal headers."""
    message_id = message_id or new_message_id(time.time())
    stamp = f"{DEFAULT_ID_HEADER}: {message_id}\r\n{JOURNAL_HEADER}: yes\r\n".encode()
    writer = spool.open_message(message_id)
    writer.write(stamp + message.as_bytes(policy=SMTP))
    envelope = Envelope(message_id, time.time(), sender, "QID", targets)
    return writer.commit(envelope), envelope


def spool_for_alice(lab: Lab, spool: Spool, subject: str) -> tuple[Record, Envelope, Target]:
    """A spooled message with one copy: the first lab user's INBOX."""
    target = Target(lab.users[0].address, "INBOX")
    entry, envelope = spool_message(spool, make_message(SENDER, [target.address], subject),
                                    [target])
    return entry, envelope, target


def ship_through_shipper(lab: Lab, spool: Spool, sink: Sink) -> None:
    """Ship everything in the spool as a restarted milter's shipper does (it recovers every
    segment on disk)."""
    shipper = Shipper(spool, sink, lambda: open_store(lab.config), 0.2, 1.0)
    shipper.start()
    try:
        wait_for_empty_spool(spool.directory)
    finally:
        shipper.stop()
        shipper.join(timeout=10)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def test_data_lines_dot_stuff_and_crlf_across_chunk_boundaries() -> None:
    chunks = [b"Subject: x\r\n\r\n.leading\r", b"\n..two\nbare lf\n", b".", b"end"]
    assert b"".join(data_lines(chunks)) == (
        b"Subject: x\r\n\r\n..leading\r\n...two\r\nbare lf\r\n..end\r\n.\r\n")
    assert b"".join(data_lines([b"a\r\n"])) == b"a\r\n.\r\n"


def test_lmtp_sink_needs_the_journal_listener(lab: Lab) -> None:
    with pytest.raises(ConfigError, match="milter.lmtp"):
        make_sink(lab.config.model_copy(update={"milter": lmtp_settings(lab, lmtp=None)}))


def test_lmtp_sink_stores_once_per_recipient_and_records_unknown(lab: Lab, spool: Spool) -> None:
    alice = lab.users[0]
    message = make_message(SENDER, [alice.address], "lmtp sink copies",
                           ".a line starting with a dot\n" + "x" * 3000)
    targets = [Target(alice.address, "INBOX"), Target(alice.address, "Sent"),
               Target("nobody@example.test", "INBOX")]
    entry, envelope = spool_message(spool, message, targets)
    sink = LmtpSink(lmtp_settings(lab), lab.tls("standby"))
    ship_through_shipper(lab, spool, sink)
    store = open_store(lab.config)
    try:
        statuses = dict(((a, f), s) for a, f, s in store.query(
            "SELECT address, folder, status FROM journal WHERE message_id = ?", [envelope.id]))
    finally:
        store.close()
    assert statuses == {(alice.address, "INBOX"): "shipped", (alice.address, "Sent"): "shipped",
                        ("nobody@example.test", "INBOX"): "unknown"}
    for folder in ("INBOX", "Sent"):
        [copy] = fetch_by_header(lab, "standby", alice, DEFAULT_ID_HEADER, envelope.id, folder)
        assert b"\r\n.a line starting with a dot\r\n" in copy
        assert f"{JOURNAL_HEADER}: yes".encode() in copy
    # Shipped again, as after a crash between the LMTP reply and the index write: the sink asks
    # the standby's doveadm first, and the copy is stored once.
    again, envelope_again = spool_message(spool, message, targets[:1], message_id=envelope.id)
    with again.segment.open("rb") as handle:
        result = sink.ship(handle.fileno(), again.message_offset, envelope_again, targets[:1],
                           recovered=True)
    assert result[targets[0]].detail == "already stored"
    assert len(fetch_by_header(lab, "standby", alice, DEFAULT_ID_HEADER, envelope.id)) == 1


@pytest.fixture
def soft_rejecting_lmtp() -> Iterator[Endpoint]:
    """Postfix's smtp-sink speaking LMTP and answering every RCPT with a 4xx."""
    [port] = free_ports(1)
    endpoint = Endpoint("127.0.0.1", port)
    process = subprocess.Popen(["smtp-sink", "-u", "nobody", "-L", "-r", "rcpt",
                                f"{endpoint.host}:{port}", "16"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for([endpoint], up=True, what="smtp-sink")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_lmtp_4xx_and_a_dead_listener_are_temporary(lab: Lab, spool: Spool,
                                                    soft_rejecting_lmtp: Endpoint) -> None:
    entry, envelope, target = spool_for_alice(lab, spool, "4xx")
    with entry.segment.open("rb") as handle:
        # smtp-sink has no TLS: this sink may speak plaintext, as tls = "none" allows.
        plaintext = TLSPolicy("standby", "none", None, lab.config.source)
        result = LmtpSink(lmtp_settings(lab, lmtp=soft_rejecting_lmtp), plaintext).ship(
            handle.fileno(), entry.message_offset, envelope, [target], recovered=False)
    assert isinstance(result[target], TemporaryFailure) and " 4" in str(result[target])
    [closed] = free_ports(1)
    with entry.segment.open("rb") as handle, pytest.raises(TemporaryFailure, match="standby LMTP"):
        LmtpSink(lmtp_settings(lab, lmtp=Endpoint("127.0.0.1", closed)), lab.tls("standby")).ship(
            handle.fileno(), entry.message_offset, envelope, [target], recovered=False)


def activate_vacation(lab: Lab, address: str, password: str) -> None:
    """As the user over the standby's ManageSieve (the lab has no TLS: plaintext on loopback)."""
    endpoint = lab.endpoint("standby", "sieve")
    client = SieveClient(endpoint.host, endpoint.port)
    assert client.connect(address, password, authmech="PLAIN"), "managesieve login failed"
    try:
        script = ('require ["vacation"];\r\n'
                  f'vacation :days 1 :addresses ["{address}"] "I am away (test)";\r\n')
        assert client.putscript("away", script)
        assert client.setactive("away")
    finally:
        client.logout()


def vacation_replies(lab: Lab, to_user_index: int, original_id: str, timeout: float) -> list[bytes]:
    """Auto-replies to ``original_id`` that reached the sender's primary mailbox via the gateway."""
    return fetch_by_header(lab, "primary", lab.users[to_user_index], "In-Reply-To", original_id,
                           timeout=timeout)


@pytest.mark.filterwarnings("ignore:Credentials are sent over an unencrypted connection")
def test_journal_copies_over_lmtp_never_trigger_vacation(lab: Lab, spool: Spool) -> None:
    """Vacation answers a sender once per :days. The journal copy goes first; had sieve run on
    it, bob would have had his one reply then and none for the direct delivery after it."""
    bob, carol = lab.users[1], lab.users[2]
    activate_vacation(lab, carol.address, carol.password)
    journaled = make_message(bob.address, [carol.address], "journal copy, no vacation")
    entry, envelope = spool_message(spool, journaled, [Target(carol.address, "INBOX")],
                                    sender=bob.address)
    ship_through_shipper(lab, spool, LmtpSink(lmtp_settings(lab), lab.tls("standby")))
    assert fetch_by_header(lab, "standby", carol, DEFAULT_ID_HEADER, envelope.id)
    # The same user over the standby's normal (sieve) LMTP listener: vacation answers.
    direct = make_message(bob.address, [carol.address], "direct delivery, vacation")
    standby_lmtp = lab.endpoint("standby", "lmtp")
    with smtplib.LMTP(standby_lmtp.host, standby_lmtp.port, timeout=30) as client:
        client.send_message(direct, from_addr=bob.address, to_addrs=[carol.address])
    assert vacation_replies(lab, 1, direct["Message-ID"], timeout=30), \
        "vacation did not answer mail delivered over the sieve listener: the test proves nothing"
    assert not vacation_replies(lab, 1, journaled["Message-ID"], timeout=0)
    remove_vacation(lab, carol.address, carol.password)  # later tests see carol without it


def remove_vacation(lab: Lab, address: str, password: str) -> None:
    endpoint = lab.endpoint("standby", "sieve")
    client = SieveClient(endpoint.host, endpoint.port)
    assert client.connect(address, password, authmech="PLAIN"), "managesieve login failed"
    try:
        assert client.setactive("") and client.deletescript("away")
    finally:
        client.logout()


def test_prune_expunges_lmtp_copies_and_nothing_else(lab: Lab, spool: Spool) -> None:
    bob = lab.users[1]
    old = make_message(SENDER, [bob.address], "old lmtp journal copy")
    fresh = make_message(SENDER, [bob.address], "fresh lmtp journal copy")
    target = [Target(bob.address, "INBOX")]
    (old_entry, old_env), (fresh_entry, fresh_env) = (spool_message(spool, m, target)
                                                      for m in (old, fresh))
    ship_through_shipper(lab, spool, LmtpSink(lmtp_settings(lab), lab.tls("standby")))
    store = open_store(lab.config)
    outage = make_message(SENDER, [bob.address], "received during outage, same id header")
    outage[DEFAULT_ID_HEADER] = old_env.id  # the primary's id travels on real mail too
    with restored(lab):  # back to normal with the outage closed, whatever happens
        change_state(lab.config, store, "failover", "test: prune lmtp", "pytest")
        standby_lmtp = lab.endpoint("standby", "lmtp")
        with smtplib.LMTP(standby_lmtp.host, standby_lmtp.port, timeout=30) as client:
            client.send_message(outage, from_addr=SENDER, to_addrs=[bob.address])
    try:
        assert settled_copies(store, old_env.id) == {(bob.address, "INBOX")}
        with store.transaction() as db:  # as if accepted 31 days ago (retention is 30)
            db.execute("UPDATE journal SET received = received - 31 * 86400 WHERE message_id = ?",
                       [old_env.id])
    finally:
        store.close()
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "prune", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["deleted"], report["refused"], report["postponed"]) == (1, 0, 0)
    assert not fetch_by_header(lab, "standby", bob, "Message-ID", old["Message-ID"], timeout=0)
    assert fetch_by_header(lab, "standby", bob, "Message-ID", fresh["Message-ID"], timeout=0)
    assert fetch_by_header(lab, "standby", bob, "Message-ID", outage["Message-ID"], timeout=0)
    store = open_store(lab.config)
    try:
        assert settled_copies(store, fresh_env.id)
    finally:
        store.close()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> LabCertificates:
    """A CA that did not sign the lab's certificates: what a wrong tls_ca_file looks like."""
    return LabCertificates(tmp_path_factory.mktemp("other-ca")).create("some other CA")


def test_journal_lmtp_with_a_wrong_ca_keeps_the_copy_and_says_why(
        lab: Lab, spool: Spool, other_ca: LabCertificates) -> None:
    alice = lab.users[0]
    entry, envelope, _ = spool_for_alice(lab, spool, "wrong CA")
    distrusting = TLSPolicy("standby", "starttls", other_ca.ca_file, lab.config.source)
    shipper = Shipper(spool, LmtpSink(lmtp_settings(lab), distrusting),
                      lambda: open_store(lab.config), 0.2, 1.0)
    started = time.time()
    shipper.start()
    try:
        alarm = eventually(lambda: latest_ship_error(lab, since=started), 20,
                           "the shipper's alarm")
    finally:
        shipper.stop()
        shipper.join(timeout=10)
    assert "certificate not accepted" in alarm and str(other_ca.ca_file) in alarm
    assert "standby.tls_ca_file" in alarm
    assert [(r.segment, r.offset) for r in spool.records()] == [(entry.segment, entry.offset)], (
        "a copy the standby could not take must stay in the spool")
    # With the CA that signed the standby's certificate the same entry is shipped.
    ship_through_shipper(lab, spool, LmtpSink(lmtp_settings(lab), lab.tls("standby")))
    [copy] = fetch_by_header(lab, "standby", alice, DEFAULT_ID_HEADER, envelope.id)
    assert b"wrong CA" in copy


def test_journal_lmtp_never_falls_back_to_plaintext(lab: Lab, spool: Spool,
                                                    soft_rejecting_lmtp: Endpoint) -> None:
    """smtp-sink offers no STARTTLS: with TLS configured nothing is sent, not even MAIL FROM."""
    entry, envelope, target = spool_for_alice(lab, spool, "no tls")
    with entry.segment.open("rb") as handle, pytest.raises(TemporaryFailure,
                                                   match='does not offer STARTTLS.*tls = "none"'):
        LmtpSink(lmtp_settings(lab, lmtp=soft_rejecting_lmtp), lab.tls("standby")).ship(
            handle.fileno(), entry.message_offset, envelope, [target], recovered=False)


def latest_ship_error(lab: Lab, since: float) -> str | None:
    """The shipper's latest alarm as ``status`` shows it, if raised after ``since``."""
    store = open_store(lab.config)
    try:
        alarm = journal_summary(store)["last_ship_error"]
    finally:
        store.close()
    return alarm["detail"] if alarm and alarm["at"] >= since else None
