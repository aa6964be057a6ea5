"""The journal milter through the real lab gateway: ids, journal copies, failover, status, prune."""

from __future__ import annotations

import json
import os
import smtplib
import time

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.config import ConfigError, Endpoint, UnixSocket, parse_config
from mailcontinuity.journal.listener import libmilter_name
from mailcontinuity.lab import Lab
from mailcontinuity.lab.mailbox import INTERNET_CLIENT
from mailcontinuity.mail.headers import DEFAULT_ID_HEADER, JOURNAL_HEADER
from mailcontinuity.mail.postfix import postfix_milter_name
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.store.db import open_store
from mailcontinuity.store.journal import settled_copies
from tests.lab.backends import lab_on_both_stores
from tests.lab.journal_helpers import (
    fetch_by_header,
    journal_id,
    wait_for_empty_spool,
    without_trace,
)
from tests.lab.outage_helpers import forced_outage

SENDER = "sender@remote.test"

# The tests that read the journal index (the location, the failover, status, prune) run on both
# stores; those that look only at mail and settings run on the SQLite lab.
lab_fixture = lab_on_both_stores()


def test_every_recipient_gets_a_journal_copy_with_the_primarys_id(sqlite_lab: Lab) -> None:
    lab = sqlite_lab
    alice, bob = lab.users[0], lab.users[1]
    message = make_message(SENDER, [alice.address, bob.address], "journal basic")
    message[DEFAULT_ID_HEADER] = "forged-by-sender"
    message[JOURNAL_HEADER] = "forged too"
    send_message(lab.gateway.smtp, message, SENDER, [alice.address, bob.address])
    message_id = message["Message-ID"]
    for user in (alice, bob):
        [primary] = fetch_by_header(lab, "primary", user, "Message-ID", message_id)
        [standby] = fetch_by_header(lab, "standby", user, "Message-ID", message_id)
        assert b"forged" not in primary and b"forged" not in standby
        assert journal_id(primary) == journal_id(standby)
        assert JOURNAL_HEADER.encode() not in primary
        assert f"{JOURNAL_HEADER}: yes\r\n".encode() in standby
        assert without_trace(standby, (b"received:", b"return-path:", b"delivered-to:",
                                       JOURNAL_HEADER.lower().encode() + b":")) == \
            without_trace(primary)


def test_authenticated_sender_gets_a_sent_copy_through_the_real_gateway(sqlite_lab: Lab) -> None:
    lab = sqlite_lab
    alice, bob = lab.users[0], lab.users[1]
    message = make_message(alice.address, [bob.address], "sent with SMTP AUTH")
    submission = lab.config.gateway.submission
    assert submission is not None
    with smtplib.SMTP(submission.host, submission.port, timeout=30,
                      source_address=(INTERNET_CLIENT, 0)) as smtp:
        smtp.starttls(context=lab.tls("standby").context)  # the gateway's lab certificate
        smtp.login(alice.login, alice.password)
        smtp.send_message(message, from_addr=alice.address, to_addrs=[bob.address])
    [delivered] = fetch_by_header(lab, "primary", bob, "Message-ID", message["Message-ID"])
    [sent] = fetch_by_header(lab, "standby", alice, "Message-ID", message["Message-ID"],
                             folder="Sent")
    assert JOURNAL_HEADER.encode() in sent
    assert journal_id(sent) == journal_id(delivered)


def test_journal_file_is_a_maildir_message_dovecot_trusts(lab: Lab) -> None:
    carol = lab.users[2]
    message = make_message(SENDER, [carol.address], "journal file", "x" * 5000)
    send_message(lab.gateway.smtp, message, SENDER, [carol.address])
    [raw] = fetch_by_header(lab, "standby", carol, "Message-ID", message["Message-ID"])
    wait_for_empty_spool(lab.config.milter.spool_dir)
    store = open_store(lab.config)
    try:
        [location] = [row[0] for row in store.query(
            "SELECT location FROM journal WHERE message_id = ?", [journal_id(raw)])]
    finally:
        store.close()
    name = os.path.basename(location)
    size = os.path.getsize(location)
    assert f",S={size},W={size}" in name  # CRLF on disk: the size with CRLF is the size
    assert len(raw) == size
    stat = os.stat(location)
    assert (stat.st_uid, stat.st_gid) == (8, 8) and stat.st_mode & 0o777 == 0o600


def test_recipients_routed_to_the_standby_in_failover_are_not_journaled(lab: Lab) -> None:
    alice = lab.users[0]
    store = open_store(lab.config)
    message = make_message(SENDER, [alice.address], "during failover")
    with forced_outage(lab):
        send_message(lab.gateway.smtp, message, SENDER, [alice.address])
        copies = fetch_by_header(lab, "standby", alice, "Message-ID", message["Message-ID"])
    try:
        time.sleep(1)  # give a (wrong) journal copy the time to show up
        copies = fetch_by_header(lab, "standby", alice, "Message-ID", message["Message-ID"])
        assert len(copies) == 1, "the standby must hold the routed message exactly once"
        assert JOURNAL_HEADER.encode() not in copies[0]
        wait_for_empty_spool(lab.config.milter.spool_dir)
        assert settled_copies(store, journal_id(copies[0])) == set()
    finally:
        store.close()


def test_status_json_reports_the_journal(lab: Lab) -> None:
    alice = lab.users[0]
    message = make_message(SENDER, [alice.address, "nobody@example.test"], "status journal")
    send_message(lab.gateway.smtp, message, SENDER, [alice.address, "nobody@example.test"])
    fetch_by_header(lab, "standby", alice, "Message-ID", message["Message-ID"])
    wait_for_empty_spool(lab.config.milter.spool_dir)
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "status", "--json"])
    assert result.exit_code == 0, result.output
    journal = json.loads(result.stdout)["journal"]
    assert journal["spooled"] == 0 and journal["lag_seconds"] == 0
    assert journal["shipped"] >= 1
    assert "nobody@example.test" in journal["unknown_recipients"]
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "status"])
    assert "unknown recipients: " in result.stdout and "nobody@example.test" in result.stdout


def test_check_config_prints_the_milter_settings_the_lab_applies(sqlite_lab: Lab) -> None:
    lab = sqlite_lab
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "check-config"])
    assert result.exit_code == 0, result.output
    listen = lab.config.milter.listen
    assert isinstance(listen, UnixSocket), "the lab's milter listens on a unix socket"
    main_cf = (lab.gateway.config_dir / "main.cf").read_text()
    for line in (f"smtpd_milters = unix:{listen.path}", f"non_smtpd_milters = unix:{listen.path}",
                 "milter_default_action = accept"):
        assert f"postconf -e '{line}'" in result.stdout
        assert f"\n{line}\n" in main_cf
    assert "local 127.0.0.2 {" in result.stdout
    assert "local 127.0.0.2 {" in (lab.standby.config_file).read_text()


def test_prune_deletes_only_expired_journal_copies(lab: Lab) -> None:
    bob = lab.users[1]
    old = make_message(SENDER, [bob.address], "old journal copy")
    fresh = make_message(SENDER, [bob.address], "fresh journal copy")
    for message in (old, fresh):
        send_message(lab.gateway.smtp, message, SENDER, [bob.address])
    [old_raw] = fetch_by_header(lab, "standby", bob, "Message-ID", old["Message-ID"])
    fetch_by_header(lab, "standby", bob, "Message-ID", fresh["Message-ID"])
    # Mail bob received on the standby during an outage: no journal header, not in the index.
    store = open_store(lab.config)
    outage = make_message(SENDER, [bob.address], "received during outage")
    with forced_outage(lab):
        send_message(lab.gateway.smtp, outage, SENDER, [bob.address])
        assert fetch_by_header(lab, "standby", bob, "Message-ID", outage["Message-ID"])
    wait_for_empty_spool(lab.config.milter.spool_dir)
    try:
        with store.transaction() as db:  # as if accepted 31 days ago (retention is 30)
            db.execute("UPDATE journal SET received = received - 31 * 86400 WHERE message_id = ?",
                       [journal_id(old_raw)])
    finally:
        store.close()
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "prune", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"] >= 1
    assert json.loads(result.stdout)["refused"] == 0
    assert not fetch_by_header(lab, "standby", bob, "Message-ID", old["Message-ID"], timeout=0)
    assert fetch_by_header(lab, "standby", bob, "Message-ID", fresh["Message-ID"], timeout=0)
    assert fetch_by_header(lab, "standby", bob, "Message-ID", outage["Message-ID"], timeout=0)


def test_milter_listen_takes_a_unix_socket_or_a_tcp_endpoint(sqlite_lab: Lab) -> None:
    lab = sqlite_lab
    base = lab.config.model_dump(mode="json")

    def listen(value: str) -> Endpoint | UnixSocket:
        data = {**base, "milter": {**base["milter"], "listen": value}}
        return parse_config(data, lab.config_file).milter.listen

    queued = listen("unix:/var/spool/postfix/mailcontinuity/milter.sock")
    # Postfix daemons run in (maybe chrooted to) the queue directory: named relative to it.
    assert postfix_milter_name(queued) == "unix:mailcontinuity/milter.sock"
    assert libmilter_name(queued) == "unix:/var/spool/postfix/mailcontinuity/milter.sock"
    assert postfix_milter_name(listen("unix:/run/mc/milter.sock")) == "unix:/run/mc/milter.sock"
    tcp = listen("127.0.0.1:8891")
    assert (postfix_milter_name(tcp), libmilter_name(tcp)) == ("inet:127.0.0.1:8891",
                                                        "inet:8891@127.0.0.1")
    for bad in ("unix:relative.sock", "unix:/" + "x" * 120, "nowhere"):
        with pytest.raises(ConfigError, match="milter.listen"):
            listen(bad)
