"""Hostile input against the lab's running policyd, and policyd hung: mail still flows."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT, wait_for_message
from mailcontinuity.mail.smtp import make_message, send_message
from tests.lab.policyd_helpers import ask_policyd, back_to_normal, rcpt_request

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))

attribute = st.tuples(st.text(min_size=0, max_size=20), st.text(max_size=80))
blocks = st.lists(attribute, max_size=30).map(
    lambda pairs: "".join(f"{name}={value}\n" for name, value in pairs).encode(
        "utf-8", errors="surrogateescape") + b"\n")
oversized = st.builds(lambda n, unit: unit * n, st.integers(20000, 60000),
                      st.sampled_from([b"x", b"a=b\n", b"\n", b"\r\n"]))
payloads = st.one_of(st.binary(max_size=3000), blocks, oversized,
                     st.lists(blocks, min_size=2, max_size=5).map(b"".join))
# Recipients in a protected domain that reach the standby LMTP check in failover.
odd_recipients = st.text(max_size=60).map(lambda local: f"{local}@example.test")


def well_formed(reply: bytes) -> bool:
    """Zero or more complete ``action=...`` blocks, nothing else."""
    if not reply:
        return True
    parts = reply.split(b"\n\n")
    return parts[-1] == b"" and all(p.startswith(b"action=") and b"\n" not in p
                                    for p in parts[:-1])


@pytest.fixture(scope="module")
def policyd_pid(lab: Lab) -> Iterator[int]:
    back_to_normal(lab)
    pid = lab.part("policyd").pid()
    assert pid is not None
    yield pid
    back_to_normal(lab)


@FUZZ
@given(payload=payloads)
def test_any_input_gets_actions_or_a_close_and_policyd_survives(
    lab: Lab, policyd_pid: int, payload: bytes
) -> None:
    assert well_formed(ask_policyd(lab, payload))
    assert lab.part("policyd").pid() == policyd_pid


@pytest.fixture
def in_failover(lab: Lab, policyd_pid: int) -> Iterator[None]:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "failover",
                                       "--reason", "fuzz"])
    assert result.exit_code == 0, result.output
    eventually(lambda: ask_policyd(lab, rcpt_request("nobody@example.test")).startswith(
        b"action=450"), 5, "policyd sees the failover")
    yield
    back_to_normal(lab)


@FUZZ
@given(recipient=odd_recipients)
def test_odd_recipients_in_failover_are_answered(lab: Lab, policyd_pid: int, in_failover: None,
                                                 recipient: str) -> None:
    reply = ask_policyd(lab, rcpt_request(recipient.replace("\n", "")))
    assert well_formed(reply) and reply
    assert lab.part("policyd").pid() == policyd_pid


def test_policyd_still_answers_after_the_fuzzing(lab: Lab, policyd_pid: int) -> None:
    back_to_normal(lab)
    assert ask_policyd(lab, rcpt_request(lab.users[0].address)) == b"action=DUNNO\n\n"
    assert lab.part("policyd").pid() == policyd_pid


def test_hung_policyd_costs_the_timeout_not_the_mail(lab: Lab, policyd_pid: int) -> None:
    alice = lab.users[0]
    os.kill(policyd_pid, signal.SIGSTOP)
    try:
        message = make_message("partner@remote.test", [alice.address], "policyd hung")
        started = time.monotonic()
        send_message(lab.gateway.smtp, message, "partner@remote.test", [alice.address],
                     source=INTERNET_CLIENT)
        waited = time.monotonic() - started
    finally:
        os.kill(policyd_pid, signal.SIGCONT)
    assert waited < lab.config.policyd.postfix_timeout_seconds + 3
    assert wait_for_message(lab.endpoint("primary", "imap"), alice.login, alice.password,
                            message["Message-ID"])
    eventually(lambda: ask_policyd(lab, rcpt_request(alice.address)) == b"action=DUNNO\n\n",
               10, "policyd answers again after SIGCONT")
