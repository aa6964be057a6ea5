"""History as the user left it: after a day of activity on the primary (read, filed, flagged,
deleted), the standby's journal copies are where and as the user left them; a pass with nothing
new opens no folder of a CONDSTORE primary. Then an outage: the user finds them so on the
standby, and failback changes nothing on the primary it need not."""

from __future__ import annotations

import uuid

from mailcontinuity.lab import Lab
from mailcontinuity.outage.follow import follow_all
from mailcontinuity.store.db import open_store
from tests.lab.backends import lab_on_both_stores
from tests.lab.journal_helpers import fetch_by_header, journal_id
from tests.lab.outage_helpers import forced_outage, run_cli, uid_of
from tests.lab.test_filed_mail import drop_folders, flag, journaled, mailbox, move

lab_fixture = lab_on_both_stores()  # these tests touch the store: run on both


def on_standby(lab: Lab, user, message_id: str) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    """folder -> flags of each copy of ``message_id`` in the user's standby mailbox."""
    with mailbox(lab, "standby", user) as client:
        found = {}
        for flags, _, folder in client.list_folders():
            if b"\\Noselect" in flags:
                continue
            client.select_folder(folder, readonly=True)
            uids = client.search(["HEADER", "Message-ID", message_id])
            assert len(uids) <= 1, f"{message_id}: {len(uids)} copies in {folder}"
            if uids:
                got = client.get_flags(uids)[uids[0]]
                found[folder] = {f.decode() for f in got} - {"\\Recent"}
        return found


def test_the_standby_shows_filed_and_read_mail_as_the_user_left_it(lab: Lab) -> None:
    user = lab.users[2]
    tag = uuid.uuid4().hex[:8]
    archive = f"Archive-{tag}"
    try:
        read, filed, deleted, untouched, keyword = journaled(lab, user, 5, f"follow {tag}")
        ids = {message_id: journal_id(fetch_by_header(lab, "primary", user, "Message-ID",
                                                      message_id)[0])
               for message_id in (read, filed, deleted, untouched, keyword)}
        [first] = follow_all(lab.config, [user.address])
        assert first.error == "", first
        # A day of activity on the primary.
        with mailbox(lab, "primary", user) as client:
            flag(client, "INBOX", read, "\\Seen")
            flag(client, "INBOX", filed, "\\Seen", "\\Flagged")
            flag(client, "INBOX", keyword, "$Important")
            move(client, [filed], "INBOX", archive)
            client.select_folder("INBOX")
            client.delete_messages([uid_of(client, deleted)])
            client.expunge()
        [second] = follow_all(lab.config, [user.address])
        assert second.error == "" and second.changes, second
        assert on_standby(lab, user, read) == {"INBOX": {"\\Seen"}}
        assert on_standby(lab, user, filed) == {archive: {"\\Seen", "\\Flagged"}}
        assert on_standby(lab, user, keyword) == {"INBOX": {"$Important"}}
        assert on_standby(lab, user, untouched) == {"INBOX": set()}
        assert on_standby(lab, user, deleted) == {}
        # Nothing new: a CONDSTORE primary's folders are not opened, the standby not asked.
        [third] = follow_all(lab.config, [user.address])
        assert (third.folders_read, third.changes) == (0, []), third
        assert third.folders_unchanged >= 2
        code, _ = run_cli(lab, "follow", "--json")
        assert code == 0
        # Retention still finds the copy the pass filed in another folder.
        store = open_store(lab.config)
        try:
            with store.transaction() as db:  # as if accepted 31 days ago (retention is 30)
                db.execute("UPDATE journal SET received = received - 31 * 86400"
                           " WHERE message_id = ?", [ids[filed]])
        finally:
            store.close()
        code, pruned = run_cli(lab, "prune", "--json")
        assert code == 0 and pruned["deleted"] >= 1, pruned
        assert on_standby(lab, user, filed) == {}
    finally:
        drop_folders(lab, user, archive)


def test_an_outage_after_the_follow_pass_shows_history_filed_and_merges_nothing_back(
        lab: Lab) -> None:
    """The issue's complaint: in an outage people saw a month of mail unread in INBOX. After
    the follow pass they find it filed and read as on the primary, and failback has nothing of
    it to replay (the baseline is the primary's state): no flag, move or copy; verify clean."""
    user = lab.users[2]
    tag = uuid.uuid4().hex[:8]
    archive = f"Archive-{tag}"
    try:
        read, filed = journaled(lab, user, 2, f"follow outage {tag}")
        with mailbox(lab, "primary", user) as client:
            flag(client, "INBOX", read, "\\Seen")
            flag(client, "INBOX", filed, "\\Flagged")
            move(client, [filed], "INBOX", archive)
        [passed] = follow_all(lab.config, [user.address])
        assert passed.error == "", passed
        with forced_outage(lab):
            assert on_standby(lab, user, read) == {"INBOX": {"\\Seen"}}
            assert on_standby(lab, user, filed) == {archive: {"\\Flagged"}}
            code, report = run_cli(lab, "failback", "--yes", "--json")
            assert code == 0 and report["refused"] == [], report
            replayed = {name: n for name, n in report["counts"].items()
                        if name.split(":")[0] in ("flags", "move", "copy", "delete")}
            assert replayed == {}, report["counts"]
        with mailbox(lab, "primary", user) as client:
            client.select_folder(archive, readonly=True)
            assert len(client.search(["HEADER", "Message-ID", filed])) == 1
        code, audit = run_cli(lab, "verify", "--json")
        assert code == 0 and audit["ok"], audit
    finally:
        drop_folders(lab, user, archive)
