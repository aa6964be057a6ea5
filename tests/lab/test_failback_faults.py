"""Failback when the primary fails under it: a lost connection is a retry, never a refusal.

An outage of many messages is written straight into the standby's Maildirs (the lab's
``outagemail``), on a lab of its own so the session's lab stays small. The size is a
parameter: ``MC_FAULT_MESSAGES`` (CI's default is small; docs/benchmarks.md has the 12,000 run).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imapclient.exceptions import IMAPClientError
from pytest_mock import MockerFixture

from mailcontinuity.lab import Lab
from mailcontinuity.lab.outagemail import record_outage
from mailcontinuity.mail.imap import Append, Mailbox
from mailcontinuity.outage.merge import run_failback
from mailcontinuity.outage.primary import PrimaryError, connect, read_admin_password
from mailcontinuity.outage.verify import verify
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog, Outage
from mailcontinuity.store.state import current_state
from tests.lab.backends import LAB_BACKENDS

MESSAGES = int(os.environ.get("MC_FAULT_MESSAGES", "800"))
SMALL = [(1, 300, 3_000)]


@pytest.fixture(scope="module", params=LAB_BACKENDS)
def fault_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A lab of the module's own, on each store backend in turn (the change log, the leases and
    the merge's progress are written under the faults)."""
    with Lab.temporary(prefix="mcfault-", state=request.param) as lab:
        # The test runs failback itself, as an operator would; the agent would race it. So
        # would the health monitor (policyd): a primary stopped mid-failback for longer than
        # the failure window ([health] failures = 3 rounds over 1 s in the lab; Dovecot's stop
        # takes 1 to 6 s on a busy machine) is a new outage, and the monitor rightly fails
        # over again (tests/unit/test_detector.py::
        # test_operator_failback_does_not_delay_a_new_failover). Whether it did then depended
        # on how long the stop took, not on the merge this module tests.
        lab.part("sync-agent").stop()
        lab.part("policyd").stop()
        yield lab


def outage_of(lab: Lab, count: int, seed: int) -> Outage:
    """Failover, the baseline, then ``count`` messages of outage mail recorded."""
    return record_outage(lab, count, random.Random(seed), SMALL, actor="test")[0]


def refused_rows(lab: Lab, outage: Outage) -> dict:
    store = open_store(lab.config)
    try:
        return ChangeLog(store).refused(outage.id)
    finally:
        store.close()


def state(lab: Lab) -> str:
    store = open_store(lab.config)
    try:
        return current_state(store).name
    finally:
        store.close()


def test_primary_stopped_at_40_percent_of_failback_then_rerun(fault_lab: Lab) -> None:
    lab = fault_lab
    outage = outage_of(lab, MESSAGES, 19)
    merged = 0
    stopped = threading.Event()

    def progress(count: int) -> None:
        nonlocal merged
        merged += count
        if merged >= 0.4 * MESSAGES and not stopped.is_set():
            stopped.set()
            lab.primary.stop()  # the other users' sessions die mid-command

    try:
        with pytest.raises(PrimaryError, match="connection was lost|is the primary up"):
            run_failback(lab.config, actor="test", progress=progress)
    finally:
        lab.primary.start()
    assert stopped.is_set()
    assert refused_rows(lab, outage) == {}, "a lost connection was recorded as a refusal"
    assert state(lab) == "failback"

    report = run_failback(lab.config, actor="test")
    assert report.state == "normal" and report.refused == []
    assert refused_rows(lab, outage) == {}
    audit = verify(lab.config)
    assert audit["ok"], audit


def test_a_refusal_is_retried_by_failback_after_the_merge_and_stale_rows_clear(
        fault_lab: Lab, mocker: MockerFixture) -> None:
    """The primary's own NO is a refusal (kept on the standby, exit 1); once the cause is fixed
    ``failback --yes`` appends only those; a refused message the primary holds by then (an
    APPEND whose answer was lost, or one appended by hand) is cleared, not appended again."""
    lab = fault_lab
    outage = outage_of(lab, 12, 20)
    real_append = Mailbox.append

    def over_quota(self: Mailbox, folder: str, items: list) -> None:
        if any(b"Subject: bench 3\r\n" in item.message or b"Subject: bench 5\r\n" in item.message
               for item in items):
            raise IMAPClientError("APPEND command error: NO [OVERQUOTA] Quota exceeded")
        real_append(self, folder, items)

    patched = mocker.patch.object(Mailbox, "append", over_quota)
    report = run_failback(lab.config, actor="test")
    assert report.state == "normal"
    assert len(report.refused) == 2 and all("OVERQUOTA" in i["server_said"]
                                            for i in report.refused)
    assert len(refused_rows(lab, outage)) == 2
    mocker.stop(patched)

    # The operator appends one of them by hand (as an older runbook said), fixes the quota and
    # runs failback again: the other one is appended, the hand-made copy is not doubled.
    by_hand = report.refused[0]
    lab_mailbox_append_by_hand(lab, by_hand)
    again = run_failback(lab.config, actor="test")
    assert again.state == "normal" and again.refused == []
    assert again.counts.get("append:done") == 1, again.counts
    assert refused_rows(lab, outage) == {}
    audit = verify(lab.config)
    assert audit["ok"], audit["users"]
    assert run_failback(lab.config, actor="test").note == "no outage to merge"


def lab_mailbox_append_by_hand(lab: Lab, refused: dict) -> None:
    """What the operator would do: APPEND the standby file named in the report."""
    data = Path(refused["kept_on_standby"]).read_bytes().replace(b"\n", b"\r\n")
    mailbox = connect(lab.config, refused["user"], read_admin_password(lab.config))
    try:
        mailbox.append(refused["folder"], [Append(data, (), datetime.now(UTC))])
    finally:
        mailbox.close()
