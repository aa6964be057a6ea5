"""A bounded chaos run in CI: kills and restarts at random (seeded), nothing lost or duplicated.

bench/chaos.py runs the long version; this one keeps CI short (about a minute) on its own lab,
so the session lab used by the other tests never sees the kills.

On both stores. The PostgreSQL run is the store's part of the soak, not the whole of it: the
first 20 s of the same seeded schedule, which (seed 3) SIGKILLs the sync agent and policyd, stops
the primary long enough for a failover, and SIGKILLs the sync agent again while the failback
merges; the run must show those transitions in the store's audit. The last 10 s of the SQLite
run only kill policyd again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mailcontinuity.lab import Lab
from mailcontinuity.lab.chaos import ChaosRun
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.db import open_store
from tests.lab.backends import LAB_BACKENDS

SEED = int(os.environ.get("MAILCONTINUITY_CHAOS_SEED", "3"))
SOAK_SECONDS = {"sqlite": 30, "postgresql": 20}


def transitions(lab: Lab, since: float) -> list[str]:
    """Each recorded transition's new state since ``since``, in order."""
    store = open_store(lab.config)
    try:
        return [entry.to_state for entry in audit_log(store, since=since)
                if entry.event == "transition"]
    finally:
        store.close()


@pytest.mark.parametrize("backend", LAB_BACKENDS)
def test_chaos_loses_nothing_duplicates_nothing_bounces_nothing(fresh_lab_dir: Path,
                                                                backend: str) -> None:
    lab = Lab.up(fresh_lab_dir, state=backend)
    started = time.time()
    report = ChaosRun(lab, seed=SEED, duration=SOAK_SECONDS[backend], rate=2).run()
    summary = "\n".join([*report.actions, *(f"{k}: {v}" for k, v in report.rows())])
    assert report.accepted, summary
    assert len(report.actions) >= 4, summary  # something was actually broken
    assert report.lost == [], summary
    assert report.duplicated == [], summary
    assert report.bounced == 0, summary
    if backend == "postgresql" and SEED == 3:
        # The run is there for the store: its transitions happened (the schedule above).
        made = transitions(lab, started)
        assert "failover" in made and made[-1] == "normal", f"{made}\n{summary}"
