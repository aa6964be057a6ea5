"""The scripted outage on the lab: what ``make demo`` runs and what the failback tests check.

Mail before; the outage (the primary killed, or a failover forced by an operator); mail during
(one message with three recipients); users reading, flagging (outage mail and mail from before
the outage), moving into a new nested folder, drafting, sending and tagging on the standby; then
the end of the outage (the primary back and automatic failback, or a failback the test runs
itself, even one killed half-way). Everything is measured from the outside, the way a user or an
auditor would see it: SMTP in, IMAP out, and ``status`` for the state. Nothing here reaches into
the daemons.

``OutageScenario.expected`` is what the primary must hold afterwards: each message once per
mailbox, in its folder, with its flags; ``check_primary`` says where it does not.
"""

from __future__ import annotations

import json
import os
import smtplib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from imapclient import IMAPClient

from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.lab import Lab
from mailcontinuity.lab.mailbox import INTERNET_CLIENT, locate
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.mail.imap import Mailbox, imap_login
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.outage.merge import LEASE as FAILBACK_LEASE
from mailcontinuity.reports.status import collect_status
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.db import StateStore, open_store
from mailcontinuity.store.leases import LEASE_SECONDS, LeaseHeld, acquire_lease, release_lease
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.store.state import current_state
from mailcontinuity.transitions import change_state

SENDER = "partner@remote.test"
JOURNAL_FIELD = f"BODY.PEEK[HEADER.FIELDS ({JOURNAL_HEADER})]"
JOURNAL_FIELD_REPLY = f"BODY[HEADER.FIELDS ({JOURNAL_HEADER.upper()})]".encode()
MOVED_TO_FOLDER = "Projekte/Übersicht"
KEYWORD = "$Important"


@dataclass
class SentMessage:
    """A message the scenario created; ``recipients`` are the mailboxes that must hold it."""

    message_id: str
    recipients: list[str]
    phase: str
    sent_at: float


@dataclass
class Placement:
    """Where one message must be on the primary for one user, and the flags it must have."""

    folder: str
    flags: frozenset[str] = frozenset()


@dataclass
class OutageReport:
    """What the scenario measured; ``lost``, ``duplicated`` and ``misplaced`` must be empty."""

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
    misplaced: list[str] = field(default_factory=list)
    activity_checks: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not (self.lost or self.duplicated or self.misplaced)

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


class OutageScenario:
    """One scripted outage against a lab that is up (with all its daemons).

    ``run`` is the whole drill the demo shows; tests call the phases themselves, with a forced
    failover instead of a killed primary and their own failback in between.
    """

    def __init__(self, lab: Lab, detection_timeout: float = 60.0,
                 failback_timeout: float = 180.0) -> None:
        self.lab = lab
        self.report = OutageReport()
        self.detection_timeout = detection_timeout
        self.failback_timeout = failback_timeout
        self.users = {user.address: user for user in lab.users}
        self.alice, self.bob, self.carol = lab.users[:3]
        self.expected: dict[str, dict[str, Placement]] = {}
        """address -> Message-ID -> where it must be on the primary after failback."""
        self.activity: dict[str, str] = {}
        """What Alice did on the standby -> the Message-ID she did it to."""
        self.started = time.time()

    # -- the whole drill ---------------------------------------------------------------------
    def run(self) -> OutageReport:
        """Mail before, the primary killed, mail and activity during, the primary back,
        automatic failback, then the primary audited."""
        self.before_outage()
        self.kill_primary()
        self.during_outage()
        self.activity_on_standby()
        self.restart_primary()
        self.check_primary()
        return self.report

    # -- the phases ----------------------------------------------------------------------------
    def before_outage(self) -> None:
        """Two messages per user through the gateway; each on the primary and journaled."""
        batch = [self.send([address], f"before outage {n}", "before")
                 for n, address in enumerate(list(self.users) * 2)]
        slowest = 0.0
        for sent in batch:
            self.wait(f"{sent.message_id} on the primary", self.arrived, "primary", sent)
        for sent in batch:
            self.wait(f"journal copy of {sent.message_id}", self.arrived, "standby", sent,
                      journal=True)
            slowest = max(slowest, time.monotonic() - sent.sent_at)
        self.report.journal_lag_seconds = slowest
        self.report.journaled = int(self.status()["journal"].get("shipped", 0))

    def kill_primary(self) -> None:
        """The primary dies; the first message after it must reach the standby unbounced."""
        killed_at = time.monotonic()
        self.lab.part("primary").stop()
        probe = self.send([self.alice.address], "first message of the outage", "outage")
        eventually(lambda: self.arrived("standby", probe), self.detection_timeout,
                   "first message in the standby after the primary died", interval=0.2)
        self.report.rto_seconds = time.monotonic() - killed_at
        self.report.detection_seconds = self._state_changed_after(killed_at, "failover")
        self._wait_for_baseline()

    def force_failover(self) -> None:
        """An operator's failover with the primary still up (what tests use), once the sync
        agent has taken its baseline of the standby."""
        store = open_store(self.lab.config)
        try:
            assert change_state(self.lab.config, store, "failover", "scripted outage",
                                "scenario", expect=("normal",))
        finally:
            store.close()
        self._wait_for_baseline()

    def during_outage(self) -> None:
        """Two messages per user and one to everyone, each delivered to the standby."""
        addresses = list(self.users)
        during = [self.send([address], f"during outage {n}", "outage")
                  for n, address in enumerate(addresses * 2)]
        during.append(self.send(addresses, "during outage, to everyone", "outage"))
        for sent in during:
            self.wait(f"{sent.message_id} on the standby", self.arrived, "standby", sent)
        self.report.routed_to_standby = sum(1 for sent in self.report.sent
                                            if sent.phase == "outage")

    def activity_on_standby(self) -> None:
        """Alice and Bob work on the standby as they would in their mail clients."""
        alice, bob = self.alice, self.bob
        outage_mail = [sent for sent in self.report.sent
                       if sent.phase == "outage" and alice.address in sent.recipients]
        history = next(sent for sent in self.report.sent
                       if sent.phase == "before" and sent.recipients == [alice.address])
        read, flagged, moved = outage_mail[:3]
        bobs = next(sent for sent in self.report.sent
                    if sent.phase == "outage" and sent.recipients == [bob.address])
        with self.mailbox("standby", alice) as client:
            client.select_folder("INBOX")
            client.add_flags(self._uids(client, read), [b"\\Seen"])
            client.add_flags(self._uids(client, flagged), [b"\\Flagged"])
            client.add_flags(self._uids(client, history), [b"\\Flagged"])
            client.add_flags(self._uids(client, moved), [b"\\Flagged"])
            if not client.folder_exists(MOVED_TO_FOLDER):
                client.create_folder(MOVED_TO_FOLDER)
            client.move(self._uids(client, moved), MOVED_TO_FOLDER)
            draft = make_message(alice.address, [bob.address], "draft written in outage")
            client.append("Drafts", draft.as_bytes(), flags=[b"\\Draft"])
        reply = make_message(alice.address, [bob.address], "sent from the standby")
        self._submit_on_standby(alice, reply)
        with self.mailbox("standby", alice) as client:
            client.append("Sent", reply.as_bytes(), flags=[b"\\Seen"])
        sent_reply = SentMessage(reply["Message-ID"], [bob.address], "sent-on-standby",
                                 time.monotonic())
        self.report.sent += [
            SentMessage(draft["Message-ID"], [alice.address], "draft", time.monotonic()),
            sent_reply,
            SentMessage(reply["Message-ID"], [alice.address], "sent-copy", time.monotonic()),
        ]
        self.wait("the reply in Bob's standby INBOX", self.arrived, "standby", sent_reply)
        with self.mailbox("standby", bob) as client:
            client.select_folder("INBOX")
            client.add_flags(self._uids(client, bobs), [b"\\Seen", KEYWORD.encode()])
        self.activity = {"read": read.message_id, "flagged": flagged.message_id,
                         "flagged before the outage": history.message_id,
                         "moved": moved.message_id, "draft": draft["Message-ID"],
                         "sent": reply["Message-ID"], "tagged by bob": bobs.message_id}
        self._expect(alice.address, read.message_id, "INBOX", "\\Seen")
        self._expect(alice.address, flagged.message_id, "INBOX", "\\Flagged")
        self._expect(alice.address, history.message_id, "INBOX", "\\Flagged")
        self._expect(alice.address, moved.message_id, MOVED_TO_FOLDER, "\\Flagged")
        self._expect(alice.address, draft["Message-ID"], "Drafts", "\\Draft")
        self._expect(alice.address, reply["Message-ID"], "Sent", "\\Seen")
        self._expect(bob.address, bobs.message_id, "INBOX", "\\Seen", KEYWORD)

    def restart_primary(self) -> None:
        """The primary comes back; the health monitor and the sync agent fail back."""
        restarted_at = time.monotonic()
        self.lab.part("primary").start()
        eventually(lambda: self.status()["state"] == "normal", self.failback_timeout,
                   "failback to finish (state normal)", interval=0.5)
        self.report.failback_seconds = time.monotonic() - restarted_at
        store = open_store(self.lab.config)
        try:
            self.report.merged = appended_since(store, self.started)
        finally:
            store.close()

    def incident(self, timeout: float = 120.0) -> dict[str, Any]:
        """The incident report failback archived for this outage (the sync agent verifies the
        primary first), as ``mailcontinuity report --json`` prints it."""
        store = open_store(self.lab.config)
        try:
            changelog = ChangeLog(store)
            eventually(lambda: (last := changelog.last_outage()) is not None
                       and last.started_at >= self.started, timeout, "the outage's record")
            outage = changelog.last_outage()
            assert outage is not None
        finally:
            store.close()
        pattern = f"incident-{outage.id}-*.json"
        directory = self.lab.config.drill.report_dir
        eventually(lambda: any(directory.glob(pattern)), timeout,
                   "the archived incident report", interval=0.5)
        return dict(json.loads(sorted(directory.glob(pattern))[-1].read_text()))

    def check_primary(self) -> OutageReport:
        """Every delivery exactly once in each recipient's primary mailbox, each message the
        users worked on where they left it, with its flags."""
        report = self.report
        report.lost, report.duplicated, report.misplaced = audit_deliveries(
            self.lab, [(f"{sent.message_id} ({sent.phase})", sent.message_id, sent.recipients)
                       for sent in report.sent], self.expected)
        problems = [*report.lost, *report.duplicated, *report.misplaced]
        report.activity_checks = {
            name: not any(message_id in problem for problem in problems)
            for name, message_id in self.activity.items()}
        return report

    # -- helpers -------------------------------------------------------------------------------
    def _expect(self, address: str, message_id: str, folder: str, *flags: str) -> None:
        self.expected.setdefault(address, {})[message_id] = Placement(folder, frozenset(flags))

    def status(self) -> dict[str, Any]:
        store = open_store(self.lab.config)
        try:
            return collect_status(self.lab.config, store)
        finally:
            store.close()

    def send(self, recipients: list[str], subject: str, phase: str) -> SentMessage:
        message = make_message(SENDER, recipients, subject)
        send_message(self.lab.gateway.smtp, message, SENDER, recipients, source=INTERNET_CLIENT)
        sent = SentMessage(message["Message-ID"], recipients, phase, time.monotonic())
        self.report.sent.append(sent)
        return sent

    def mailbox(self, role: str, user: LabUser) -> Any:
        return imap_login(self.lab.endpoint(role, "imap"), user.login, user.password)

    def wait(self, what: str, check: Any, *args: Any, **kwargs: Any) -> None:
        eventually(lambda: check(*args, **kwargs), 30, what, interval=0.2)

    def arrived(self, role: str, sent: SentMessage, folder: str = "INBOX",
                journal: bool = False) -> bool:
        """Every recipient has the message in ``folder``: a journal copy if ``journal``, else
        a delivered one (on the standby during an outage both may be there)."""
        for address in sent.recipients:
            with self.mailbox(role, self.users[address]) as client:
                # The standby answers SELECT while the first journal copies for a user create
                # the Maildir (mail.maildir._make_owned): a refusal here is a failure.
                client.select_folder(folder, readonly=True)
                uids = client.search(["HEADER", "Message-ID", sent.message_id])
                headers = client.fetch(uids, [JOURNAL_FIELD]).values() if uids else []
                if not any((JOURNAL_HEADER.encode() in data[JOURNAL_FIELD_REPLY]) == journal
                           for data in headers):
                    return False
        return True

    @staticmethod
    def _uids(client: IMAPClient, sent: SentMessage) -> list[int]:
        uids = client.search(["HEADER", "Message-ID", sent.message_id])
        assert uids, f"{sent.message_id} is not in the selected folder"
        return list(uids)

    def _submit_on_standby(self, user: LabUser, message: EmailMessage) -> None:
        endpoint = self.lab.endpoint("standby", "submission")
        with smtplib.SMTP(endpoint.host, endpoint.port, timeout=30) as smtp:
            smtp.login(user.login, user.password)
            smtp.send_message(message)

    def _wait_for_baseline(self) -> None:
        """The sync agent records the outage from a baseline of the standby; activity before
        it would count as history."""
        store = open_store(self.lab.config)
        try:
            changelog = ChangeLog(store)
            eventually(lambda: (outage := changelog.open_outage()) is not None
                       and outage.baseline_at is not None, 30,
                       "the sync agent's baseline of the outage")
        finally:
            store.close()

    def _state_changed_after(self, since_monotonic: float, state: str) -> float | None:
        """Seconds from ``since_monotonic`` to the audited transition into ``state``."""
        offset = time.time() - time.monotonic()
        store = open_store(self.lab.config)
        try:
            entries = audit_log(store)
        finally:
            store.close()
        for entry in reversed(entries):
            if entry.event == "transition" and entry.to_state == state:
                return entry.at - (since_monotonic + offset)
        return None


def audit_deliveries(lab: Lab, deliveries: list[tuple[str, str, list[str]]],
                     expected: dict[str, dict[str, Placement]] | None = None,
                     ) -> tuple[list[str], list[str], list[str]]:
    """(lost, duplicated, misplaced) for ``(label, message_id, recipients)`` deliveries: each
    must be in every recipient's primary mailbox exactly once (any folder), and where
    ``expected`` places it, in that folder with those flags. One IMAP login per user."""
    users = {user.address: user for user in lab.users}
    wanted: dict[str, dict[str, str]] = {}
    for label, message_id, recipients in deliveries:
        for address in recipients:
            wanted.setdefault(address, {})[message_id] = label
    lost: list[str] = []
    duplicated: list[str] = []
    misplaced: list[str] = []
    for address, messages in wanted.items():
        user = users[address]
        with imap_login(lab.endpoint("primary", "imap"), user.login, user.password) as client:
            # Folders by the standby's names, whatever the primary's layout (INBOX. prefix,
            # "Sent Items"): the mapping failback itself uses.
            names = Mailbox(client)
            for message_id, label in messages.items():
                found = []
                for folder, uids in locate(client, message_id).items():
                    client.select_folder(folder, readonly=True)
                    found += [(names.ours(folder), {flag.decode() for flag in flags})
                              for flags in client.get_flags(uids).values()]
                where = f"{address} {label}"
                if not found:
                    lost.append(where)
                elif len(found) > 1:
                    duplicated.append(f"{where}: {found}")
                place = (expected or {}).get(address, {}).get(message_id)
                if found and place is not None and not any(
                        folder == place.folder and place.flags <= flags
                        for folder, flags in found):
                    misplaced.append(f"{where}: wanted {place.folder} with"
                                     f" {sorted(place.flags)}, found {found}")
    return lost, duplicated, misplaced


@contextmanager
def restored(lab: Lab) -> Iterator[None]:
    """Whatever happens inside, the lab ends in ``normal``, routed to the primary, with no
    outage left open for whatever runs next."""
    try:
        yield
    finally:
        store = open_store(lab.config)
        holder = f"lab-cleanup-{os.getpid()}"
        try:
            # Wait for a failback the sync agent is running: it read the outage before this
            # closes it, and would mark it "merging" again afterwards (the next test's outage
            # would then be recorded into it).
            eventually(lambda: _took_lease(store, holder), LEASE_SECONDS + 30,
                       "the running failback to finish before the cleanup")
            if current_state(store).name != "normal":
                change_state(lab.config, store, "normal", "scenario cleanup", "scenario")
            # After the state: once it is normal the recorder opens no new record.
            changelog = ChangeLog(store)
            outage = changelog.open_outage()
            if outage is not None:
                changelog.set_outage(outage.id, status="merged")
        finally:
            release_lease(store, FAILBACK_LEASE, holder)
            store.close()


def _took_lease(store: StateStore, holder: str) -> bool:
    try:
        acquire_lease(store, FAILBACK_LEASE, holder)
    except LeaseHeld:
        return False
    return True


def appended_since(store: StateStore, since: float) -> int:
    """Messages failback APPENDed to the primary since ``since`` (from the audit log's
    merge entries), for reports that say how much of an outage was merged back."""
    return sum(n for entry in audit_log(store, since=since)
               if entry.event == "merge" and entry.cause == "failback"
               for action, n in entry.detail.get("counts", {}).items()
               if action.startswith("append") and action.endswith(":done"))
