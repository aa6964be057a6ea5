"""How long a connected IMAP client is without service at failover and at failback (issue 18).

One lab with the client proxy (``imap_proxy``) and ``failback.mode = "manual"`` (so the failback
is the operator's command, timed from its start). A client holds a session open through the
proxy and sends NOOP every ``--poll`` seconds, reconnecting (STARTTLS, LOGIN, SELECT INBOX)
whenever its connection drops, as desktop clients do on their next action. Each round:

- failover: the primary is killed; the gap runs from the kill to the client's first successful
  NOOP (on the standby). It is split into detection (kill -> the monitor's failover) and
  switch (failover -> first success: route file, ``doveadm reload``, reconnection, login);
- failback: the primary is started and the standby keeps serving; then
  ``mailcontinuity failback --yes`` is started; the gap runs from its start to the client's
  first successful NOOP on the primary (the held session is kicked off the standby), split into
  command start -> the failback transition, and transition -> first success. "client saw" is
  the time between its first failed and first successful NOOP.

The monitor's timings are the lab's (``--default-health`` uses the shipped defaults instead:
detection then takes longer, the switch does not change).

Usage: .venv/bin/python bench/proxy_gap.py [--rounds 5] [--poll 0.02] [--default-health]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.lab import LAB_HEALTH_SECTION
from mailcontinuity.lab.proxy import ReconnectingClient, proxy_endpoint
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.db import open_store
from mailcontinuity.store.state import State, current_state

ROUND_TIMEOUT_SECONDS = 120


@dataclass
class Gap:
    total: float
    to_transition: float
    to_service: float
    client_saw: float


def state_of(lab: Lab) -> State:
    store = open_store(lab.config)
    try:
        return current_state(store)
    finally:
        store.close()


def wait_state(lab: Lab, name: str) -> None:
    eventually(lambda: state_of(lab).name == name, ROUND_TIMEOUT_SECONDS, f"state {name}")


def measure(client: ReconnectingClient, poll: float, started_wall: float,
            transition: str, lab: Lab) -> Gap:
    """Poll until a NOOP fails (or needs a new connection) and then one succeeds; the gap's
    parts from the wall clock and the audited transition's time. "client saw" starts at the
    start of the first NOOP that failed."""
    first_failure: float | None = None
    deadline = time.monotonic() + ROUND_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        connections, tried = client.connections, time.time()
        ok = client.attempt(lambda c: c.noop()) is not None
        now = time.time()
        if not ok or client.connections > connections:  # failed, or needed a new connection
            first_failure = first_failure or tried
        if ok and first_failure is not None:
            since = _transition_time(lab, transition, started_wall)
            if since is None:  # a reconnection of its own (a NOOP timed out under load)
                print(f"  (reconnected before the {transition}: not counted)", flush=True)
                first_failure = None
                continue
            return Gap(now - started_wall, since - started_wall, now - since,
                       now - first_failure)
        time.sleep(poll)
    raise RuntimeError(f"no gap seen within {ROUND_TIMEOUT_SECONDS}s ({transition})")


def _transition_time(lab: Lab, to_state: str, after: float) -> float | None:
    """When the audited transition into ``to_state`` after ``after`` happened, if it did."""
    store = open_store(lab.config)
    try:
        return next((entry.at for entry in audit_log(store, since=after)
                     if entry.event == "transition" and entry.to_state == to_state), None)
    finally:
        store.close()


def run(rounds: int, poll: float, default_health: bool) -> None:
    with Lab.temporary(prefix="mcbench-proxy-") as lab:
        text = lab.config_file.read_text().replace('mode = "auto"', 'mode = "manual"')
        if default_health:
            text = text.replace(LAB_HEALTH_SECTION, "[health]\n")
        lab.config_file.write_text(text)
        lab.part("policyd").stop()
        lab.part("policyd").start()
        lab = Lab.load(lab.dir)
        description = json.loads((lab.dir / "lab.json").read_text())
        alice = lab.users[0]
        client = ReconnectingClient(proxy_endpoint(description), alice.login, alice.password,
                                    LabCertificates(lab.dir / "tls").ca_file)
        failovers: list[Gap] = []
        failbacks: list[Gap] = []
        try:
            for number in range(1, rounds + 1):
                wait_state(lab, "normal")
                client.run(lambda c: c.noop())
                killed = time.time()
                lab.part("primary").stop()
                failovers.append(measure(client, poll, killed, "failover", lab))
                lab.part("primary").start()
                time.sleep(lab.config.health.interval_seconds * 3)  # primary healthy again
                started = time.time()
                command = subprocess.Popen(
                    [sys.executable, "-m", "mailcontinuity", "--config", str(lab.config_file),
                     "failback", "--yes"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                try:
                    failbacks.append(measure(client, poll, started, "failback", lab))
                finally:
                    _, err = command.communicate(timeout=ROUND_TIMEOUT_SECONDS)
                if command.returncode != 0:
                    raise RuntimeError(f"failback failed: {err.decode(errors='replace')}")
                print(f"round {number}: failover {failovers[-1].total:.2f}s,"
                      f" failback {failbacks[-1].total:.2f}s", flush=True)
        finally:
            client.close()
        health = lab.config.health
        print(f"\n{rounds} rounds, NOOP every {poll * 1000:.0f} ms; monitor: interval"
              f" {health.interval_seconds}s, timeout {health.timeout_seconds}s, failures"
              f" {health.failures}, window {health.failure_window_seconds}s")
        print(report("failover (kill primary -> first NOOP OK on the standby)", failovers,
                     "detection", "switch+reconnect"))
        print(report("failback (command start -> first NOOP OK on the primary)", failbacks,
                     "cmd->transition", "switch+reconnect"))


def report(title: str, gaps: list[Gap], first: str, second: str) -> str:
    rows = [("total gap", [g.total for g in gaps]), (first, [g.to_transition for g in gaps]),
            (second, [g.to_service for g in gaps]), ("client saw", [g.client_saw for g in gaps])]
    lines = [title, f"  {'':18} {'median':>8} {'max':>8}"]
    lines += [f"  {name:18} {statistics.median(values):8.3f} {max(values):8.3f}"
              for name, values in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.02)
    parser.add_argument("--default-health", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 50 or not 0.001 <= args.poll <= 1:
        parser.error("--rounds 1..50, --poll 0.001..1")
    run(args.rounds, args.poll, args.default_health)


if __name__ == "__main__":
    main()
