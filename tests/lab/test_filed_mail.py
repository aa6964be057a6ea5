"""Reconcile by identity on the lab: what the user does on the standby reaches the primary's
copy wherever the user had filed it, and a split brain (both sides changed during the outage)
ends as docs/failback.md says, each message once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from imapclient import IMAPClient

from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.lab.mailbox import locate
from mailcontinuity.mail.imap import imap_login
from tests.lab.outage_helpers import forced_outage, gateway_mail, run_cli, uid_of, wait_all


def journaled(lab: Lab, user: LabUser, count: int, tag: str) -> list[str]:
    """``count`` messages through the gateway: in the primary's INBOX and, as journal copies,
    in the standby's INBOX. Their Message-IDs."""
    sent = [gateway_mail(lab, [user], f"{tag} {n}")["Message-ID"] for n in range(count)]
    for message_id in sent:
        wait_all(lab, "primary", [user], message_id)
        wait_all(lab, "standby", [user], message_id)
    return sent


@contextmanager
def mailbox(lab: Lab, role: str, user: LabUser) -> Iterator[IMAPClient]:
    with imap_login(lab.endpoint(role, "imap"), user.login, user.password) as client:
        yield client


def move(client: IMAPClient, message_ids: list[str], source: str, target: str) -> None:
    if not client.folder_exists(target):
        client.create_folder(target)
    client.select_folder(source)
    client.move([uid_of(client, message_id) for message_id in message_ids], target)


def flag(client: IMAPClient, folder: str, message_id: str, *flags: str) -> None:
    client.select_folder(folder)
    client.add_flags([uid_of(client, message_id)], list(flags), silent=True)


def placed(lab: Lab, user: LabUser, message_id: str) -> dict[str, set[str]]:
    """folder -> flags of each copy of ``message_id`` on the primary (a second copy in one
    folder fails the test)."""
    with mailbox(lab, "primary", user) as client:
        found = locate(client, message_id)
        result = {}
        for folder, uids in found.items():
            assert len(uids) == 1, f"{message_id}: {len(uids)} copies in {folder}"
            client.select_folder(folder, readonly=True)
            flags = client.get_flags(uids)[uids[0]]
            result[folder] = {f.decode() for f in flags} - {"$MDNSent", "\\Recent"}
        return result


def drop_folders(lab: Lab, user: LabUser, *folders: str) -> None:
    for role in ("primary", "standby"):
        with mailbox(lab, role, user) as client:
            for folder in folders:
                if client.folder_exists(folder):
                    client.delete_folder(folder)


def test_mail_filed_before_the_outage_gets_the_standbys_flags_and_moves(lab: Lab) -> None:
    """The issue's case: 20 journaled messages filed in Archive on the primary before the
    outage (their journal copies stay in the standby's INBOX); during the outage the user
    marks 19 read or flagged on the standby and moves one to Keep. After failback the flags
    are on the Archive copies, the moved one is in Keep only, verify exits 0."""
    user = lab.users[1]
    tag = uuid.uuid4().hex[:8]
    archive, keep = f"Archive-{tag}", f"Keep-{tag}"
    try:
        sent = journaled(lab, user, 20, f"filed {tag}")
        with mailbox(lab, "primary", user) as client:
            move(client, sent, "INBOX", archive)
        flagged, moved = sent[:19], sent[19]
        with forced_outage(lab):
            with mailbox(lab, "standby", user) as client:
                for n, message_id in enumerate(flagged):
                    flag(client, "INBOX", message_id, "\\Seen" if n % 2 else "\\Flagged")
                move(client, [moved], "INBOX", keep)
            code, report = run_cli(lab, "failback", "--yes", "--json")
            assert code == 0 and report["refused"] == [], report
        for n, message_id in enumerate(flagged):
            assert placed(lab, user, message_id) == {
                archive: {"\\Seen" if n % 2 else "\\Flagged"}}, message_id
        assert list(placed(lab, user, moved)) == [keep]
        code, audit = run_cli(lab, "verify", "--json")
        assert code == 0 and audit["ok"], audit
        # What an older failback did: the move became a copy. Verify says so, and its advice
        # (failback again) mends it.
        with mailbox(lab, "primary", user) as client:
            client.select_folder(keep)
            client.copy([uid_of(client, moved)], archive)
        code, audit = run_cli(lab, "verify", "--json")
        assert code == 1 and len(audit["users"][user.address]["duplicated"]) == 1, audit
        code, report = run_cli(lab, "failback", "--yes", "--json")
        assert code == 0 and report["counts"].get("delete:done") == 1, report
        assert list(placed(lab, user, moved)) == [keep]
        code, audit = run_cli(lab, "verify", "--json")
        assert code == 0 and audit["ok"], audit
    finally:
        drop_folders(lab, user, archive, keep)


def test_split_brain_merges_both_sides_changes_once(lab: Lab) -> None:
    """Both sides changed during the outage (a client still reached the primary): the
    three-way merge of docs/failback.md. A flag set on each side: both. Moved on the primary,
    read on the standby: in the primary's folder, read. Moved on both sides: in the standby's
    folder only. Never a second copy; verify exits 0."""
    user = lab.users[1]
    tag = uuid.uuid4().hex[:8]
    work, keep = f"Work-{tag}", f"Keep-{tag}"
    try:
        both_flagged, moved_there, moved_both = journaled(lab, user, 3, f"split {tag}")
        with forced_outage(lab):
            with mailbox(lab, "primary", user) as client:
                flag(client, "INBOX", both_flagged, "\\Flagged")
                move(client, [moved_there, moved_both], "INBOX", work)
            with mailbox(lab, "standby", user) as client:
                flag(client, "INBOX", both_flagged, "\\Seen")
                flag(client, "INBOX", moved_there, "\\Seen", "$Important")
                move(client, [moved_both], "INBOX", keep)
            code, report = run_cli(lab, "failback", "--yes", "--json")
            assert code == 0 and report["refused"] == [], report
        assert placed(lab, user, both_flagged) == {"INBOX": {"\\Seen", "\\Flagged"}}
        assert placed(lab, user, moved_there) == {work: {"\\Seen", "$Important"}}
        assert placed(lab, user, moved_both) == {keep: set()}
        code, audit = run_cli(lab, "verify", "--json")
        assert code == 0 and audit["ok"], audit
    finally:
        drop_folders(lab, user, work, keep)
