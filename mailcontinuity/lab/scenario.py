"""The scripted outage on the lab: what ``make demo`` runs and what the end-to-end test checks.

Mail before; the primary killed; mail during (one message with three recipients); a user reading,
flagging, moving, drafting and sending on the standby; the primary back; failback. Everything is
measured from the outside, the way a user or an auditor would see it: SMTP in, IMAP out, and
``status`` for the state. Nothing here reaches into the daemons.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import partial

from imapclient import IMAPClient

from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.lab.lab import Lab
from mailcontinuity.lab.mailbox import INTERNET_CLIENT, locate
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.reports.status import collect_status
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.db import StateStore, open_store

SENDER = "partner@remote.test"
JOURNAL_FIELD = f"BODY.PEEK[HEADER.FIELDS ({JOURNAL_HEADER})]"
JOURNAL_FIELD_REPLY = f"BODY[HEADER.FIELDS ({JOURNAL_HEADER.upper()})]".encode()
MOVED_TO_FOLDER = "Projekte/Übersicht"


class ScenarioError(Exception):
    """A step did not happen within its time limit; the message names the step."""


@dataclass
class SentMessage:
    """A message the scenario created; ``recipients`` are the mailboxes that must hold it."""

    message_id: str
    recipients: list[str]
    phase: str
    sent_at: float


@dataclass
class OutageReport:
    """What the scenario measured; ``lost`` and ``duplicated`` must be zero."""

    sent: list[SentMessage] = field(default_factory=list)
    detection_seconds: float | None = None
    rto_seconds: float | None = None
    journal_lag_seconds: float | None = None
    journaled: int = 0
    routed_to_standby: int = 0
    failback_seconds: float | None = None
    merged: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    activity_checks: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.lost and not self.duplicated and all(self.activity_checks.values())

    def rows(self) -> list[tuple[str, str]]:
        def seconds(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1f} s"

        deliveries = sum(len(message.recipients) for message in self.sent)
        return [
            ("messages sent (deliveries)", f"{len(self.sent)} ({deliveries})"),
            ("journal lag (slowest copy)", seconds(self.journal_lag_seconds)),
            ("journaled into the standby", str(self.journaled)),
            ("outage detected after", seconds(self.detection_seconds)),
            ("first mail in standby after (RTO)", seconds(self.rto_seconds)),
            ("delivered to the standby in the outage", str(self.routed_to_standby)),
            ("failback took", seconds(self.failback_seconds)),
            ("merged into the primary", str(self.merged)),
            *[(f"activity: {name}", "ok" if ok else "FAILED")
              for name, ok in self.activity_checks.items()],
            ("lost (must be 0)", str(len(self.lost))),
            ("duplicated (must be 0)", str(len(self.duplicated))),
        ]


def wait_until(what: str, condition: Callable[[], bool], timeout: float,
               interval: float = 0.2) -> float:
    """Seconds until ``condition`` held; ScenarioError naming ``what`` after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise ScenarioError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - started


def audit_deliveries(lab: Lab, deliveries: list[tuple[str, str, list[str]]]
                     ) -> tuple[list[str], list[str]]:
    """(lost, duplicated) for ``(label, message_id, recipients)`` deliveries: each must be in
    every recipient's primary mailbox exactly once (any folder). One IMAP login per user."""
    users = {user.address: user for user in lab.users}
    wanted: dict[str, list[tuple[str, str]]] = {}
    for label, message_id, recipients in deliveries:
        for address in recipients:
            wanted.setdefault(address, []).append((label, message_id))
    lost: list[str] = []
    duplicated: list[str] = []
    for address, messages in wanted.items():
        user = users[address]
        with imap_login(lab.endpoint("primary", "imap"), user.login, user.password) as client:
            for label, message_id in messages:
                found = locate(client, message_id)
                total = sum(len(uids) for uids in found.values())
                if total == 0:
                    lost.append(f"{address} {label}")
                elif total > 1:
                    duplicated.append(f"{address} {label} {found}")
    return lost, duplicated


class OutageScenario:
    """One run of the outage drill against a lab that is up (with all its daemons)."""

    def __init__(self, lab: Lab, detection_timeout: float = 60.0,
                 failback_timeout: float = 180.0) -> None:
        self.lab = lab
        self.report = OutageReport()
        self.detection_timeout = detection_timeout
        self.failback_timeout = failback_timeout
        self.users = {user.address: user for user in lab.users}
        self.store = open_store(lab.config)
        self.started = time.time()

    # -- helpers -----------------------------------------------------------------------------

    def status(self) -> dict:
        return collect_status(self.lab.config, self.store)

    def send(self, recipients: list[str], subject: str, phase: str) -> SentMessage:
        message = make_message(SENDER, recipients, subject)
        send_message(self.lab.gateway.smtp, message, SENDER, recipients, source=INTERNET_CLIENT)
        sent = SentMessage(message["Message-ID"], recipients, phase, time.monotonic())
        self.report.sent.append(sent)
        return sent

    def mailbox(self, role: str, user: LabUser):
        return imap_login(self.lab.endpoint(role, "imap"), user.login, user.password)

    def arrived(self, role: str, sent: SentMessage, folder: str = "INBOX",
                journal: bool = False) -> bool:
        """Every recipient has the message in ``folder``: a journal copy if ``journal``, else
        a delivered one (on the standby during an outage both may be there)."""
        for address in sent.recipients:
            with self.mailbox(role, self.users[address]) as client:
                client.select_folder(folder, readonly=True)
                uids = client.search(["HEADER", "Message-ID", sent.message_id])
                headers = client.fetch(uids, [JOURNAL_FIELD]).values() if uids else []
                if not any((JOURNAL_HEADER.encode() in data[JOURNAL_FIELD_REPLY]) == journal
                           for data in headers):
                    return False
        return True

    # -- the phases ----------------------------------------------------------------------------

    def run(self) -> OutageReport:
        self.before_outage()
        self.outage()
        self.activity_on_standby()
        self.recovery()
        self.audit_primary()
        return self.report

    def before_outage(self) -> None:
        addresses = list(self.users)
        batch = [self.send([address], f"before outage {n}", "before")
                 for n, address in enumerate(addresses * 2)]
        for sent in batch:
            wait_until("delivery to the primary before the outage",
                       partial(self.arrived, "primary", sent), 30)
        slowest = 0.0
        for sent in batch:
            wait_until("journal copy in the standby",
                       partial(self.arrived, "standby", sent, journal=True), 30)
            slowest = max(slowest, time.monotonic() - sent.sent_at)
        self.report.journal_lag_seconds = slowest
        journal = self.status().get("journal") or {}
        self.report.journaled = int(journal.get("shipped", 0))

    def outage(self) -> None:
        killed_at = time.monotonic()
        self.lab.part("primary").stop()
        probe = self.send([next(iter(self.users))], "first message of the outage", "outage")
        self.report.rto_seconds = wait_until(
            "first message in the standby after the primary died",
            lambda: self.arrived("standby", probe), self.detection_timeout) + (
            probe.sent_at - killed_at)
        self.report.detection_seconds = self._state_changed_after(killed_at, "failover")
        addresses = list(self.users)
        during = [self.send([address], f"during outage {n}", "outage")
                  for n, address in enumerate(addresses)]
        during.append(self.send(addresses, "during outage, to everyone", "outage"))
        for sent in during:
            wait_until("delivery to the standby during the outage",
                       partial(self.arrived, "standby", sent), 30)
        self.report.routed_to_standby = len(during) + 1

    def _state_changed_after(self, since_monotonic: float, state: str) -> float | None:
        """Seconds from ``since_monotonic`` to the audited transition into ``state``."""
        offset = time.time() - time.monotonic()
        for entry in reversed(audit_log(self.store)):
            if entry.event == "transition" and entry.to_state == state:
                return entry.at - (since_monotonic + offset)
        return None

    def activity_on_standby(self) -> None:
        """Alice works on the standby as she would in her mail client."""
        alice = self.users[next(iter(self.users))]
        outage_mail = [m for m in self.report.sent if m.phase == "outage"
                       and alice.address in m.recipients]
        read, flagged, moved = outage_mail[0], outage_mail[1], outage_mail[2]
        with self.mailbox("standby", alice) as client:
            client.select_folder("INBOX")
            for sent, flags in ((read, [b"\\Seen"]), (flagged, [b"\\Flagged"])):
                uids = client.search(["HEADER", "Message-ID", sent.message_id])
                client.add_flags(uids, flags)
            client.create_folder(MOVED_TO_FOLDER)
            client.move(client.search(["HEADER", "Message-ID", moved.message_id]),
                        MOVED_TO_FOLDER)
            draft = make_message(alice.address, ["bob@example.test"], "draft written in outage")
            client.append("Drafts", draft.as_bytes(), flags=[b"\\Draft"])
        self.report.sent.append(SentMessage(draft["Message-ID"], [alice.address], "draft",
                                            time.monotonic()))
        reply = make_message(alice.address, ["bob@example.test"], "sent from the standby")
        self._submit_on_standby(alice, reply)
        with self.mailbox("standby", alice) as client:
            client.append("Sent", reply.as_bytes(), flags=[b"\\Seen"])
        # Bob's INBOX gets it through the gateway, Alice's Sent folder from her client.
        self.report.sent.append(SentMessage(reply["Message-ID"], ["bob@example.test",
                                                                  alice.address],
                                            "sent-on-standby", time.monotonic()))
        self.activity = {"read": read, "flagged": flagged, "moved": moved,
                         "draft": draft["Message-ID"], "sent": reply["Message-ID"]}

    def _submit_on_standby(self, user: LabUser, message: EmailMessage) -> None:
        endpoint = self.lab.endpoint("standby", "submission")
        with smtplib.SMTP(endpoint.host, endpoint.port, timeout=30) as smtp:
            smtp.login(user.login, user.password)
            smtp.send_message(message)

    def recovery(self) -> None:
        restarted_at = time.monotonic()
        self.lab.part("primary").start()
        wait_until("failback to finish (state normal)",
                   lambda: self.status()["state"] == "normal", self.failback_timeout, 0.5)
        self.report.failback_seconds = time.monotonic() - restarted_at
        self.report.merged = appended_since(self.store, self.started)

    def audit_primary(self) -> None:
        """Every delivery exactly once on the primary, and Alice's work where she left it."""
        report = self.report
        report.lost, report.duplicated = audit_deliveries(
            self.lab, [(f"{sent.message_id} ({sent.phase})", sent.message_id, sent.recipients)
                       for sent in report.sent])
        alice = next(iter(self.users))
        with self.mailbox("primary", self.users[alice]) as client:
            report.activity_checks = {
                "read flag kept": self._has_flag(client, self.activity["read"].message_id,
                                                 b"\\Seen"),
                "flag kept": self._has_flag(client, self.activity["flagged"].message_id,
                                            b"\\Flagged"),
                f"moved to {MOVED_TO_FOLDER}": MOVED_TO_FOLDER in locate(
                    client, self.activity["moved"].message_id),
                "draft in Drafts": "Drafts" in locate(client, self.activity["draft"]),
                "sent copy in Sent": "Sent" in locate(client, self.activity["sent"]),
            }

    @staticmethod
    def _has_flag(client: IMAPClient, message_id: str, flag: bytes) -> bool:
        for folder, uids in locate(client, message_id).items():
            client.select_folder(folder, readonly=True)
            return flag in client.get_flags(uids)[uids[0]]
        return False


def appended_since(store: StateStore, since: float) -> int:
    """Messages failback APPENDed to the primary since ``since`` (from the audit log's
    merge entries), for reports that say how much of an outage was merged back."""
    return sum(n for entry in audit_log(store, since=since)
               if entry.event == "merge" and entry.cause == "failback"
               for action, n in entry.detail.get("counts", {}).items()
               if action.startswith("append") and action.endswith(":done"))
