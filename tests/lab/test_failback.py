"""Failback on the lab: a scripted outage merged into the primary, each message exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from imapclient.exceptions import IMAPClientError

from mailcontinuity.cli.main import main
from mailcontinuity.deploy.routing import transport_entries
from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.scenario import OutageScenario, restored
from mailcontinuity.mail.headers import SIZED_KEYS
from mailcontinuity.mail.imap import Append, imap_login
from mailcontinuity.outage.primary import connect, read_admin_password
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.store.state import current_state
from tests.lab.backends import lab_on_both_stores
from tests.lab.outage_helpers import deliver_stored_copy, wait_all

lab_fixture = lab_on_both_stores()  # these tests touch the store: run on both


def invoke(lab: Lab, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout) if "--json" in args else {}


def scripted_outage(lab: Lab) -> OutageScenario:
    """The lab's scripted outage up to the end of the users' activity on the standby, with a
    forced failover: the test ends it with its own failback."""
    scenario = OutageScenario(lab)
    scenario.before_outage()
    scenario.force_failover()
    scenario.during_outage()
    scenario.activity_on_standby()
    return scenario


def assert_merged_once(scenario: OutageScenario) -> None:
    report = scenario.check_primary()
    assert (report.lost, report.duplicated, report.misplaced) == ([], [], [])


def test_scripted_outage_merges_each_message_once_and_verify_is_clean(lab: Lab) -> None:
    with restored(lab):
        scenario = scripted_outage(lab)
        # The agent records within a second or so of each change.
        status = eventually(lambda: (got := invoke(lab, "status", "--json")[1])["outage"]
                            ["activity"]["new_messages"] >= 8 and got, 10,
                            "the agent's record of the outage activity")
        activity = status["outage"]["activity"]
        assert activity["new_folders"] >= 1, activity
        assert activity["history_flagged"] >= 1 and status["outage"]["status"] == "recording"
        code, plan = invoke(lab, "failback", "--dry-run", "--json")
        assert code == 0
        assert plan["counts"]["append"] >= 7 and plan["state"] == "failover"

        code, report = invoke(lab, "failback", "--yes", "--json")
        assert code == 0, report
        assert report["state"] == "normal" and report["refused"] == []
        assert_merged_once(scenario)
        code, audit = invoke(lab, "verify", "--json")
        assert code == 0 and audit["ok"], audit

        store = open_store(lab.config)
        try:
            assert current_state(store).name == "normal"
            moves = [e.to_state for e in audit_log(store) if e.event == "transition"][-3:]
            assert moves == ["failover", "failback", "normal"]
        finally:
            store.close()
        routes = lab.config.gateway.transport_map.read_text()
        assert transport_entries(lab.config, "primary")[0] in routes.splitlines()

        code, again = invoke(lab, "failback", "--yes", "--json")
        assert code == 0 and again["note"] == "no outage to merge"


def test_an_outage_recorded_before_the_key_change_merges_with_the_keys_it_was_recorded_with(
        lab: Lab) -> None:
    """An outage the code before migration 13 opened (its ``key_scheme`` is the column's
    default, ``SIZED_KEYS``), recorded and merged after the upgrade: the draft and the Sent
    copy written on the standby keep Message-ID-with-size keys on both sides (Dovecot's sizes
    are exact), merged once, verify clean, the run's last pass finds nothing to do."""
    agent = lab.part("sync-agent")
    with restored(lab):
        scenario = OutageScenario(lab)
        scenario.before_outage()
        agent.stop()
        try:
            store = open_store(lab.config)
            try:
                with store.transaction():  # what the older code's start_outage wrote
                    store.execute("INSERT INTO sync_outage (started_at, status)"
                                  " VALUES (?, 'recording')", [time.time()])
            finally:
                store.close()
        finally:
            agent.start()
        scenario.force_failover()
        scenario.during_outage()
        scenario.activity_on_standby()
        draft = scenario.activity["draft"]
        store = open_store(lab.config)
        try:
            changelog = ChangeLog(store)
            outage = changelog.open_outage()
            assert outage is not None and outage.key_scheme == SIZED_KEYS
            rows = eventually(lambda: [row for row in changelog.messages(outage.id)
                                       if row.message_id == draft], 15, "the draft's record")
            assert rows[0].key.startswith(f"mid:{draft}:"), rows
        finally:
            store.close()
        code, report = invoke(lab, "failback", "--yes", "--json")
        assert code == 0 and report["refused"] == [], report
        assert report["passes"] >= 2, report
        assert_merged_once(scenario)
        code, audit = invoke(lab, "verify", "--json")
        assert code == 0 and audit["ok"], audit


def imap_uidvalidity(lab: Lab, user: LabUser) -> int:
    with imap_login(lab.endpoint("primary", "imap"), user.login, user.password) as client:
        return int(client.folder_status("INBOX", ["UIDVALIDITY"])[b"UIDVALIDITY"])


@pytest.mark.parametrize("new_uidvalidity", [False, True], ids=["same", "uidvalidity-changed"])
def test_failback_killed_halfway_and_rerun_gives_the_same_result(
    lab: Lab, new_uidvalidity: bool
) -> None:
    agent = lab.part("sync-agent")
    with restored(lab):
        scenario = scripted_outage(lab)
        agent.stop()  # or it would take over the interrupted merge itself
        try:
            crashed = subprocess.run(
                [sys.executable, str(Path(__file__).with_name("crash_failback.py")),
                 str(lab.config_file), "4"], capture_output=True, timeout=120, check=False)
            assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()
            store = open_store(lab.config)
            try:
                assert current_state(store).name == "failback"
                outage = ChangeLog(store).open_outage()
                assert outage is not None and ChangeLog(store).progress_counts(outage.id)
            finally:
                store.close()
            if new_uidvalidity:
                alice = lab.users[0]
                before = imap_uidvalidity(lab, alice)
                inbox = lab.primary.maildir(alice.address)
                for stale in [inbox / "dovecot-uidlist", *inbox.glob("dovecot.index*")]:
                    stale.unlink()
                assert imap_uidvalidity(lab, alice) != before

            code, report = invoke(lab, "failback", "--yes", "--json")
            assert code == 0 and report["state"] == "normal", report
        finally:
            agent.start()
        assert_merged_once(scenario)
        code, audit = invoke(lab, "verify", "--json")
        assert code == 0 and audit["ok"], audit


def test_queued_copies_delivered_to_the_primary_before_failback_are_not_duplicated(
    lab: Lab,
) -> None:
    with restored(lab):
        scenario = scripted_outage(lab)
        # The primary is back and Postfix delivers copies it still had queued for it.
        for sent in scenario.report.sent:
            if sent.phase == "outage":
                recipients = [scenario.users[address] for address in sent.recipients]
                deliver_stored_copy(lab, "standby", "primary", sent.message_id, recipients)
                wait_all(lab, "primary", recipients, sent.message_id)
        code, report = invoke(lab, "failback", "--yes", "--json")
        assert code == 0, report
        assert report["counts"].get("move:done") == 1  # alice's moved message
        assert_merged_once(scenario)
        code, audit = invoke(lab, "verify", "--json")
        assert code == 0 and audit["ok"], audit


def test_multiappend_keeps_flags_and_dates_and_raises_when_the_primary_refuses(lab: Lab) -> None:
    """The batch APPEND failback uses: each message with its flags and INTERNALDATE; a NO from
    the primary is an error (so the batch is retried one by one and refusals are reported),
    never a silent success."""
    user = lab.users[1]
    mailbox = connect(lab.config, user.address, read_admin_password(lab.config))
    when = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    subject = f"multiappend {uuid.uuid4().hex}"
    items = [Append(f"From: a@remote.test\r\nSubject: {subject}\r\n\r\nbody {n}\r\n".encode(),
                    flags, when) for n, flags in enumerate([("\\Seen",), ("$Forwarded",), ()])]
    try:
        with pytest.raises(IMAPClientError, match="TRYCREATE"):
            mailbox.append("No such folder", items)
        mailbox.append("INBOX", items)
        mailbox.select("INBOX")
        uids = mailbox.client.search(["SUBJECT", subject])
        found = mailbox.client.fetch(uids, ["FLAGS", "INTERNALDATE", "BODY.PEEK[TEXT]"])
        stored = sorted((data[b"BODY[TEXT]"], set(data[b"FLAGS"]) - {b"\\Recent"},
                         data[b"INTERNALDATE"].astimezone(UTC))  # naive is local
                        for data in found.values())
        assert stored == [(f"body {n}\r\n".encode(), {flag.encode() for flag in item.flags},
                           when) for n, item in enumerate(items)]
        mailbox.client.delete_messages(uids)
        mailbox.client.expunge()
    finally:
        mailbox.close()
