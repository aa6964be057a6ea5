"""The shipped hooks, run by the hook runner against real peers on loopback.

The webhook posts to an http.server in a thread; the MX hook updates a real Knot DNS server
(Debian's knot) started here on a high port with a TSIG-protected update ACL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from mailcontinuity.config import Endpoint
from mailcontinuity.hooks.runner import Transition, run_hooks
from mailcontinuity.lab.process import free_ports, wait_for

VENV_BIN = Path(sys.executable).parent
FAILOVER = Transition("normal", "failover", "primary failed 3 probes", "health-monitor",
                      1795325361.0)
NORMAL = Transition("failback", "normal", "merge finished", "sync-agent", 1795329000.0)
TSIG_SECRET = "2B1QDOyYhcvnPpg01pQWJMlet3tIzlitXstYQdk+y28="


def install_hook(hooks_dir: Path, state: str, program: str, settings: dict[str, str]) -> None:
    """Link the installed hook into ``on-<state>.d`` and write the hooks' environment file,
    as the Ansible role does."""
    directory = hooks_dir / f"on-{state}.d"
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / f"50-{program}"
    if not link.exists():
        link.symlink_to(VENV_BIN / f"mailcontinuity-hook-{program}")
    (hooks_dir / "environment").write_text(
        "# written by the test\n" + "".join(f"{k}={v}\n" for k, v in settings.items()))


# -- webhook ---------------------------------------------------------------------------------


@dataclass
class Received:
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    status: int = 204


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.requests.append((self.path, dict(self.headers), body))
            self.send_response(received.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/chat", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_webhook_posts_the_transition_as_json(tmp_path: Path,
                                             webhook_server: tuple[str, Received]) -> None:
    url, received = webhook_server
    install_hook(tmp_path, "failover", "webhook",
                 {"MAILCONTINUITY_WEBHOOK_URL": url, "MAILCONTINUITY_WEBHOOK_TOKEN": '"s3cret"'})
    [result] = run_hooks(tmp_path, FAILOVER, timeout=30)
    assert result.exit_code == 0, result.output
    [(path, headers, body)] = received.requests
    assert path == "/hooks/chat"
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer s3cret"
    posted = json.loads(body)
    assert {k: posted[k] for k in ("old_state", "new_state", "cause", "actor", "time")} == {
        "old_state": "normal", "new_state": "failover", "cause": "primary failed 3 probes",
        "actor": "health-monitor", "time": "2026-11-22T05:29:21Z"}
    assert "normal -> failover" in posted["text"]


def test_webhook_reports_a_refusal_and_an_unreachable_server(
        tmp_path: Path, webhook_server: tuple[str, Received]) -> None:
    url, received = webhook_server
    received.status = 500
    install_hook(tmp_path, "failover", "webhook", {"MAILCONTINUITY_WEBHOOK_URL": url})
    [result] = run_hooks(tmp_path, FAILOVER, timeout=30)
    assert result.exit_code == 1 and "answered 500" in result.output
    closed = f"http://127.0.0.1:{free_ports(1)[0]}/"
    install_hook(tmp_path, "failover", "webhook", {"MAILCONTINUITY_WEBHOOK_URL": closed})
    [result] = run_hooks(tmp_path, FAILOVER, timeout=30)
    assert result.exit_code == 1 and "not reached" in result.output
    install_hook(tmp_path, "failover", "webhook", {})
    [result] = run_hooks(tmp_path, FAILOVER, timeout=30)
    assert result.exit_code == 2 and "MAILCONTINUITY_WEBHOOK_URL" in result.output


# -- DNS MX ----------------------------------------------------------------------------------


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[Endpoint]:
    """Knot DNS serving example.test. on a loopback port; updates need the TSIG key."""
    directory = tmp_path / "knot"
    directory.mkdir()
    endpoint = Endpoint("127.0.0.1", free_ports(1)[0])
    (directory / "example.test.zone").write_text(textwrap.dedent("""\
        $ORIGIN example.test.
        $TTL 300
        @ SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 300
        @ NS ns.example.test.
        ns A 127.0.0.1
        @ MX 10 primary.example.test.
        """))
    (directory / "knot.conf").write_text(textwrap.dedent(f"""\
        server:
            rundir: "{directory}"
            listen: {endpoint.host}@{endpoint.port}
        control:
            listen: "{directory}/knot.sock"
        database:
            storage: "{directory}"
        key:
          - id: mailcontinuity
            algorithm: hmac-sha256
            secret: {TSIG_SECRET}
        acl:
          - id: update
            key: mailcontinuity
            action: update
        zone:
          - domain: example.test
            storage: "{directory}"
            file: example.test.zone
            acl: update
        log:
          - target: stderr
            any: info
        """))
    with open(directory / "knot.log", "wb") as log:
        server = subprocess.Popen(["knotd", "-c", str(directory / "knot.conf")],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_for([endpoint], up=True, what="knotd")
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def mx_of(server: Endpoint) -> set[str]:
    query = dns.message.make_query("example.test.", dns.rdatatype.MX)
    answer = dns.query.tcp(query, server.host, port=server.port, timeout=5)
    return {rdata.to_text() for rrset in answer.answer for rdata in rrset}


def dns_settings(server: Endpoint, key_file: Path) -> dict[str, str]:
    return {
        "MAILCONTINUITY_DNS_SERVER": str(server),
        "MAILCONTINUITY_DNS_ZONE": "example.test",
        "MAILCONTINUITY_DNS_MX_PRIMARY": "10 primary.example.test.",
        "MAILCONTINUITY_DNS_MX_STANDBY": "10 standby.example.test., 20 backup.example.test.",
        "MAILCONTINUITY_DNS_TTL": "60",
        "MAILCONTINUITY_DNS_TSIG_KEY_FILE": str(key_file),
    }


def test_dns_hook_moves_the_mx_to_the_standby_and_back(tmp_path: Path, knot: Endpoint) -> None:
    key_file = tmp_path / "tsig.key"
    key_file.write_text(f"hmac-sha256:mailcontinuity:{TSIG_SECRET}\n")
    for state in ("failover", "normal"):
        install_hook(tmp_path, state, "dns-mx", dns_settings(knot, key_file))
    assert mx_of(knot) == {"10 primary.example.test."}

    [result] = run_hooks(tmp_path, FAILOVER, timeout=30)
    assert result.exit_code == 0, result.output
    assert mx_of(knot) == {"10 standby.example.test.", "20 backup.example.test."}

    [result] = run_hooks(tmp_path, NORMAL, timeout=30)
    assert result.exit_code == 0, result.output
    assert mx_of(knot) == {"10 primary.example.test."}


def test_dns_hook_without_the_right_key_changes_nothing_and_says_why(
        tmp_path: Path, knot: Endpoint) -> None:
    key_file = tmp_path / "tsig.key"
    key_file.write_text("hmac-sha256:mailcontinuity:"
                        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
    install_hook(tmp_path, "failover", "dns-mx", dns_settings(knot, key_file))
    [result] = run_hooks(tmp_path, FAILOVER, timeout=30)
    assert result.exit_code == 1
    assert "signature" in result.output and "TSIG key" in result.output, result.output
    unsigned = {k: v for k, v in dns_settings(knot, key_file).items()
                if k != "MAILCONTINUITY_DNS_TSIG_KEY_FILE"}
    install_hook(tmp_path, "failover", "dns-mx", unsigned)
    [result] = run_hooks(tmp_path, FAILOVER, timeout=30)
    assert result.exit_code == 1 and "refused the update" in result.output
    key_file.write_text("not a key\n")
    install_hook(tmp_path, "failover", "dns-mx", dns_settings(knot, key_file))
    [result] = run_hooks(tmp_path, FAILOVER, timeout=30)
    assert result.exit_code == 1 and "algorithm:name:secret" in result.output
    assert mx_of(knot) == {"10 primary.example.test."}
