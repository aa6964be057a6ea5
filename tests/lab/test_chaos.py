"""A bounded chaos run in CI: kills and restarts at random (seeded), nothing lost or duplicated.

bench/chaos.py runs the long version; this one keeps CI short (about a minute) on its own lab,
so the session lab used by the other tests never sees the kills.
"""

from __future__ import annotations

import os
from pathlib import Path

from mailcontinuity.lab import Lab
from mailcontinuity.lab.chaos import ChaosRun

SEED = int(os.environ.get("MAILCONTINUITY_CHAOS_SEED", "3"))


def test_chaos_loses_nothing_duplicates_nothing_bounces_nothing(fresh_lab_dir: Path) -> None:
    lab = Lab.up(fresh_lab_dir)
    report = ChaosRun(lab, seed=SEED, duration=30, rate=2).run()
    summary = "\n".join([*report.actions, *(f"{k}: {v}" for k, v in report.rows())])
    assert report.accepted, summary
    assert len(report.actions) >= 4, summary  # something was actually broken
    assert report.lost == [], summary
    assert report.duplicated == [], summary
    assert report.bounced == 0, summary
