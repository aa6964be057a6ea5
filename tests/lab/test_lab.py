"""The lab: real Postfix and Dovecot instances, started, used, stopped and started again."""

from __future__ import annotations

import grp
import json
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.config import UnixSocket
from mailcontinuity.lab import Lab
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.mailbox import wait_for_message
from mailcontinuity.lab.process import accepts_connections, descendants
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.store.heartbeats import pid_alive


def test_lab_json_has_the_contract_shape(lab: Lab) -> None:
    description = json.loads((lab.dir / "lab.json").read_text())
    assert set(description["gateway"]) == {"smtp"}
    assert set(description["primary"]) == {"imap", "lmtp", "managesieve"}
    assert set(description["standby"]) == {"imap", "lmtp", "managesieve", "submission"}
    for role in ("gateway", "primary", "standby"):
        for address in description[role].values():
            host, port = address.rsplit(":", 1)
            assert host == "127.0.0.1" and 1024 < int(port) < 65536
    assert len(description["users"]) >= 3
    assert all(set(user) == {"address", "login", "password"} for user in description["users"])
    assert description["domains"] == ["example.test"]
    assert description["config"] == str(lab.dir / "mailcontinuity.toml")


def test_users_log_into_primary_and_standby_with_the_same_password(lab: Lab) -> None:
    for user in lab.users:
        for role in ("primary", "standby"):
            with imap_login(lab.endpoint(role, "imap"), user.login, user.password) as client:
                assert client.select_folder("INBOX")


def test_mail_through_gateway_arrives_in_primary_inbox(lab: Lab) -> None:
    alice, bob = lab.users[0], lab.users[1]
    message = make_message("sender@remote.test", [alice.address, bob.address], "first e2e")
    send_message(lab.gateway.smtp, message, "sender@remote.test", [alice.address, bob.address])
    for user in (alice, bob):
        raw = wait_for_message(lab.endpoint("primary", "imap"), user.login, user.password,
                               message["Message-ID"])
        assert raw is not None, f"{user.address} did not receive the message"
        assert b"Subject: first e2e" in raw


def test_stopped_primary_refuses_and_queued_mail_arrives_after_start(lab: Lab) -> None:
    alice = lab.users[0]
    imap = lab.endpoint("primary", "imap")
    # This checks the lab's stop/start, not failover: keep policyd from routing to the standby.
    lab.part("policyd").stop()
    result = CliRunner().invoke(main, ["lab", "stop", "primary", "--dir", str(lab.dir)])
    try:
        assert result.exit_code == 0, result.output
        assert not accepts_connections(imap)
        assert not accepts_connections(lab.endpoint("primary", "lmtp"))
        message = make_message("sender@remote.test", [alice.address], "while primary down")
        send_message(lab.gateway.smtp, message, "sender@remote.test", [alice.address])
    finally:
        result = CliRunner().invoke(main, ["lab", "start", "primary", "--dir", str(lab.dir)])
        lab.part("policyd").start()
    assert result.exit_code == 0, result.output
    assert accepts_connections(imap)
    lab.gateway.flush()
    assert wait_for_message(imap, alice.login, alice.password, message["Message-ID"]) is not None


def test_milter_and_policy_sockets_are_for_postfixs_group_only(lab: Lab) -> None:
    postfix_gid = grp.getgrnam("postfix").gr_gid
    milter_socket = lab.config.milter.listen
    assert isinstance(milter_socket, UnixSocket)
    for path in (milter_socket.path, lab.config.policyd.socket):
        assert path is not None
        status = path.stat()
        assert stat.S_ISSOCK(status.st_mode), path
        assert (status.st_gid, stat.S_IMODE(status.st_mode)) == (postfix_gid, 0o660), path


def test_unknown_part_name_is_a_clear_error(lab: Lab) -> None:
    result = CliRunner().invoke(main, ["lab", "stop", "mainframe", "--dir", str(lab.dir)])
    assert result.exit_code == 1
    assert ("no lab part named 'mainframe'; choose one of primary, standby, milter, sync-agent,"
            " policyd, gateway") in result.stderr


def test_down_leaves_no_process_and_is_safe_twice(fresh_lab_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["lab", "up", "--dir", str(fresh_lab_dir)])
    assert result.exit_code == 0, result.output
    lab = Lab.load(fresh_lab_dir)
    masters = {name: part.pid() for name, part in lab.parts.items()}
    assert all(masters.values())
    children = [child for pid in masters.values() for child in descendants(pid)]
    assert children
    for _ in range(2):
        result = runner.invoke(main, ["lab", "down", "--dir", str(fresh_lab_dir)])
        assert result.exit_code == 0, result.output
    assert not [pid for pid in [*masters.values(), *children] if pid_alive(pid)]
    assert lab.running() == {name: False for name in lab.parts}


def test_lab_up_without_the_packages_names_them(
    fresh_lab_dir: Path, mocker: pytest.MockFixture
) -> None:
    real_which = shutil.which
    mocker.patch("shutil.which", lambda name: None if name == "dovecot" else real_which(name))
    result = CliRunner().invoke(main, ["lab", "up", "--dir", str(fresh_lab_dir)])
    assert result.exit_code == 1
    assert "apt-get install dovecot-core" in result.stderr


def test_unreachable_directory_is_refused(tmp_path: Path) -> None:
    # pytest's tmp_path lives under a 0700 directory the mail daemons cannot enter.
    with pytest.raises(LabError, match="is not searchable by other users"):
        Lab.up(tmp_path / "lab")


def test_ports_of_one_lab_are_distinct_and_outside_the_ephemeral_range() -> None:
    from mailcontinuity.lab.process import LAB_PORT_RANGE, free_ports

    ports = free_ports(60)
    assert len(set(ports)) == 60
    assert all(port in LAB_PORT_RANGE for port in ports)
    # A later call, before any of these listens (gw2's ports after the lab's), never repeats one.
    later = [port for _ in range(100) for port in free_ports(20)]
    assert not set(later) & set(ports)
    assert len(set(later)) == len(later)
