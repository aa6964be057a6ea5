"""A scripted outage on the lab, shared by the failback tests: what users do, and what to expect.

Mail goes through the lab gateway, where the journal milter stamps it with the id header and
keeps its journal copies in the standby, as in production.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage

from imapclient import IMAPClient

from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.lab.mailbox import locate, wait_for_message
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.store.state import current_state
from mailcontinuity.transitions import change_state

NEW_FOLDER = "Projekte/Überblick"
OUTSIDER = "sender@remote.test"


@dataclass
class Expected:
    """Per user: Message-ID -> (folder, flags that must be set) on the primary after failback."""

    where: dict[str, dict[str, tuple[str, set[str]]]] = field(default_factory=dict)
    outage_mail: list[tuple[EmailMessage, list[LabUser]]] = field(default_factory=list)

    def add(self, user: LabUser, message_id: str, folder: str, *flags: str) -> None:
        self.where.setdefault(user.address, {})[message_id] = (folder, set(flags))


def gateway_mail(lab: Lab, recipients: list[LabUser], subject: str,
                 body: str = "") -> EmailMessage:
    message = make_message(OUTSIDER, [u.address for u in recipients], subject, body)
    send_message(lab.gateway.smtp, message, OUTSIDER, [u.address for u in recipients])
    return message


def deliver_stored_copy(lab: Lab, source: str, target: str, message: EmailMessage,
                        recipients: list[LabUser]) -> None:
    """Deliver what ``source`` stored for each recipient into ``target``'s LMTP: the gateway's
    own copy of the message (milter id header included), as a queued delivery would be."""
    endpoint = lab.endpoint(target, "lmtp")
    for user in recipients:
        with imap_login(lab.endpoint(source, "imap"), user.login, user.password) as client:
            found = locate(client, message["Message-ID"])
            assert found, f"{message['Subject']} is not on the {source}"
            folder, uids = next(iter(found.items()))
            client.select_folder(folder, readonly=True)
            raw = client.fetch(uids[:1], ["BODY.PEEK[]"])[uids[0]][b"BODY[]"]
        with smtplib.LMTP(endpoint.host, endpoint.port, timeout=30) as lmtp:
            lmtp.sendmail(OUTSIDER, [user.address], raw)


def wait_all(lab: Lab, role: str, users: list[LabUser], message: EmailMessage,
             folder: str = "INBOX") -> None:
    for user in users:
        found = wait_for_message(lab.endpoint(role, "imap"), user.login, user.password,
                                 message["Message-ID"], folder=folder)
        assert found is not None, f"{message['Subject']} never reached {user.address} on {role}"


def uid_of(client: IMAPClient, message_id: str) -> int:
    uids = client.search(["HEADER", "Message-ID", message_id])
    assert len(uids) == 1, f"{message_id}: {uids}"
    return int(uids[0])


@contextmanager
def forced_outage(lab: Lab, cause: str) -> Iterator[None]:
    """Failover forced for the body of a test; afterwards ``normal`` again, outage closed."""
    with restored(lab):
        store = open_store(lab.config)
        try:
            change_state(lab.config, store, "failover", cause, "pytest")
        finally:
            store.close()
        yield


def begin_outage(lab: Lab) -> None:
    """Force failover, then wait for the sync agent's baseline of the outage."""
    store = open_store(lab.config)
    try:
        assert change_state(lab.config, store, "failover", "test outage", "test",
                            expect=("normal",))
        changelog = ChangeLog(store)
        deadline = time.monotonic() + 30
        while True:
            outage = changelog.open_outage()
            if outage is not None and outage.baseline_at is not None:
                return
            if time.monotonic() > deadline:
                log = lab.dir / "daemons" / "sync-agent.log"
                raise AssertionError(f"the sync agent took no baseline: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    finally:
        store.close()


@contextmanager
def restored(lab: Lab) -> Iterator[None]:
    """Whatever happens in the test, the lab ends in ``normal``, routed to the primary, with no
    outage left open for the next test."""
    try:
        yield
    finally:
        store = open_store(lab.config)
        try:
            changelog = ChangeLog(store)
            outage = changelog.open_outage()
            if outage is not None:
                changelog.set_outage(outage.id, status="merged")
            if current_state(store).name != "normal":
                change_state(lab.config, store, "normal", "test cleanup", "test")
        finally:
            store.close()


def run_outage_script(lab: Lab) -> Expected:
    """Mail before, failover, mail and user activity on the standby. Returns what failback
    must produce on the primary."""
    alice, bob, carol = lab.users[:3]
    expected = Expected()
    history = gateway_mail(lab, [alice, bob], "before the outage")
    wait_all(lab, "primary", [alice, bob], history)
    wait_all(lab, "standby", [alice, bob], history)  # the milter's journal copies

    begin_outage(lab)
    to_all = gateway_mail(lab, [alice, bob, carol], "to three during the outage")
    for_alice = gateway_mail(lab, [alice], "for alice, to be moved")
    for_bob = gateway_mail(lab, [bob], "for bob")
    wait_all(lab, "standby", [alice, bob, carol], to_all)
    wait_all(lab, "standby", [alice], for_alice)
    wait_all(lab, "standby", [bob], for_bob)

    standby = lab.endpoint("standby", "imap")
    with imap_login(standby, alice.login, alice.password) as client:
        client.select_folder("INBOX")
        client.fetch([uid_of(client, to_all["Message-ID"])], ["BODY[]"])  # read: \Seen
        client.add_flags([uid_of(client, history["Message-ID"])], [b"\\Flagged"])
        moved = uid_of(client, for_alice["Message-ID"])
        client.add_flags([moved], [b"\\Flagged"])
        if not client.folder_exists(NEW_FOLDER):
            client.create_folder(NEW_FOLDER)
        client.move([moved], NEW_FOLDER)
        draft = make_message(alice.address, [bob.address], "unfinished draft")
        client.append("Drafts", draft.as_bytes(), flags=[b"\\Draft"])
    sent = make_message(alice.address, [bob.address], "sent from the standby")
    submission = lab.endpoint("standby", "submission")
    with smtplib.SMTP(submission.host, submission.port, timeout=30) as smtp:
        smtp.login(alice.login, alice.password)
        smtp.send_message(sent, from_addr=alice.address, to_addrs=[bob.address])
    with imap_login(standby, alice.login, alice.password) as client:
        client.append("Sent", sent.as_bytes(), flags=[b"\\Seen"])
    wait_all(lab, "standby", [bob], sent)
    with imap_login(standby, bob.login, bob.password) as client:
        client.select_folder("INBOX")
        client.add_flags([uid_of(client, for_bob["Message-ID"])], [b"\\Seen", b"$Important"])

    expected.outage_mail = [(to_all, [alice, bob, carol]), (for_alice, [alice]), (for_bob, [bob])]
    expected.add(alice, history["Message-ID"], "INBOX", "\\Flagged")
    expected.add(alice, to_all["Message-ID"], "INBOX", "\\Seen")
    expected.add(alice, for_alice["Message-ID"], NEW_FOLDER, "\\Flagged")
    expected.add(alice, draft["Message-ID"], "Drafts", "\\Draft")
    expected.add(alice, sent["Message-ID"], "Sent", "\\Seen")
    expected.add(bob, history["Message-ID"], "INBOX")
    expected.add(bob, to_all["Message-ID"], "INBOX")
    expected.add(bob, for_bob["Message-ID"], "INBOX", "\\Seen", "$Important")
    expected.add(bob, sent["Message-ID"], "INBOX")
    expected.add(carol, to_all["Message-ID"], "INBOX")
    return expected


def assert_on_primary_once(lab: Lab, expected: Expected) -> None:
    """Each expected message exactly once in the whole mailbox, in its folder, with its flags."""
    users = {user.address: user for user in lab.users}
    for address, messages in expected.where.items():
        user = users[address]
        with imap_login(lab.endpoint("primary", "imap"), user.login, user.password) as client:
            for message_id, (folder, flags) in messages.items():
                found = []
                for name, uids in locate(client, message_id).items():
                    client.select_folder(name, readonly=True)
                    for uid, got in client.get_flags(uids).items():
                        found.append((name, {f.decode() for f in got}))
                assert len(found) == 1, f"{address} {message_id}: {found}"
                assert found[0][0] == folder, f"{address} {message_id}: {found}"
                assert flags <= found[0][1], f"{address} {message_id}: {found}"
