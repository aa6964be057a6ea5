"""The outage activity counts in status, the metrics and the incident report equal what the
scripted outage did on the standby (plus a deletion of outage mail and of history)."""

from __future__ import annotations

from typing import Any

from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import NotInTime, eventually
from mailcontinuity.lab.scenario import MOVED_TO_FOLDER, OutageScenario, restored
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.maildir import folder_dirs
from mailcontinuity.mail.postfix import run_postfix
from mailcontinuity.outage.incident import incident_report
from mailcontinuity.outage.scan import protected_maildirs
from mailcontinuity.reports.metrics import outage_metrics
from mailcontinuity.reports.status import collect_status
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ACTIVITY_FIELDS
from tests.lab.backends import lab_on_both_stores

lab_fixture = lab_on_both_stores()  # the counts are kept in the store: run on both


def folders(lab: Lab) -> set[tuple[str, str]]:
    """Every folder on disk on the standby (Dovecot writes an auto-created one such as Drafts
    only when first used, and lists a parent such as Projekte that has no folder of its own)."""
    return {(user, folder) for user, maildir in protected_maildirs(lab.config).items()
            for folder in folder_dirs(maildir)}


def delete(lab: Lab, address: str, message_id: str) -> None:
    user = next(u for u in lab.users if u.address == address)
    with imap_login(lab.endpoint("standby", "imap"), user.login, user.password) as client:
        client.select_folder("INBOX")
        uids = client.search(["HEADER", "Message-ID", message_id])
        assert uids, message_id
        client.delete_messages(uids)
        client.expunge()


def reported(lab: Lab) -> dict[str, dict[str, Any]]:
    """The counts as status, the metrics and the incident report give them."""
    store = open_store(lab.config)
    try:
        status = collect_status(lab.config, store)["outage"]["activity"]
        [family] = [m for m in outage_metrics(store) if m.name.endswith("outage_activity")]
        metrics = {sample.labels["kind"]: int(sample.value) for sample in family.samples}
        report = incident_report(lab.config, store).figures["activity"]
    finally:
        store.close()
    return {"status": status, "metrics": metrics, "report": report}


def test_activity_counts_equal_what_the_scripted_outage_did(lab: Lab) -> None:
    scenario = OutageScenario(lab)
    try:
        counted(lab, scenario)
    finally:
        # The folder the script creates is new to the next scripted outage of the session too.
        with imap_login(lab.endpoint("standby", "imap"), scenario.alice.login,
                        scenario.alice.password) as client:
            if client.folder_exists(MOVED_TO_FOLDER):
                client.delete_folder(MOVED_TO_FOLDER)


def counted(lab: Lab, scenario: OutageScenario) -> None:
    with restored(lab):
        scenario.before_outage()
        # Mail earlier tests left queued would reach the standby during this outage and count
        # (rightly) as outage mail: start from an empty queue so that only the script counts.
        eventually(lambda: "Mail queue is empty" in run_postfix(
            lab.gateway.config_dir, "postqueue", "-p"), 60, "the gateway's queue empty")
        folders_before = folders(lab)
        scenario.force_failover()
        scenario.during_outage()
        # The record is a mirror of the standby's files, as fresh as the sync agent (a second
        # or so): users act on mail after it is recorded, not within milliseconds of arrival.
        routed = sum(len(s.recipients) for s in scenario.report.sent if s.phase == "outage")
        eventually(lambda: reported(lab)["status"]["outage_received"] >= routed, 30,
                   "the outage mail recorded before users act on it")
        scenario.activity_on_standby()
        # Deletions the script does not do: an outage message nobody touched, and history.
        alice = scenario.alice.address
        touched = set(scenario.activity.values())
        spare = scenario.send([alice], "spare outage message", "outage")
        eventually(lambda: scenario.arrived("standby", spare), 30, "the spare on the standby")
        # As above: deleted after it is recorded (a message gone before the sync agent's next
        # look was never seen on the standby; under load that look can be seconds away).
        received = sum(len(s.recipients) for s in scenario.report.sent
                       if s.phase in ("outage", "sent-on-standby"))
        eventually(lambda: reported(lab)["status"]["outage_received"] >= received, 30,
                   "the spare recorded before it is deleted")
        old = next(sent for sent in scenario.report.sent if sent.phase == "before"
                   and sent.recipients == [alice] and sent.message_id not in touched)
        delete(lab, alice, spare.message_id)
        delete(lab, alice, old.message_id)
        sent = scenario.report.sent
        expected = {
            # Each delivery through the gateway during the outage (one per recipient),
            # including Alice's reply to Bob; the draft and the Sent copy Alice wrote.
            "outage_received": sum(len(s.recipients) for s in sent
                                   if s.phase in ("outage", "sent-on-standby")),
            "outage_written": sum(1 for s in sent if s.phase in ("draft", "sent-copy")),
            "outage_moved": 1,         # Alice's "moved"
            "outage_deleted": 1,       # the spare one
            "outage_flagged": 4,       # read, flagged, moved (flagged first), tagged by Bob
            "history_moved": 0,
            "history_deleted": 1,      # the old one
            "history_flagged": 1,      # "flagged before the outage"
            "new_folders": len(folders(lab) - folders_before),
        }
        expected["new_messages"] = expected["outage_received"] + expected["outage_written"]
        expected = {name: expected[name] for name in ACTIVITY_FIELDS}

        def agreed() -> dict[str, dict[str, Any]] | None:
            got = reported(lab)
            return got if all(counts == expected for counts in got.values()) else None

        try:
            eventually(agreed, 20, "the sync agent's record of the scripted activity")
        except NotInTime:
            got = reported(lab)
            differing = {where: {name: (value, expected[name]) for name, value in counts.items()
                                 if value != expected[name]} for where, counts in got.items()}
            store = open_store(lab.config)
            try:
                recorded = store.query('SELECT "user", folder, in_baseline, present'
                                       " FROM sync_folder WHERE in_baseline = 0")
            finally:
                store.close()
            raise AssertionError(f"(reported, expected): {differing}; new folders recorded"
                                 f" {recorded}, listed {folders(lab) - folders_before}") from None
