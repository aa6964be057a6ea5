"""No failover to a standby that is down: mail waits in Postfix's queue for the primary, status
says both are down, and the failover proceeds once the standby is back; an operator's failover
asks for --force."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT, wait_for_message
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.monitor.guard import HELD, HOLD_ENDED
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.db import open_store
from tests.lab.backends import lab_on_both_stores
from tests.lab.outage_helpers import on_primary_once
from tests.lab.policyd_helpers import back_to_normal, lab_state, wait_for_state

SENDER = "partner@remote.test"

lab_fixture = lab_on_both_stores()  # the hold and the transitions are in the store: both


@dataclass(frozen=True)
class Outage:
    """When the test's outage began, and where the gateway's log was then."""

    started: float
    log_offset: int


@pytest.fixture
def both_down(lab: Lab) -> Iterator[Outage]:
    """The standby stopped, then the primary: yields when the monitor has held a failover;
    afterwards everything runs and the lab is in normal again."""
    back_to_normal(lab)
    outage = Outage(time.time(), lab.gateway.log_file.stat().st_size)
    lab.part("standby").stop()
    lab.part("primary").stop()
    try:
        eventually(lambda: HELD in audit_events(lab, outage.started), 20,
                   "the monitor holding failover")
        yield outage
    finally:
        lab.part("standby").start()
        back_to_normal(lab)


def audit_events(lab: Lab, since: float) -> list[str]:
    store = open_store(lab.config)
    try:
        return [entry.event for entry in audit_log(store, since=since)]
    finally:
        store.close()


def send(lab: Lab, recipient: str, subject: str) -> str:
    """From the internet; a refusal or a bounce would raise or show in the queue."""
    message = make_message(SENDER, [recipient], subject)
    send_message(lab.gateway.smtp, message, SENDER, [recipient], source=INTERNET_CLIENT)
    return str(message["Message-ID"])


def status_json(lab: Lab) -> dict:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "status", "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def no_bounces(lab: Lab, outage: Outage) -> bool:
    """The gateway's log since the outage began has no bounce (nor a refusal)."""
    with open(lab.gateway.log_file, "rb") as log:
        log.seek(outage.log_offset)
        text = log.read().decode(errors="replace")
    return "status=bounced" not in text and " reject: " not in text


def test_no_failover_to_a_dead_standby_and_mail_waits_for_the_primary(
        lab: Lab, both_down: Outage) -> None:
    alice = lab.users[0]
    assert no_bounces(lab, both_down)
    message_id = send(lab, alice.address, "while the primary and the standby are down")
    detection = (lab.config.health.failures * lab.config.health.interval_seconds
                 + lab.config.health.failure_window_seconds)
    time.sleep(3 * detection)  # a failover would have happened by now
    assert lab_state(lab).name == "normal"
    assert any(recipient["address"] == alice.address for entry in lab.gateway.queued()
               for recipient in entry["recipients"]), "the message waits in Postfix's queue"
    report = status_json(lab)
    problems = {problem["part"]: problem for problem in report["problems"]}
    assert {"primary", "standby"} <= problems.keys()
    assert "the standby is down too" in problems["primary"]["detail"]
    assert "waits in Postfix's queue" in problems["primary"]["detail"]

    lab.part("primary").start()
    found = wait_for_message(lab.endpoint("primary", "imap"), alice.login, alice.password,
                             message_id, timeout=90)
    assert found, "the queued message reached the primary when it came back"
    assert lab_state(lab).name == "normal" and no_bounces(lab, both_down)
    eventually(lambda: HOLD_ENDED in audit_events(lab, both_down.started), 15, "the hold ended")
    assert "failover" not in [e.to_state for e in _transitions(lab, both_down.started)]


def test_failover_proceeds_when_the_standby_comes_back_first(lab: Lab,
                                                             both_down: Outage) -> None:
    bob = lab.users[1]
    message_id = send(lab, bob.address, "queued while both were down, then to the standby")
    lab.part("standby").start()
    wait_for_state(lab, "failover", timeout=30)
    found = wait_for_message(lab.endpoint("standby", "imap"), bob.login, bob.password,
                             message_id, timeout=60)
    assert found, "the queued mail went to the standby once the failover proceeded"
    assert no_bounces(lab, both_down)
    events = audit_events(lab, both_down.started)
    assert events.index(HELD) < events.index(HOLD_ENDED)
    lab.part("primary").start()
    back_to_normal(lab)
    assert on_primary_once(lab, bob, message_id) == ["INBOX"]


def test_an_operators_failover_to_a_dead_standby_needs_force(sqlite_lab: Lab) -> None:
    """On the SQLite lab only: the refusal is decided by live checks of the standby, and the
    forced failover is the operator's transition test_failover runs on both stores."""
    lab = sqlite_lab
    back_to_normal(lab)
    lab.part("standby").stop()
    try:
        args = ["--config", str(lab.config_file), "failover", "--reason", "test", "--json"]
        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 1
        assert "the standby fails its checks" in refused.stderr and "--force" in refused.stderr
        assert lab_state(lab).name == "normal"
        forced = CliRunner().invoke(main, [*args, "--force"])
        assert forced.exit_code == 0, forced.output
        assert "warning: the standby fails its checks" in forced.stderr
        assert json.loads(forced.stdout)["changed"] is True
        assert lab_state(lab).name == "failover"
    finally:
        lab.part("standby").start()
        back_to_normal(lab)


def _transitions(lab: Lab, since: float) -> list:
    store = open_store(lab.config)
    try:
        return [entry for entry in audit_log(store, since=since) if entry.event == "transition"]
    finally:
        store.close()
