"""Exactly once whatever the size of the header block: outage mail whose headers run to 300 KB,
failback SIGKILLed right after the primary stored the batch and before its checkpoint, then run
again: no duplicate on the primary, and verify clean (it once reported all as missing while the
primary held many twice)."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from email.message import EmailMessage
from pathlib import Path

from imapclient import IMAPClient

from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT
from mailcontinuity.lab.scenario import OutageScenario, restored
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.store.state import current_state
from tests.lab.backends import lab_on_both_stores
from tests.lab.outage_helpers import run_cli

SENDER = "lists@remote.test"
BATCH = 30
FILLER_FIELDS = 300  # about 1 KB each: a 300 KB header block, past any fixed read of 256 KB

lab_fixture = lab_on_both_stores()  # the merge's checkpoints and its lease are in the store


def huge(recipient: str, subject: str) -> EmailMessage:
    """A message whose header block is about 300 KB (Postfix's header_size_limit is per field,
    so many fields are what makes a block this large)."""
    message = make_message(SENDER, [recipient], subject)
    for number in range(FILLER_FIELDS):
        message[f"X-List-Trace-{number:03d}"] = "hop " + "x" * 1000
    return message


def copies(client: IMAPClient, subject: str) -> dict[str, int]:
    """Message-ID -> copies in the INBOX, for messages whose subject starts with ``subject``."""
    client.select_folder("INBOX", readonly=True)
    uids = client.search(["SUBJECT", subject])
    counts: dict[str, int] = {}
    if uids:
        fetched = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        for data in fetched.values():
            raw = data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().strip()
            message_id = raw.partition(":")[2].strip()
            counts[message_id] = counts.get(message_id, 0) + 1
    return counts


def first_header_lines(lab: Lab, role: str, subject: str, count: int = 4) -> list[str]:
    """The first lines of the first message with ``subject`` in alice's INBOX (none yet: [])."""
    alice = lab.users[0]
    with imap_login(lab.endpoint(role, "imap"), alice.login, alice.password) as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["SUBJECT", subject])
        if not uids:
            return []
        header = client.fetch(uids[:1], ["BODY.PEEK[HEADER]"])[uids[0]][b"BODY[HEADER]"]
    return header.decode(errors="replace").splitlines()[:count]


def test_huge_header_blocks_stay_exactly_once_across_a_killed_failback(lab: Lab) -> None:
    alice = lab.users[0]
    tag = f"huge {uuid.uuid4().hex[:8]}"
    agent = lab.part("sync-agent")
    with restored(lab):
        # Before the outage: its journal copy starts with the stamp.
        before = huge(alice.address, f"{tag} before")
        send_message(lab.gateway.smtp, before, SENDER, [alice.address], source=INTERNET_CLIENT)
        eventually(lambda: any(JOURNAL_HEADER in line for line in first_header_lines(
            lab, "standby", f"{tag} before")), 30, "the journal copy of the huge message")
        stamp = first_header_lines(lab, "standby", f"{tag} before", 2)
        assert stamp[0].startswith(f"{lab.config.milter.id_header}: ")
        assert stamp[1] == f"{JOURNAL_HEADER}: yes"

        OutageScenario(lab).force_failover()
        sent = [huge(alice.address, f"{tag} outage {n:02d}") for n in range(BATCH)]
        for message in sent:
            send_message(lab.gateway.smtp, message, SENDER, [alice.address],
                         source=INTERNET_CLIENT)
        standby = imap_login(lab.endpoint("standby", "imap"), alice.login, alice.password)
        with standby as client:
            eventually(lambda: len(copies(client, f"{tag} outage")) == BATCH, 60,
                       "the outage mail on the standby")
        # The gateway's id is near the top of the delivered copy, not after 300 KB.
        assert any(line.startswith(f"{lab.config.milter.id_header}: ")
                   for line in first_header_lines(lab, "standby", f"{tag} outage 00", 20))
        eventually(lambda: run_cli(lab, "status", "--json")[1]["outage"]["activity"]
                   ["new_messages"] >= BATCH, 30, "the agent's record of the outage mail")

        agent.stop()  # or it would take over the interrupted merge itself
        try:
            crashed = subprocess.run(
                [sys.executable, str(Path(__file__).with_name("crash_failback.py")),
                 str(lab.config_file), "0", str(BATCH)],
                capture_output=True, timeout=300, check=False)
            assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
            primary = imap_login(lab.endpoint("primary", "imap"), alice.login, alice.password)
            with primary as client:
                stored = copies(client, f"{tag} outage")
            assert len(stored) == BATCH and set(stored.values()) == {1}, stored
            store = open_store(lab.config)
            try:
                assert current_state(store).name == "failback"
                outage = ChangeLog(store).open_outage()
                assert outage is not None
            finally:
                store.close()

            code, report = run_cli(lab, "failback", "--yes", "--json")
            assert code == 0 and report["state"] == "normal", report
        finally:
            agent.start()
        primary = imap_login(lab.endpoint("primary", "imap"), alice.login, alice.password)
        with primary as client:
            stored = copies(client, f"{tag} outage")
        expected = {str(message["Message-ID"]): 1 for message in sent}
        assert stored == expected, "each outage message exactly once on the primary"
        code, audit = run_cli(lab, "verify", "--json")
        assert code == 0 and audit["ok"], audit
        assert any(line.startswith(f"{lab.config.milter.id_header}: ")
                   for line in first_header_lines(lab, "primary", f"{tag} outage 00", 20))
