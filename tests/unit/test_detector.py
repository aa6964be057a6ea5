"""The failover/failback decision on synthetic probe rounds: thresholds, hold-down, modes."""

from __future__ import annotations

import time

import pytest

from mailcontinuity.config import FailbackSection, HealthSection
from mailcontinuity.monitor.detector import MONITOR_ACTOR, Detector, in_window
from mailcontinuity.store.state import State, StateName

HEALTH = HealthSection(interval_seconds=1, failures=3, failure_window_seconds=4, successes=3,
                       hold_down_seconds=30)


def state(name: StateName, since: float = -1000.0, actor: str = MONITOR_ACTOR) -> State:
    return State(name, since, "test", actor)


def run(detector: Detector, current: State, rounds: list[tuple[float, bool]]) -> list[str]:
    """Feed rounds, applying each decision as change_state would; returns the transitions."""
    transitions = []
    for at, healthy in rounds:
        decision = detector.observe(at, healthy, current)
        if decision is not None:
            assert current.name in decision.expect
            transitions.append(f"{at:g}:{decision.to_state}")
            current = State(decision.to_state, at, decision.cause, MONITOR_ACTOR)
    return transitions


def test_failover_needs_n_failures_spanning_t_seconds() -> None:
    detector = Detector(HEALTH, FailbackSection())
    # Three failures within 2 s are not enough (T = 4 s); the fifth, 4 s after the first, is.
    rounds = [(0, True), (1, False), (2, False), (3, False), (4, False), (5, False)]
    assert run(detector, state("normal"), rounds) == ["5:failover"]


def test_a_success_resets_the_failure_count() -> None:
    detector = Detector(HEALTH, FailbackSection())
    rounds = [(t, t % 3 != 0) for t in range(1, 40)]  # one failure in three: never N in a row
    assert run(detector, state("normal"), rounds) == []


def test_failback_needs_m_successes_and_an_unbroken_hold_down() -> None:
    detector = Detector(HEALTH, FailbackSection())
    rounds = [(t, False) for t in range(0, 6)] + [(t, True) for t in range(6, 50)]
    assert run(detector, state("normal"), rounds) == ["4:failover", "36:failback"]


def test_flapping_primary_causes_one_transition_per_hold_down_at_most() -> None:
    detector = Detector(HEALTH, FailbackSection())
    # Down 6 s, up 6 s, for five minutes: healthy stretches never last the 30 s hold-down.
    rounds = [(t, (t // 6) % 2 == 1) for t in range(0, 300)]
    transitions = run(detector, state("normal"), rounds)
    assert transitions == ["4:failover"]


def test_new_outage_during_failback_fails_over_again_after_the_hold_down() -> None:
    detector = Detector(HEALTH, FailbackSection())
    rounds = [(t, False) for t in range(100, 140)]
    # Entered failback at 100 by the monitor: no reversal before 130.
    assert run(detector, state("failback", since=100), rounds) == ["130:failover"]


def test_operator_failback_does_not_delay_a_new_failover() -> None:
    detector = Detector(HEALTH, FailbackSection())
    rounds = [(t, False) for t in range(100, 110)]
    assert run(detector, state("failback", since=100, actor="root"), rounds) == ["104:failover"]


def test_forced_failover_is_never_undone_by_the_monitor() -> None:
    detector = Detector(HEALTH, FailbackSection())
    rounds = [(t, True) for t in range(0, 200)]
    assert run(detector, state("failover", actor="root"), rounds) == []


def test_manual_mode_waits_for_the_operator() -> None:
    detector = Detector(HEALTH, FailbackSection(mode="manual"))
    rounds = [(t, True) for t in range(0, 200)]
    assert run(detector, state("failover"), rounds) == []


def test_window_mode_fails_back_only_inside_the_window() -> None:
    base = time.mktime((2026, 11, 20, 12, 0, 0, 0, 0, -1))  # local noon
    detector = Detector(HEALTH, FailbackSection(mode="window", window="12:10-12:20"))
    rounds = [(base + t, True) for t in range(0, 1500, 10)]
    [transition] = run(detector, state("failover", since=base - 100), rounds)
    assert transition == f"{base + 600:g}:failback"


@pytest.mark.parametrize(("window", "clock", "inside"), [
    ("22:00-06:00", (23, 30), True), ("22:00-06:00", (5, 59), True),
    ("22:00-06:00", (6, 0), False), ("22:00-06:00", (12, 0), False),
    ("01:00-03:00", (2, 0), True), ("01:00-03:00", (3, 0), False),
])
def test_window_may_span_midnight(window: str, clock: tuple[int, int], inside: bool) -> None:
    at = time.mktime((2026, 11, 20, clock[0], clock[1], 0, 0, 0, -1))
    assert in_window(window, at) is inside
