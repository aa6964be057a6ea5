"""The incident report from the records an outage leaves: timeline in order, RTO and RPO, what
went wrong."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailcontinuity.config import Config, parse_config
from mailcontinuity.mail.maildir import MessageFile
from mailcontinuity.outage.incident import (
    IncidentError,
    archive_incident,
    incident_report,
    render_incident,
)
from mailcontinuity.store.audit import record_command
from mailcontinuity.store.db import SQLiteStore
from mailcontinuity.store.journal import CopyRecord, record_copies
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.store.state import transition


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config({
        "state": {"path": str(tmp_path / "state.db")},
        "domains": {"protected": ["example.org"]},
        "primary": {"delivery": "smtp:192.0.2.1:25", "imap": "192.0.2.1:143"},
        "standby": {"imap": "127.0.0.1:143", "lmtp": "127.0.0.1:24"},
        "drill": {"report_dir": str(tmp_path / "reports")},
    }, tmp_path / "mailcontinuity.toml")


def delivered(key: str, mtime: float, folder: str = "INBOX") -> MessageFile:
    return MessageFile(folder, f"{key}.base", f"{key}.base", Path(f"/nowhere/{key}"), (), key,
                       False, 100, mtime, f"<{key}@x>")


def test_a_recorded_outage_becomes_a_timeline_with_its_figures(config: Config) -> None:
    store = SQLiteStore(config.state.path)
    before = time.time()
    # A journal copy accepted a second before the outage, shipped only after it began.
    record_copies(store, [CopyRecord("j1", "a@example.org", "INBOX", "shipped", before - 1)])
    store.execute("UPDATE journal SET recorded = ?", [before + 5])
    transition(store, "failover", "primary failed 3 probe rounds", "health-monitor",
               detail={"first_failed_probe": before - 2.0, "failed_rounds": 3})
    changelog = ChangeLog(store)
    outage = changelog.start_outage()
    assert outage is not None
    changelog.set_outage(outage.id, baseline_at=time.time())
    changelog.upsert_file(outage.id, "a@example.org", delivered("id:gw-1", before + 1.0), False)
    changelog.upsert_file(outage.id, "a@example.org", delivered("mid:<d@x>:9", before + 2.0,
                                                                 "Drafts"), False)
    record_command(store, "10-mail-admins on-failover", "health-monitor",
                   {"outcome": "timed out (killed)", "transition": "normal -> failover"},
                   event="hook")
    transition(store, "failback", "primary healthy", "health-monitor",
               detail={"healthy_since": time.time()})
    transition(store, "normal", "failback complete", "sync-agent")
    changelog.set_outage(outage.id, status="merged", merged_at=time.time(),
                         summary={"counts": {"append:done": 2, "flags:done": 1},
                                  "refused": [], "reports": []})
    changelog.add_to_summary(outage.id, verify={"at": time.time(), "ok": True, "problems": 0})

    report = incident_report(config, store).as_dict()
    whats = [event["what"] for event in report["timeline"]]
    assert [e["at"] for e in report["timeline"]] == sorted(e["at"] for e in report["timeline"])
    assert whats[0] == "first failed probe of the primary"
    assert whats[1] == "failover (health-monitor)" and "verify: clean" in whats
    assert "first mail delivered to the standby" in whats
    figures = report["figures"]
    assert figures["detection_seconds"] == pytest.approx(2.0, abs=0.2)
    assert figures["rto_seconds"] == pytest.approx(3.0, abs=0.2)
    assert figures["rpo_seconds"] == pytest.approx(1.0, abs=0.2)
    assert figures["journal_backlog_at_failover"] == 1
    assert (figures["routed_to_standby_messages"], figures["merged"]) == (1, 2)
    wrong = report["went_wrong"]
    assert any("10-mail-admins" in item and "timed out" in item for item in wrong)
    assert any("1 journal copies were not on the standby yet" in item for item in wrong)
    text = render_incident(report)
    assert text.startswith(f"Incident report: outage {outage.id} (merged)")
    assert "RTO achieved" in text and "timed out (killed)" in text

    archived = archive_incident(incident_report(config, store), config.drill.report_dir)
    assert archived.exists() and archived.with_suffix(".txt").exists()
    assert not list(config.drill.report_dir.glob(".*.tmp"))
    store.close()


def test_an_unknown_outage_is_named_with_the_ones_there_are(config: Config) -> None:
    store = SQLiteStore(config.state.path)
    with pytest.raises(IncidentError, match="no outage recorded"):
        incident_report(config, store)
    ChangeLog(store).start_outage()
    with pytest.raises(IncidentError, match="no outage 7 .* 1 to 1"):
        incident_report(config, store, 7)
    store.close()
