"""The full outage drill of ``make demo`` as a test: nothing lost, nothing duplicated.

Mail before; the primary killed (policyd fails over); mail during, one message just as the
primary dies (it has a journal copy and a delivered copy on the standby, and must still reach
the primary once); a user reading, flagging, moving, drafting and sending on the standby; the
primary back; the automatic failback the sync agent completes.
"""

from __future__ import annotations

from mailcontinuity.lab import Lab
from mailcontinuity.lab.scenario import OutageScenario
from tests.lab.policyd_helpers import back_to_normal


def test_outage_scenario_loses_nothing_and_duplicates_nothing(lab: Lab) -> None:
    try:
        report = OutageScenario(lab).run()
    finally:
        back_to_normal(lab)
    assert report.lost == []
    assert report.duplicated == []
    assert report.misplaced == []
    assert all(report.activity_checks.values()), report.activity_checks
    assert report.detection_seconds is not None
    assert report.rto_seconds is not None and report.rto_seconds < 15
    assert report.merged > 0
