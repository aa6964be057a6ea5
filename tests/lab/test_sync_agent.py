"""The sync agent on the lab: records only during an outage, and a restart loses nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyinotify

from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.scenario import restored
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.outage.recorder import SyncAgent
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog, RecordedMessage
from tests.lab.backends import lab_on_both_stores
from tests.lab.outage_helpers import (
    begin_outage,
    gateway_mail,
    uid_of,
    wait_all,
)

lab_fixture = lab_on_both_stores()  # these tests touch the store: run on both


def recorded(lab: Lab, message_id: str) -> list[RecordedMessage]:
    store = open_store(lab.config)
    try:
        changelog = ChangeLog(store)
        outage = changelog.open_outage()
        if outage is None:
            return []
        return [row for row in changelog.messages(outage.id) if row.message_id == message_id]
    finally:
        store.close()


def wait_recorded(lab: Lab, message_id: str, check: Callable[[Any], bool],
                  timeout: float = 15) -> None:
    eventually(lambda: check(recorded(lab, message_id)), timeout,
               f"{message_id} recorded as expected")


def test_agent_records_delivery_and_flag_change_events_during_failover(lab: Lab) -> None:
    alice = lab.users[0]
    with restored(lab):
        begin_outage(lab)
        message = gateway_mail(lab, [alice], "watched by inotify")
        wait_all(lab, "standby", [alice], message["Message-ID"])
        wait_recorded(lab, message["Message-ID"],
                      lambda rows: [r.kind for r in rows if r.present] == ["outage"])
        with imap_login(lab.endpoint("standby", "imap"), alice.login, alice.password) as client:
            client.select_folder("INBOX")
            client.add_flags([uid_of(client, message["Message-ID"])], [b"\\Flagged"])
        wait_recorded(lab, message["Message-ID"],
                      lambda rows: any("\\Flagged" in r.flags for r in rows if r.present))


def test_agent_restart_rescans_what_it_missed(lab: Lab) -> None:
    bob = lab.users[1]
    agent = lab.part("sync-agent")
    with restored(lab):
        begin_outage(lab)
        agent.stop()
        try:
            message = gateway_mail(lab, [bob], "delivered while the agent was down")
            wait_all(lab, "standby", [bob], message["Message-ID"])
            assert recorded(lab, message["Message-ID"]) == []
        finally:
            agent.start()
        wait_recorded(lab, message["Message-ID"],
                      lambda rows: [r.kind for r in rows if r.present] == ["outage"])


def test_queue_overflow_triggers_a_full_rescan(lab: Lab) -> None:
    agent = SyncAgent(lab.config)
    try:
        agent.rescan_all = False
        event = pyinotify.Event({"mask": pyinotify.IN_Q_OVERFLOW, "wd": -1, "path": "",
                                 "name": ""})
        agent.process_IN_Q_OVERFLOW(event)
        assert agent.rescan_all
    finally:
        agent.notifier.stop()
        agent.store.close()


def test_nothing_is_recorded_outside_an_outage(lab: Lab) -> None:
    carol = lab.users[2]
    message = gateway_mail(lab, [carol], "normal times")
    wait_all(lab, "standby", [carol], message["Message-ID"])  # the milter's journal copy
    time.sleep(1)  # the agent sees the event within its 0.5 s poll
    store = open_store(lab.config)
    try:
        [(rows,)] = store.query("SELECT COUNT(*) FROM sync_message WHERE message_id = ?",
                                [message["Message-ID"]])
    finally:
        store.close()
    assert rows == 0
