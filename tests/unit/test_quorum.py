"""Quorum of gateways: the pure count (``tally``), each gateway's vote (``Detector.vote``), and
the transition it guards, with several gateways racing on each backend (``store_config``)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailcontinuity.config import ClusterSection, Config, ConfigError, load_config, parse_config
from mailcontinuity.monitor.detector import Detector
from mailcontinuity.monitor.quorum import QuorumGuard, fresh_seconds, needed_votes, tally
from mailcontinuity.reports.cluster import cluster_status
from mailcontinuity.reports.problems import (
    Watch,
    current_checks,
    merge_by_part,
    peer_check_problems,
)
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.checks import Check, latest_checks, record_checks
from mailcontinuity.store.db import open_store
from mailcontinuity.store.gateways import (
    GatewayRoute,
    GatewayVote,
    Vote,
    record_route,
    record_vote,
    votes,
)
from mailcontinuity.store.heartbeats import policyd_beat
from mailcontinuity.store.sqlite import SQLiteStore
from mailcontinuity.store.state import State, current_state, transition

GATEWAYS = ["gw1", "gw2", "gw3"]


def cluster(quorum: Any = "majority", gateways: list[str] | None = None) -> ClusterSection:
    return ClusterSection(host="gw1", gateways=gateways or GATEWAYS, standby_host="standby",
                          quorum=quorum)


def vote(host: str, want: Vote, at: float) -> GatewayVote:
    return GatewayVote(host, at, want, want != "down", None, "")


def test_majority_of_fresh_votes() -> None:
    now = 1000.0
    recorded = [vote("gw1", "down", now), vote("gw2", "down", now), vote("gw3", "up", now)]
    count = tally(cluster(), recorded, "down", now, max_age=10)
    assert count.met and count.needed == 2 and count.agreeing == ("gw1", "gw2")


def test_one_gateway_alone_cannot_fail_the_site_over() -> None:
    """A glitch between one gateway and the primary: the others see it healthy."""
    now = 1000.0
    recorded = [vote("gw1", "down", now), vote("gw2", "undecided", now),
                vote("gw3", "undecided", now)]
    count = tally(cluster(), recorded, "down", now, max_age=10)
    assert not count.met
    assert "1 of 3 reporting gateways see the primary down" in count.describe()


def test_silent_gateways_do_not_count_towards_the_majority() -> None:
    """gw3's host is down (its last vote is old): the two that report decide."""
    now = 1000.0
    recorded = [vote("gw1", "down", now), vote("gw2", "down", now - 1),
                vote("gw3", "up", now - 500)]
    count = tally(cluster(), recorded, "down", now, max_age=10)
    assert count.met and count.silent == ("gw3",) and count.fresh == ("gw1", "gw2")


def test_a_gateway_whose_peers_are_silent_never_acts_alone() -> None:
    """gw2 and gw3 are cut off from the store (or down): gw1's vote is the only fresh one."""
    now = 1000.0
    recorded = [vote("gw1", "down", now), vote("gw2", "down", now - 500)]
    count = tally(cluster(), recorded, "down", now, max_age=10)
    assert not count.met and count.needed == 2 and count.fresh == ("gw1",)


def test_a_fixed_quorum_is_not_lowered_by_silence() -> None:
    now = 1000.0
    recorded = [vote("gw1", "down", now)]
    count = tally(cluster(quorum=2), recorded, "down", now, max_age=10)
    assert not count.met and count.needed == 2


def test_votes_of_hosts_not_listed_are_ignored() -> None:
    now = 1000.0
    recorded = [vote("gw9", "down", now), vote("gw1", "down", now)]
    count = tally(cluster(gateways=["gw1", "gw2"]), recorded, "down", now, max_age=10)
    assert count.fresh == ("gw1",) and count.agreeing == ("gw1",)


@given(st.lists(st.sampled_from(["down", "up", "undecided", None]), min_size=1, max_size=7))
def test_majority_is_never_met_by_both_sides(choices: list[Vote | None]) -> None:
    """Whatever the votes, failover and failback never both have a majority, and one gateway's
    vote never decides when two or more report."""
    names = [f"gw{n}" for n in range(1, len(choices) + 1)]
    recorded = [vote(name, choice, 100.0) for name, choice in zip(names, choices, strict=True)
                if choice is not None]
    section = cluster(gateways=names)
    down = tally(section, recorded, "down", 100.0, max_age=10)
    up = tally(section, recorded, "up", 100.0, max_age=10)
    assert not (down.met and up.met)
    if len(names) >= 2:  # one gateway never acts alone
        assert down.needed >= 2 and needed_votes(section, 0) == 2


def health_config(tmp_path: Path) -> Config:
    return parse_config({
        "domains": {"protected": ["example.org"]},
        "primary": {"delivery": "lmtp:127.0.0.1:24", "imap": "127.0.0.1:143"},
        "standby": {"imap": "127.0.0.1:10143", "lmtp": "127.0.0.1:10024"},
        "health": {"interval_seconds": 1, "timeout_seconds": 1, "failures": 3,
                   "failure_window_seconds": 2},
    }, tmp_path / "mailcontinuity.toml")


def test_a_gateway_votes_down_only_after_the_failover_thresholds(tmp_path: Path) -> None:
    config = health_config(tmp_path)
    detector = Detector(config.health, config.failback)
    state = State("normal", 0.0, "", "")
    detector.observe(10.0, False, state, "refused")
    detector.observe(11.0, False, state, "refused")
    assert detector.vote(11.0) == "undecided"  # two failed rounds: not yet
    detector.observe(12.0, False, state, "refused")
    assert detector.vote(12.0) == "down"
    detector.observe(13.0, True, state, "")
    assert detector.vote(13.0) == "undecided"  # one healthy round: not up yet


# --- the guarded transition on a real store ---------------------------------------------------
def _gateway(config: Config, host: str, voted: multiprocessing.synchronize.Barrier) -> None:
    """One gateway's monitor: vote, then (once all have voted) try to fail over behind the
    quorum, all at the same instant."""
    store = open_store(config)
    section = cluster()
    with store.transaction():
        record_vote(store, vote(host, "down", time.time()))
    voted.wait(timeout=60)
    transition(store, "failover", cause=f"primary down (seen by {host})", actor="monitor",
               expect=("normal",), guard=QuorumGuard(config, section, "down"))
    store.close()


def test_racing_gateways_make_exactly_one_transition_with_the_quorum(
        store_config: Config) -> None:
    """Three gateways see the primary down at once and race: one transition, audited with the
    votes that allowed it."""
    context = multiprocessing.get_context("spawn")
    voted = context.Barrier(len(GATEWAYS))
    racers = [context.Process(target=_gateway, args=(store_config, host, voted))
              for host in GATEWAYS]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    store = open_store(store_config)
    transitions = [entry for entry in audit_log(store) if entry.event == "transition"]
    assert len(transitions) == 1
    assert current_state(store).name == "failover"
    quorum = transitions[0].detail["quorum"]
    assert quorum["want"] == "down" and quorum["agreeing"] == GATEWAYS
    store.close()


def test_no_quorum_no_transition(store_config: Config) -> None:
    """One gateway sees the primary down, two see it healthy: the state stays, nothing audited
    as a transition, and the guard says why."""
    store = open_store(store_config)
    now = time.time()
    with store.transaction():
        record_vote(store, vote("gw1", "down", now))
        record_vote(store, vote("gw2", "undecided", now))
        record_vote(store, vote("gw3", "undecided", now))
    guard = QuorumGuard(store_config, cluster(), "down")
    assert transition(store, "failover", cause="x", actor="monitor", expect=("normal",),
                      guard=guard) is None
    assert current_state(store).name == "normal"
    assert guard.last is not None and not guard.last.met
    assert [v.host for v in votes(store)] == GATEWAYS
    store.close()


def test_stale_votes_do_not_count(store_config: Config) -> None:
    """Votes older than report_rounds rounds (a gateway cut off since) count for nothing."""
    store = open_store(store_config)
    old = time.time() - 10 * fresh_seconds(store_config, cluster())
    with store.transaction():
        for host in GATEWAYS:
            record_vote(store, vote(host, "down", old))
    assert transition(store, "failover", cause="x", actor="monitor", expect=("normal",),
                      guard=QuorumGuard(store_config, cluster(), "down")) is None
    store.close()


# --- configuration ----------------------------------------------------------------------------
SITE = """
[domains]
protected = ["example.org"]

[primary]
delivery = "lmtp:192.0.2.1:24"
imap = "192.0.2.1:143"

[standby]
imap = "192.0.2.2:143"
lmtp = "192.0.2.2:24"

[cluster]
host = "gw1"
gateways = ["gw1", "gw2"]
standby_host = "standby"
"""


def test_several_hosts_on_sqlite_are_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(SITE)
    with pytest.raises(ConfigError, match=r"state\.url.*gw1, gw2, standby"):
        load_config(path)


def test_a_password_in_the_url_is_refused_and_not_repeated(tmp_path: Path) -> None:
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(SITE + '\n[state]\nurl = "postgresql://mc:s3cret@db.example.org/mc"\n')
    with pytest.raises(ConfigError, match="password_file") as caught:
        load_config(path)
    assert "s3cret" not in str(caught.value)


def test_a_site_on_postgresql_loads(tmp_path: Path) -> None:
    secret = tmp_path / "state-password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(SITE + f'\n[state]\nurl = "postgresql://mc@db.example.org:5433/mc"\n'
                    f'password_file = "{secret}"\n')
    config = load_config(path)
    assert config.state.backend == "postgresql"
    assert config.host_name == "gw1" and config.routes_mail
    assert config.cluster is not None and config.cluster.hosts == ["gw1", "gw2", "standby"]


def test_a_world_readable_store_password_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "state-password"
    secret.write_text("pw\n")
    secret.chmod(0o644)
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(SITE + f'\n[state]\nurl = "postgresql://mc@db.example.org/mc"\n'
                    f'password_file = "{secret}"\n')
    with pytest.raises(ConfigError, match="state.password_file"):
        load_config(path)


def _killed_mid_transition(config: Config, holding: multiprocessing.synchronize.Event) -> None:
    """A gateway's monitor that dies (SIGKILL) inside its transition's write transaction, after
    the state row was written and before the commit."""
    store = open_store(config)
    with store.transaction():
        store.execute("UPDATE state SET name = 'failover', cause = 'dying' WHERE id = 1")
        holding.set()
        time.sleep(120)  # killed here


def test_a_decider_killed_mid_transition_leaves_exactly_one(store_config: Config) -> None:
    """The deciding policyd is killed with SIGKILL while its transition is open: nothing of it
    remains (the store rolls it back and frees the writer lock at once), and the next decider's
    transition is the one recorded."""
    context = multiprocessing.get_context("spawn")
    holding = context.Event()
    victim = context.Process(target=_killed_mid_transition, args=(store_config, holding))
    victim.start()
    assert holding.wait(timeout=60)
    victim.kill()
    victim.join(timeout=30)
    store = open_store(store_config)
    started = time.monotonic()
    old = transition(store, "failover", cause="the other gateway", actor="monitor",
                     expect=("normal",))
    assert old is not None and old.name == "normal"  # the dead one's write never happened
    assert time.monotonic() - started < 10  # its lock went with it
    transitions = [entry for entry in audit_log(store) if entry.event == "transition"]
    assert [(e.from_state, e.to_state, e.cause) for e in transitions] == [
        ("normal", "failover", "the other gateway")]
    store.close()


# --- what status says about the gateways -------------------------------------------------------
def site_config(tmp_path: Path) -> Config:
    return parse_config({
        "domains": {"protected": ["example.org"]},
        "primary": {"delivery": "lmtp:192.0.2.1:24", "imap": "192.0.2.1:143"},
        "standby": {"imap": "192.0.2.2:143", "lmtp": "192.0.2.2:24"},
        "state": {"url": "postgresql://mc@db.example.org/mc"},
        "cluster": {"host": "standby", "gateways": ["gw1", "gw2"], "standby_host": "standby"},
    }, tmp_path / "mailcontinuity.toml")


def test_status_names_the_gateway_that_cannot_see_the_primary(tmp_path: Path) -> None:
    """gw2 is cut from the primary, gw1 is not: no failover, and every host's status says gw2
    cannot reach it, mail through gw2 waits in its queue."""

    config = site_config(tmp_path)
    store = SQLiteStore(tmp_path / "state.db")  # the records are the same on either backend
    now = time.time()
    with store.transaction():
        record_vote(store, GatewayVote("gw1", now, "up", True, now - 60, ""))
        record_vote(store, GatewayVote("gw2", now, "down", False, now - 20,
                                       "delivery lmtp:192.0.2.1:24: timed out"))
    state = current_state(store)
    for host in ("gw1", "gw2"):
        policyd_beat(store, host, now - 100, now, 15.0)
        record_route(store, GatewayRoute(host, "primary", now, state.since, ""))
    report = cluster_status(config, store, state, now)
    problems = report["problems"]
    assert [p["part"] for p in problems] == ["primary"]
    assert "gw2 cannot reach the primary (delivery lmtp:192.0.2.1:24: timed out)" in (
        problems[0]["detail"])
    assert "none bounced" in problems[0]["detail"]
    assert {g["name"]: g["sees_primary"] for g in report["gateways"]} == {
        "gw1": True, "gw2": False}
    store.close()


def test_status_says_when_too_few_gateways_report(tmp_path: Path) -> None:

    config = site_config(tmp_path)
    store = SQLiteStore(tmp_path / "state.db")
    now = time.time()
    with store.transaction():
        record_vote(store, GatewayVote("gw1", now, "down", False, now - 20, "refused"))
    report = cluster_status(config, store, current_state(store), now)
    parts = {p["part"]: p for p in report["problems"]}
    assert "quorum" in parts and "gw2" in parts["quorum"]["action"]
    assert "gw2's policyd has not reported" in parts["policyd"]["detail"]
    store.close()


def test_each_gateway_keeps_its_own_checks_and_every_host_names_a_peers_failure(
        tmp_path: Path) -> None:
    """gw2's milter socket fails, gw1's answers: neither row overwrites the other; gw1 shows its
    own checks and names ``gw2/milter``; the standby host, showing gw1's, names it too."""
    store = SQLiteStore(tmp_path / "state.db")
    now = time.time()
    standby_checks = [Check("standby", "lmtp", "192.0.2.2:24", True, now),
                      Check("standby", "imap", "192.0.2.2:143", True, now)]
    record_checks(store, "gw1", [*standby_checks,
                                 Check("milter", "socket", "/run/milter.sock", True, now)])
    record_checks(store, "gw2", [*standby_checks,
                                 Check("milter", "socket", "/run/milter.sock", False, now,
                                       "connection refused", "start gw2's milter")])
    assert all(r.check.ok for r in latest_checks(store, "gw1"))
    assert [r.check.ok for r in latest_checks(store, "gw2")] == [False, True, True]
    with store.transaction():  # the standby host shows the probes (and checks) of gw1
        record_vote(store, GatewayVote("gw1", now, "up", True, now - 60, ""))
        record_vote(store, GatewayVote("gw2", now - 1, "up", True, now - 60, ""))
    standby_host = site_config(tmp_path)
    gw1 = standby_host.model_copy(update={"cluster": standby_host.cluster.model_copy(  # type: ignore[union-attr]
        update={"host": "gw1"})})
    for config in (gw1, standby_host):
        shown, ran_here = current_checks(config, store, now, 15.0, live=False)
        assert not ran_here and {r.host for r in shown} == {"gw1"}
        problems = merge_by_part(peer_check_problems(config, store, shown, now, 15.0))
        assert [(p.part, p.detail, p.action) for p in problems] == [
            ("gw2/milter", "socket /run/milter.sock: connection refused", "start gw2's milter")]
        verdict = Watch(["standby", "milter"], problems, shown).part_ok()
        assert verdict == {"standby": True, "milter": False}
    # Stale: a gateway that stopped reporting is policyd's problem, not a failing milter.
    assert peer_check_problems(gw1, store, [], now + 60, 15.0) == []
    store.close()
