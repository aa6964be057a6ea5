"""The audit trail on the lab: records for transitions and admin commands, the ``audit`` command,
and the syslog copy received on a real datagram socket."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.scenario import restored
from mailcontinuity.store.audit import record_command
from mailcontinuity.store.db import open_store
from tests.lab.backends import lab_on_both_stores
from tests.lab.kv import parse_kv
from tests.lab.policyd_helpers import back_to_normal, wait_for_state

lab_fixture = lab_on_both_stores()  # these tests touch the store: run on both

# As sshd sets it for a session from 192.0.2.7 (TEST-NET-1), under ``sudo`` by alice.
OPERATOR_ENV = {"SSH_CONNECTION": "192.0.2.7 50022 127.0.0.1 22", "SUDO_USER": "alice"}
OPERATOR = "alice (sudo root)"
ORIGIN = "ssh:192.0.2.7"
AUTHPRIV_INFO = 10 * 8 + 6  # facility authpriv (10), severity info (6)


def cli(config: Path, *args: str) -> Result:
    return CliRunner(env=OPERATOR_ENV).invoke(main, ["--config", str(config), *args])


def audit_since(lab: Lab, since: float) -> list[dict[str, Any]]:
    result = cli(lab.config_file, "audit", "--since", datetime.fromtimestamp(since).isoformat(),
                 "--json")
    assert result.exit_code == 0, result.output
    entries: list[dict[str, Any]] = json.loads(result.stdout)
    return entries


def commands(entries: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["kind"] == "command" and entry["cause"] == name]


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A bound unix datagram socket, as /dev/log is, and a socket path that does not exist."""
    path = tmp_path / "log.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(5)
    try:
        yield receiver, path
    finally:
        receiver.close()


def config_with_syslog(lab: Lab, socket_path: Path, tmp_path: Path) -> Path:
    """The lab's config with ``[audit] syslog_socket`` pointing at ``socket_path``."""
    text = lab.config_file.read_text()
    assert "syslog_socket = false" in text
    path = tmp_path / "mailcontinuity.toml"
    path.write_text(text.replace("syslog_socket = false",
                                 f"syslog_socket = {json.dumps(str(socket_path))}"))
    return path


def test_failover_and_failback_are_audited_with_actor_and_origin(lab: Lab) -> None:
    began = time.time()
    with restored(lab):
        result = cli(lab.config_file, "failover", "--reason", "audit test", "--json")
        assert result.exit_code == 0, result.output
        result = cli(lab.config_file, "failback", "--yes", "--json")
        assert result.exit_code == 0, result.output
    entries = audit_since(lab, began)
    moves = [(e["from"], e["to"], e["actor"], e["origin"]) for e in entries
             if e["kind"] == "transition" and e["actor"] == OPERATOR]
    assert moves == [("normal", "failover", OPERATOR, ORIGIN),
                     ("failover", "failback", OPERATOR, ORIGIN),
                     ("failback", "normal", OPERATOR, ORIGIN)]
    [failover] = commands(entries, "failover")
    assert failover["detail"] == {"outcome": "ok", "options": "--reason 'audit test' --json"}
    assert (failover["actor"], failover["origin"]) == (OPERATOR, ORIGIN)
    [failback] = commands(entries, "failback")
    assert failback["detail"]["outcome"] == "ok"
    assert [e["actor"] for e in entries if e["kind"] == "merge"] == [OPERATOR]
    for entry in entries:
        assert entry["epoch"] >= began
        assert datetime.fromisoformat(entry["at"]).timestamp() == pytest.approx(entry["epoch"],
                                                                                 abs=0.001)
        assert entry["at"].endswith("Z")

    text = cli(lab.config_file, "audit", "--since", "10m").stdout
    assert text.splitlines()[0].split() == ["time", "kind", "what", "actor", "origin",
                                            "outcome/cause"]
    forced = next(line for line in text.splitlines()
                  if "normal -> failover" in line and "audit test" in line)
    assert OPERATOR in forced and ORIGIN in forced and forced.endswith("operator: audit test")
    failover_line = next(line for line in text.splitlines()
                         if "failover --reason 'audit test'" in line)  # other tests' too
    assert OPERATOR in failover_line and ORIGIN in failover_line
    assert failover_line.rstrip().endswith("ok")
    assert "no audit records" in cli(lab.config_file, "audit", "--since", "2999-01-01").stdout


def test_since_filters_and_rejects_what_it_cannot_read(lab: Lab) -> None:
    store = open_store(lab.config)
    try:
        record_command(store, "test-marker", "pytest", {})
    finally:
        store.close()
    time.sleep(0.05)
    after = time.time()
    assert any(e["cause"] == "test-marker" for e in audit_since(lab, after - 60))
    assert not any(e["cause"] == "test-marker" for e in audit_since(lab, after))
    for relative in ("30m", "12h", "7d"):
        result = cli(lab.config_file, "audit", "--since", relative, "--json")
        assert any(e["cause"] == "test-marker" for e in json.loads(result.stdout)), relative
    for bad in ("yesterday", "12x", "2026-13-45"):
        result = cli(lab.config_file, "audit", "--since", bad)
        assert result.exit_code == 2
        [line] = result.stderr.strip().splitlines()[-1:]
        assert "ISO 8601" in line and "30m, 12h, 7d" in line, result.stderr


def test_a_failed_command_is_audited_with_its_reason(lab: Lab) -> None:
    began = time.time()
    refused = cli(lab.config_file, "failback")  # no terminal, no --yes: refused
    assert refused.exit_code == 1
    dry = cli(lab.config_file, "failback", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    [failed, planned] = commands(audit_since(lab, began), "failback")
    assert failed["detail"]["outcome"] == "failed"
    assert "pass --yes to confirm" in failed["detail"]["reason"]
    assert "\n" not in failed["detail"]["reason"]
    assert planned["detail"] == {"outcome": "ok", "options": "--dry-run --json"}
    text = cli(lab.config_file, "audit", "--since", "1m").stdout
    assert any("failback --dry-run" in line and line.endswith("ok") for line in text.splitlines())
    assert any("failed: failback reroutes mail" in line for line in text.splitlines())


def test_audit_records_reach_syslog(lab: Lab, syslog: tuple[socket.socket, Path],
                                    tmp_path: Path) -> None:
    receiver, socket_path = syslog
    config = config_with_syslog(lab, socket_path, tmp_path)
    with restored(lab):
        result = cli(config, "failover", "--reason", "syslog test")
        assert result.exit_code == 0, result.output
    lines = [receiver.recv(65536).decode() for _ in range(2)]
    parsed = []
    for line in lines:
        assert line.startswith(f"<{AUTHPRIV_INFO}>mailcontinuity["), line
        assert line.endswith("\x00") and "\n" not in line
        parsed.append(parse_kv(line.partition("]: ")[2].rstrip("\x00")))
    transition, command = parsed
    assert transition | {"event": "audit", "kind": "transition", "from": "normal",
                         "to": "failover", "cause": "operator: syslog test", "actor": OPERATOR,
                         "origin": ORIGIN} == transition
    assert command | {"event": "audit", "kind": "command", "command": "failover",
                      "actor": OPERATOR, "origin": ORIGIN, "outcome": "ok",
                      "options": "--reason 'syslog test'"} == command


def test_a_missing_syslog_socket_does_not_break_a_command(lab: Lab, tmp_path: Path) -> None:
    config = config_with_syslog(lab, tmp_path / "no-syslog-here.sock", tmp_path)
    began = time.time()
    result = cli(config, "prune", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["refused"] == 0
    warnings = [parse_kv(line) for line in result.stderr.splitlines()
                if "audit_syslog_unavailable" in line]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning", result.stderr
    [prune] = commands(audit_since(lab, began), "prune")
    assert prune["detail"]["outcome"] == "ok"


def test_daemons_audit_with_their_own_origin(lab: Lab) -> None:
    """The monitor's automatic failover and failback, and the sync agent's merge, carry
    ``daemon:NAME@HOST``."""
    host = socket.gethostname()
    back_to_normal(lab)
    began = time.time()
    try:
        lab.part("primary").stop()
        wait_for_state(lab, "failover", timeout=30)
        lab.part("primary").start()
        wait_for_state(lab, "normal", timeout=60)
    finally:
        back_to_normal(lab)
    entries = audit_since(lab, began)
    by_monitor = [(e["to"], e["origin"]) for e in entries if e["actor"] == "health-monitor"]
    assert by_monitor == [("failover", f"daemon:policyd@{host}"),
                          ("failback", f"daemon:policyd@{host}")]
    merged = [(e["kind"], e["origin"]) for e in entries if e["actor"] == "sync-agent"]
    assert merged == [("transition", f"daemon:sync-agent@{host}"),
                      ("merge", f"daemon:sync-agent@{host}")]
