"""One id header everywhere: a whole outage on a lab whose milter.id_header is not the default,
with every message arriving with the default header already set (the same value on all, as a
sender could forge it). The sync agent, failback and verify read only the configured header:
each message merged once, verify clean."""

from __future__ import annotations

import time
from email.parser import BytesHeaderParser
from pathlib import Path

from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT, wait_for_message
from mailcontinuity.lab.scenario import SENDER, OutageScenario, SentMessage
from mailcontinuity.mail.headers import DEFAULT_ID_HEADER
from mailcontinuity.mail.smtp import make_message, send_message
from tests.lab.outage_helpers import run_cli

CUSTOM = "X-Corp-Continuity-Id"
FORGED = "forged-by-a-sender"


class ForgingScenario(OutageScenario):
    """The lab's scripted outage, every message arriving with ``X-Mailcontinuity-Id: FORGED``."""

    def send(self, recipients: list[str], subject: str, phase: str) -> SentMessage:
        message = make_message(SENDER, recipients, subject)
        message[DEFAULT_ID_HEADER] = FORGED
        send_message(self.lab.gateway.smtp, message, SENDER, recipients, source=INTERNET_CLIENT)
        sent = SentMessage(message["Message-ID"], recipients, phase, time.monotonic())
        self.report.sent.append(sent)
        return sent


def with_id_header(directory: Path, header: str) -> Lab:
    """A new lab whose milter stamps ``header`` (its daemons started with that configuration)."""
    Lab.up(directory)
    Lab.down(directory)
    config = directory / "mailcontinuity.toml"
    config.write_text(config.read_text().replace("\n[milter]\n",
                                                 f'\n[milter]\nid_header = "{header}"\n', 1))
    return Lab.up(directory)


def test_an_outage_with_another_id_header_ignores_a_forged_default_one(
        fresh_lab_dir: Path) -> None:
    lab = with_id_header(fresh_lab_dir, CUSTOM)
    assert lab.config.milter.id_header == CUSTOM
    scenario = ForgingScenario(lab)
    scenario.before_outage()
    scenario.force_failover()
    scenario.during_outage()
    scenario.activity_on_standby()
    outage_mail = [sent for sent in scenario.report.sent if sent.phase == "outage"]
    eventually(lambda: run_cli(lab, "status", "--json")[1]["outage"]["activity"]
               ["new_messages"] >= sum(len(sent.recipients) for sent in outage_mail), 15,
               "the agent's record of the outage mail")

    code, report = run_cli(lab, "failback", "--yes", "--json")
    assert code == 0 and report["state"] == "normal", report
    assert report["refused"] == [] and report["reports"] == []
    merged = scenario.check_primary()
    assert (merged.lost, merged.duplicated, merged.misplaced) == ([], [], [])
    code, audit = run_cli(lab, "verify", "--json")
    assert code == 0 and audit["ok"], audit

    # On the primary the configured header carries the gateway's own id; the forged default
    # is still there, a header like any other.
    alice = lab.users[0]
    raw = wait_for_message(lab.endpoint("primary", "imap"), alice.login, alice.password,
                           outage_mail[0].message_id)
    assert raw is not None
    headers = BytesHeaderParser().parsebytes(raw)
    assert headers.get_all(CUSTOM) and headers[CUSTOM] != FORGED
    assert headers.get_all(DEFAULT_ID_HEADER) == [FORGED]
