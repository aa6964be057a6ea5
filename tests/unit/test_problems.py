"""The verdict ``status`` opens with: every watched part's problem, since when, what to do; the
``--check`` line and exit status; the counts the journal's pace is judged by."""

from __future__ import annotations

import grp
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pytest_mock import MockerFixture

from mailcontinuity.cli.main import main
from mailcontinuity.config import LOCAL_HOST, Config, parse_config
from mailcontinuity.journal.spool import SpoolUsage
from mailcontinuity.lab.process import free_ports
from mailcontinuity.mail.postfix import postfix_access_problem
from mailcontinuity.monitor.accepted import AcceptedMessages
from mailcontinuity.monitor.watch import standby_ready
from mailcontinuity.reports.metrics import StoreCollector
from mailcontinuity.reports.problems import Problem, merge_by_part, watch
from mailcontinuity.reports.status import check_result, collect_status, render_status
from mailcontinuity.store.accepted import accepted_since, add_accepted
from mailcontinuity.store.checks import Check, record_checks
from mailcontinuity.store.db import SQLiteStore, StateStore, open_store
from mailcontinuity.store.heartbeats import policyd_beat, policyd_stopped, sync_agent_beat
from mailcontinuity.store.journal import CopyRecord, record_copies
from mailcontinuity.store.probes import ProbeResult, record_probes
from mailcontinuity.store.state import current_state, transition

STANDBY_CHECKS = (("standby", "lmtp", "127.0.0.1:24"), ("standby", "imap", "127.0.0.1:143"),
                  ("milter", "socket", "127.0.0.1:8891"))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    for sub in ("spool", "mail", "state"):
        (tmp_path / sub).mkdir()
    return parse_config({
        "state": {"path": str(tmp_path / "state" / "state.db")},
        "domains": {"protected": ["example.org"]},
        "primary": {"delivery": "smtp:192.0.2.1:25", "imap": "192.0.2.1:143"},
        "standby": {"imap": "127.0.0.1:143", "lmtp": "127.0.0.1:24",
                    "maildir": str(tmp_path / "mail" / "%d" / "%n")},
        "milter": {"spool_dir": str(tmp_path / "spool")},
    }, tmp_path / "mailcontinuity.toml")


@pytest.fixture
def store(config: Config) -> Iterator[StateStore]:
    """A store in which policyd and the sync agent have just reported, the primary is healthy
    and every watched part's check passed."""
    opened = SQLiteStore(config.state.path)
    now = time.time()
    policyd_beat(opened, LOCAL_HOST, now - 60, now, 15.0)
    sync_agent_beat(opened, LOCAL_HOST, now - 60)
    record_probes(opened, LOCAL_HOST,
                  [ProbeResult("delivery", "smtp:192.0.2.1:25", True, 3.0, "", now),
                   ProbeResult("imap", "192.0.2.1:143", True, 4.0, "", now)])
    record_checks(opened, LOCAL_HOST, [Check(part, name, target, True, now, latency_ms=2.0)
                           for part, name, target in STANDBY_CHECKS])
    yield opened
    opened.close()


def report(config: Config, store: StateStore) -> dict:
    return collect_status(config, store, live=False)


def test_all_parts_answering_is_protected_and_exits_ok(config: Config, store: StateStore) -> None:
    status = report(config, store)
    assert status["protected"] is True and status["problems"] == []
    assert status["parts"] == {part: True for part in
                               ("primary", "standby", "milter", "policyd", "sync-agent", "store")}
    assert render_status(status).splitlines()[0].startswith("PROTECTED: every watched part")
    line, code = check_result(status)
    assert code == 0 and line.startswith("MAILCONTINUITY OK - protected") and "\n" not in line
    perfdata = line.split(" | ", 1)[1].split()
    assert "journal_lag=0.000s;;;0" in perfdata and "primary_imap=0.004s;;;0" in perfdata
    assert "standby_lmtp=0.002s;;;0" in perfdata


def test_a_failing_check_is_a_problem_since_its_first_failure(config: Config,
                                                               store: StateStore) -> None:
    first = time.time()
    for at in (first, first + 1):
        record_checks(store, LOCAL_HOST, [Check("standby", "lmtp", "127.0.0.1:24", False, at,
                                    "Connection refused", "start the standby's Dovecot")])
    status = report(config, store)
    assert status["protected"] is False
    [problem] = status["problems"]
    assert set(problem) == {"part", "since", "detail", "action"}  # the contract, exactly
    assert problem["part"] == "standby" and problem["since"] == pytest.approx(first)
    assert "lmtp 127.0.0.1:24: Connection refused" in problem["detail"]
    assert problem["action"] == "start the standby's Dovecot"
    line, code = check_result(status)
    assert code == 2 and line.startswith("MAILCONTINUITY CRITICAL - NOT PROTECTED: standby:")
    text = render_status(status)
    assert text.splitlines()[0] == "NOT PROTECTED (CRITICAL): 1 problem"
    assert "next: start the standby's Dovecot" in text

    record_checks(store, LOCAL_HOST, [Check("standby", "lmtp", "127.0.0.1:24", True, first + 2)])
    assert report(config, store)["protected"] is True


def test_a_stopped_policyd_hides_no_problem_and_claims_no_health(config: Config,
                                                                 store: StateStore) -> None:
    record_probes(store, LOCAL_HOST, [ProbeResult("delivery", "smtp:192.0.2.1:25", False, 3000.0,
                                      "no answer within 3s", time.time())])
    policyd_stopped(store, LOCAL_HOST, time.time())
    status = report(config, store)
    assert [p["part"] for p in status["problems"]] == ["policyd"]
    assert "an outage would not be detected" in status["problems"][0]["detail"]
    assert status["primary"]["healthy"] is None
    assert check_result(status)[1] == 2


def test_primary_and_standby_down_say_that_failover_is_held(config: Config,
                                                            store: StateStore) -> None:
    now = time.time()
    record_probes(store, LOCAL_HOST, [ProbeResult("delivery", "smtp:192.0.2.1:25", False, 1.0,
                                      "Connection refused", now)])
    record_checks(store, LOCAL_HOST, [Check("standby", "imap", "127.0.0.1:143", False, now,
                                "Connection refused", "start it")])
    status = report(config, store)
    parts = {p["part"]: p for p in status["problems"]}
    assert set(parts) == {"primary", "standby"}
    assert "the standby is down too" in parts["primary"]["detail"]
    assert "waits in Postfix's queue" in parts["primary"]["detail"]
    assert standby_ready([Check("standby", "imap", "x", False, now, "refused")]) == (
        False, "imap x: refused")


def test_primary_down_in_failover_is_a_warning(config: Config, store: StateStore) -> None:
    transition(store, "failover", "primary failed", "health-monitor")
    record_probes(store, LOCAL_HOST, [ProbeResult("imap", "192.0.2.1:143", False, 1.0, "refused",
                                      time.time())])
    status = report(config, store)
    assert [p["part"] for p in status["problems"]] == ["primary"]
    assert status["verdict"] == "WARNING" and check_result(status)[1] == 1


def test_a_stopped_or_silent_sync_agent_is_a_problem(config: Config, store: StateStore) -> None:
    record_checks(store, LOCAL_HOST, [Check("sync-agent", "process", "host", False, time.time(),
                                "was stopped (pid 7)")])
    [problem] = report(config, store)["problems"]
    assert problem["part"] == "sync-agent" and "was stopped (pid 7)" in problem["detail"]
    sync_agent_beat(store, LOCAL_HOST, time.time())  # a new agent started since
    assert report(config, store)["protected"] is True
    store.execute("UPDATE sync_agent SET heartbeat_at = ?", [time.time() - 60])
    [silent] = report(config, store)["problems"]
    assert silent["part"] == "sync-agent" and "no heartbeat" in silent["detail"]


def test_a_failing_automatic_failback_is_a_problem_while_the_state_is_failback(
        config: Config, store: StateStore) -> None:
    said = "failback keeps failing, retried every 15s: login as a@example.org failed (NO Invalid)"
    record_checks(store, LOCAL_HOST, [Check("sync-agent", "failback", "192.0.2.1:143", False,
                                            time.time(), said, "fix what the message names")])
    assert report(config, store)["protected"] is True  # not while the state is normal
    transition(store, "failover", "test", "test")
    transition(store, "failback", "test", "test")
    [problem] = [p for p in report(config, store)["problems"] if p["part"] == "sync-agent"]
    assert problem["detail"] == said and problem["action"] == "fix what the message names"
    record_checks(store, LOCAL_HOST,
                  [Check("sync-agent", "failback", "192.0.2.1:143", True, time.time())])
    assert "sync-agent" not in {p["part"] for p in report(config, store)["problems"]}


def test_gateway_mail_without_journal_copies_is_a_milter_problem(config: Config,
                                                                 store: StateStore) -> None:
    now = time.time()
    add_accepted(store, now, 4)
    assert report(config, store)["protected"] is True  # below journal_pace_min_messages
    add_accepted(store, now, 6)
    assert accepted_since(store, now - 60, now) == 10
    [problem] = report(config, store)["problems"]
    assert problem["part"] == "milter" and "accepted 10 messages" in problem["detail"]
    record_copies(store, [CopyRecord(f"m{n}", "a@example.org", "INBOX", "shipped", now)
                          for n in range(6)])
    assert report(config, store)["protected"] is True
    transition(store, "failover", "test", "test")  # the milter leaves that mail alone
    assert "milter" not in {p["part"] for p in report(config, store)["problems"]}


def test_a_full_disk_is_a_problem_of_its_part(config: Config, store: StateStore,
                                             mocker: MockerFixture) -> None:
    real = os.statvfs

    def nearly_full(path: object) -> os.statvfs_result:
        found = real(path)  # type: ignore[arg-type]
        if "spool" not in str(path):
            return found
        values = list(found)
        values[4] = values[2] // 50  # f_bavail: 2% left
        return os.statvfs_result(values)

    mocker.patch("mailcontinuity.reports.problems.os.statvfs", side_effect=nearly_full)
    [problem] = report(config, store)["problems"]
    assert problem["part"] == "milter" and "2.0% free space" in problem["detail"]
    assert report(config, store)["verdict"] == "CRITICAL"


def test_an_unreadable_store_is_a_problem(config: Config, store: StateStore) -> None:
    state = config.state.path
    state.rename(state.with_suffix(".moved"))
    state.mkdir()
    try:
        status = watch(config, store, current_state(store), {}, SpoolUsage(0, 0, 0.0),
                       live=False)
        assert [p.part for p in status.problems] == ["store"]
        assert "missing or not a regular file" in status.problems[0].detail
    finally:
        state.rmdir()
        state.with_suffix(".moved").rename(state)


def test_a_shared_store_that_does_not_answer_is_served_as_the_store_problem(
        tmp_path: Path) -> None:
    """A PostgreSQL store stopped: the endpoint's collector cannot read it at all. The verdict
    is served as ``status`` gives it (part ``store`` not ok, not protected), so that the
    example alerts on ``part_ok{part="store"}`` and ``protected`` fire; the sections that need
    the store say they could not be read."""
    closed = free_ports(1)[0]  # nothing listens there: every connection is refused at once
    (tmp_path / "spool").mkdir()
    shared = parse_config({
        "state": {"url": f"postgresql://mc@127.0.0.1:{closed}/mc", "tls": "none",
                  "connect_timeout_seconds": 2},
        "domains": {"protected": ["example.org"]},
        "primary": {"delivery": "smtp:192.0.2.1:25", "imap": "192.0.2.1:143"},
        "standby": {"imap": "127.0.0.1:143", "lmtp": "127.0.0.1:24"},
        "milter": {"spool_dir": str(tmp_path / "spool")},
    }, tmp_path / "mailcontinuity.toml")
    store = open_store(shared, connect=False)
    try:
        served = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                  for family in StoreCollector(shared, store).collect()
                  for sample in family.samples}
    finally:
        store.close()
    assert served[("mailcontinuity_part_ok", (("part", "store"),))] == 0
    assert served[("mailcontinuity_protected", ())] == 0
    assert served[("mailcontinuity_part_problem_since_timestamp_seconds",
                   (("part", "store"),))] > 0
    assert served[("mailcontinuity_scrape_error", (("section", "watch"),))] == 0
    for section in ("state", "journal", "probes", "outage"):
        assert served[("mailcontinuity_scrape_error", (("section", section),))] == 1


def test_problems_of_one_part_are_merged_in_part_order() -> None:
    merged = merge_by_part([
        Problem("store", 5.0, "full", "free it", "warning"),
        Problem("milter", 9.0, "late", "look", "warning"),
        Problem("milter", 3.0, "refused", "start it"),
    ])
    assert [p.part for p in merged] == ["milter", "store"]
    assert merged[0] == Problem("milter", 3.0, "late; refused", "start it", "critical")


def test_accepted_messages_are_counted_once_per_message() -> None:
    accepted = AcceptedMessages()
    for instance in ("a1", "a1", "b2", ""):
        accepted.seen(instance)
    assert accepted.take() == 3 and accepted.take() == 0


def test_postfix_access_to_a_socket_is_judged_by_its_modes() -> None:
    directory = Path(tempfile.mkdtemp(prefix="mc-sock-", dir="/tmp"))
    try:
        path = directory / "milter.sock"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            directory.chmod(0o700)
            assert "not searchable by user postfix" in (postfix_access_problem(path) or "")
            directory.chmod(0o755)
            path.chmod(0o600)
            assert "not writable by user postfix" in (postfix_access_problem(path) or "")
            os.chown(path, -1, grp.getgrnam("postfix").gr_gid)
            path.chmod(0o660)
            assert postfix_access_problem(path) is None
    finally:
        shutil.rmtree(directory)


def test_status_check_is_unknown_when_it_cannot_tell(tmp_path: Path) -> None:
    """A monitoring plugin that cannot read its configuration says UNKNOWN (3), never OK."""
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "missing.toml"), "status",
                                       "--check"])
    assert result.exit_code == 3
    assert result.stdout.startswith("MAILCONTINUITY UNKNOWN - ") and "not found" in result.stdout


def test_a_slow_login_is_a_warning_not_a_failing_primary() -> None:
    """Issue 20: "slow to log in" (ok with a reason) is told apart from down."""
    from mailcontinuity.reports.problems import primary_problem
    from mailcontinuity.store.probes import ProbeResult
    from mailcontinuity.store.state import State
    state = State("normal", 0.0, "", "")
    slow = ProbeResult("imap_login", "p:143", True, 4000.0, "slow to log in: ...", 10.0)
    fine = ProbeResult("imap", "p:143", True, 3.0, "", 10.0)
    problem = primary_problem(state, [fine, slow], None, "", 10.0)
    assert problem is not None and problem.severity == "warning"
    assert "slowly" in problem.detail and "no failover" in problem.action
    assert primary_problem(state, [fine], None, "", 10.0) is None
    down = ProbeResult("imap", "p:143", False, 3.0, "refused", 10.0)
    assert primary_problem(state, [down, slow], None, "", 10.0).severity == "critical"  # type: ignore[union-attr]
