"""The incident report after the lab's scripted outage (the demo's: the primary killed, mail and
user activity on the standby, the primary back, automatic failback): its timeline in order,
and the figures the demo prints, measured from the records the system kept."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.scenario import OutageScenario, restored
from tests.lab.backends import lab_on_both_stores
from tests.lab.policyd_helpers import back_to_normal

lab_fixture = lab_on_both_stores()  # these tests touch the store: run on both

# The timeline's milestones, in the order an outage goes through them (the sync agent's
# baseline comes after the failover too, before or after the first mail flushed from the queue).
MILESTONES = ["first failed probe of the primary", "failover (health-monitor)",
              "first mail delivered to the standby", "first user activity", "failback started",
              "back to normal", "verify: clean"]


def test_the_report_of_a_lab_outage_has_its_timeline_in_order_and_the_demos_figures(
        lab: Lab) -> None:
    back_to_normal(lab)
    scenario = OutageScenario(lab)
    with restored(lab):
        measured = scenario.run()
    assert measured.passed, (measured.lost, measured.duplicated, measured.misplaced)
    report = scenario.incident()

    timeline = report["timeline"]
    assert [event["at"] for event in timeline] == sorted(event["at"] for event in timeline)
    positions = [next(n for n, event in enumerate(timeline) if event["what"].startswith(what))
                 for what in MILESTONES]
    assert positions == sorted(positions), [event["what"] for event in timeline]
    baseline = next(n for n, event in enumerate(timeline)
                    if event["what"].startswith("sync agent's baseline"))
    assert positions[1] < baseline < positions[3]

    figures = report["figures"]
    assert measured.detection_seconds is not None and measured.rto_seconds is not None
    # The demo times from the kill; the report from the first failed probe, a round later.
    assert 0 < figures["detection_seconds"] <= measured.detection_seconds + 0.2
    assert abs(figures["rto_seconds"] - measured.rto_seconds) < 2.5
    assert figures["rto_measured_to"] == "first mail delivered to the standby"
    # The demo counts the mail it sent from outside; the report all mail the gateway routed to
    # the standby, Alice's message to Bob sent from the standby included.
    routed = [sent for sent in measured.sent if sent.phase in ("outage", "sent-on-standby")]
    assert measured.routed_to_standby == len(routed) - 1
    assert figures["routed_to_standby_messages"] == len(routed)
    assert figures["routed_to_standby_deliveries"] == sum(len(sent.recipients) for sent in routed)
    assert figures["merged"] == measured.merged > 0
    assert measured.failback_seconds is not None
    assert 0 < figures["failback_seconds"] <= measured.failback_seconds
    assert figures["refused"] == 0 and figures["verify"]["ok"] is True
    assert figures["activity"]["new_messages"] >= measured.routed_to_standby
    assert figures["rpo_seconds"] >= 0 and figures["history_days"] is not None
    assert not [item for item in report["went_wrong"]
                if "hook" in item or "refused" in item or "verify" in item]

    archived = Path(report["archived_to"])
    assert archived.parent == lab.config.drill.report_dir
    assert archived.with_suffix(".txt").read_text().startswith(
        f"Incident report: outage {report['outage']} (merged)")

    runner = CliRunner()
    shown = runner.invoke(main, ["--config", str(lab.config_file), "report", "--outage",
                                 str(report["outage"]), "--json"])
    assert shown.exit_code == 0, shown.output
    again = json.loads(shown.stdout)
    assert again["timeline"] == timeline and again["figures"] == figures
    text = runner.invoke(main, ["--config", str(lab.config_file), "report"]).stdout
    assert "RTO achieved" in text and "What went wrong" in text
    missing = runner.invoke(main, ["--config", str(lab.config_file), "report", "--outage",
                                   "9999"])
    assert missing.exit_code == 1 and "no outage 9999" in missing.stderr
