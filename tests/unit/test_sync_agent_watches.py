"""The sync agent's inotify watches: only what recording needs (no tmp/), one look-up per event,
and the kernel's watch limit reported loudly with the fix, never a silent gap in the record.

The machine's fs.inotify.max_user_watches is not touched: the limit is injected into the
result of ``add_watch`` (a negative descriptor with ENOSPC, what the kernel answers).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from mailcontinuity.config import Config, parse_config
from mailcontinuity.outage.recorder import SyncAgent, wanted_watches
from mailcontinuity.reports.status import collect_status
from mailcontinuity.store.checks import latest_checks
from mailcontinuity.store.heartbeats import sync_agent_beat
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.store.state import transition

USERS = ("alice", "bob", "carol", "dave")
FOLDERS = ("", ".Sent", ".Trash")  # INBOX (the root) and two folders


def make_maildir(root: Path) -> None:
    for folder in FOLDERS:
        for sub in ("new", "cur", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)


def deliver(maildir: Path, name: str, message_id: str) -> None:
    (maildir / "new" / name).write_bytes(
        f"From: a@example.org\r\nMessage-ID: <{message_id}>\r\nSubject: x\r\n\r\nbody\r\n"
        .encode())


@pytest.fixture
def config(tmp_path: Path) -> Config:
    for sub in ("spool", "state"):
        (tmp_path / sub).mkdir()
    for user in USERS:
        make_maildir(tmp_path / "mail" / "example.org" / user)
    return parse_config({
        "state": {"path": str(tmp_path / "state" / "state.db")},
        "domains": {"protected": ["example.org"]},
        "primary": {"delivery": "smtp:192.0.2.1:25", "imap": "192.0.2.1:143"},
        "standby": {"imap": "127.0.0.1:143", "lmtp": "127.0.0.1:24",
                    "maildir": str(tmp_path / "mail" / "%d" / "%n")},
        "milter": {"spool_dir": str(tmp_path / "spool")},
    }, tmp_path / "mailcontinuity.toml")


@pytest.fixture
def agent(config: Config) -> Iterator[SyncAgent]:
    made = SyncAgent(config)
    yield made
    made.notifier.stop()
    made.hooks.close(1)
    made.store.close()


def pump(agent: SyncAgent) -> None:
    """Hand every pending inotify event to the agent, as its loop does."""
    while agent.notifier.check_events(timeout=200):
        agent.notifier.read_events()
        agent.notifier.process_events()


def watch_check(agent: SyncAgent) -> tuple[int, str, str]:
    [record] = [r for r in latest_checks(agent.store)
                if (r.check.part, r.check.name) == ("sync-agent", "inotify")]
    return int(record.check.ok), record.check.detail, record.check.action


def test_only_the_root_and_each_folders_new_and_cur_are_watched(agent: SyncAgent,
                                                                 config: Config) -> None:
    agent.discover_users()
    assert set(agent.maildirs) == {f"{user}@example.org" for user in USERS}
    for user, maildir in agent.maildirs.items():
        watched = set(agent.user_wds[user])
        assert watched == {maildir, maildir / "new", maildir / "cur",
                           maildir / ".Sent" / "new", maildir / ".Sent" / "cur",
                           maildir / ".Trash" / "new", maildir / ".Trash" / "cur"}
        assert not any(path.name == "tmp" for path in watched)
    # 1 per Maildir + 2 per folder, nothing else in the kernel either.
    assert len(agent.watches.watches) == len(USERS) * (1 + 2 * len(FOLDERS)) == len(agent.wd_user)
    ok, detail, _ = watch_check(agent)
    assert ok == 1 and f"{len(USERS) * 7} inotify watches for {len(USERS)} users" in detail


def test_an_event_reaches_its_user_by_watch_descriptor(agent: SyncAgent, config: Config) -> None:
    agent.discover_users()
    transition(agent.store, "failover", "test", "test")
    agent.follow_state()  # starts recording: the baseline rescan
    assert agent.outage is not None
    bob = agent.maildirs["bob@example.org"]
    deliver(bob, "1700000000.M1P1.test", "watched@example.org")
    pump(agent)
    changelog = ChangeLog(agent.store)
    [row] = [r for r in changelog.messages(agent.outage.id)
             if r.message_id == "<watched@example.org>"]
    assert row.user == "bob@example.org"


def test_a_new_folder_gets_its_watches_even_when_cur_comes_after_the_folder(
        agent: SyncAgent) -> None:
    agent.discover_users()
    carol = agent.maildirs["carol@example.org"]
    (carol / ".Projects").mkdir()  # Dovecot makes the folder, then its subdirectories
    pump(agent)
    agent.discover_users()
    assert carol / ".Projects" / "cur" not in agent.user_wds["carol@example.org"]
    for sub in ("new", "cur", "tmp"):
        (carol / ".Projects" / sub).mkdir()
    agent.discover_users()  # the next discovery tick looks again
    assert {carol / ".Projects" / "new", carol / ".Projects" / "cur"} <= set(
        agent.user_wds["carol@example.org"])
    assert carol / ".Projects" / "tmp" not in agent.user_wds["carol@example.org"]


def test_at_the_watch_limit_the_agent_says_so_rescans_and_recovers(
        agent: SyncAgent, config: Config, mocker: MockerFixture) -> None:
    limit = 10  # alice's 7 watches fit, bob's do not
    real_add = agent.add_watch
    calls = {"n": 0}

    def limited(path: Path) -> int:
        if calls["n"] >= limit:
            return -1
        calls["n"] += 1
        return real_add(path)

    add = mocker.patch.object(agent, "add_watch", side_effect=limited)
    mocker.patch.object(agent, "watch_errno", return_value=errno.ENOSPC)
    agent.discover_users()
    assert agent.unwatched == {"bob@example.org", "carol@example.org", "dave@example.org"}
    assert add.call_count == limit + 1  # after the first refusal nothing more is tried
    ok, detail, action = watch_check(agent)
    assert ok == 0
    needed = len(USERS) * 7
    assert "fs.inotify.max_user_watches" in detail and f"needs {needed} watches" in detail
    assert "sysctl -w fs.inotify.max_user_watches=" in detail and "3 users" in detail
    assert "no restart" in action
    # status shows it, as a warning: recording goes on by rescans.
    sync_agent_beat(agent.store, config.host_name, time.time())
    [problem] = [p for p in collect_status(config, agent.store, live=False)["problems"]
                 if p["part"] == "sync-agent"]
    assert "fs.inotify.max_user_watches" in problem["detail"]

    # During an outage an unwatched user's mail is recorded by the periodic rescan.
    transition(agent.store, "failover", "test", "test")
    agent.follow_state()
    assert agent.outage is not None
    deliver(agent.maildirs["dave@example.org"], "1700000001.M2P1.test", "rescued@example.org")
    pump(agent)  # no event: dave has no watch
    changelog = ChangeLog(agent.store)
    assert not [r for r in changelog.messages(agent.outage.id)
                if r.message_id == "<rescued@example.org>"]
    agent.next_unwatched = 0.0  # UNWATCHED_RESCAN_SECONDS have passed
    agent.discover_users()
    agent.follow_state()
    [row] = [r for r in changelog.messages(agent.outage.id)
             if r.message_id == "<rescued@example.org>"]
    assert row.user == "dave@example.org"

    # The operator raised the limit: the next retry watches everyone, the check turns ok.
    add.side_effect = real_add
    agent.next_unwatched = 0.0
    agent.discover_users()
    assert agent.unwatched == set()
    assert len(agent.wd_user) == needed
    assert watch_check(agent)[0] == 1


def test_wanted_watches_skip_tmp_and_incomplete_folders(tmp_path: Path) -> None:
    make_maildir(tmp_path)
    (tmp_path / ".Half").mkdir()  # no cur/ yet: not a folder
    assert sorted(p.relative_to(tmp_path).as_posix() for p in wanted_watches(tmp_path)) == [
        ".", ".Sent/cur", ".Sent/new", ".Trash/cur", ".Trash/new", "cur", "new"]
