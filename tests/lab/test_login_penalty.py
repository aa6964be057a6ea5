"""Issue 20: guessing passwords at the primary never fails the site over.

Dovecot delays every login from an address that failed recently (up to 15 s, correct passwords
too). The monitor's probes come from an address of their own ([health] probe_source_address),
and a LOGIN that is slow, not refused, is "slow to log in", never "down".
"""

from __future__ import annotations

import subprocess
import sys
import time

from mailcontinuity.lab import Lab
from mailcontinuity.lab.lab import PROBE_SOURCE
from mailcontinuity.store.db import open_store
from mailcontinuity.store.state import current_state

GUESS_SECONDS = 25
# Guessing by a local unprivileged user: wrong IMAP LOGINs in parallel, a new password each
# time (Dovecot does not raise the penalty for a password it has just seen).
GUESSER = r"""
import socket, sys, threading, time, uuid
host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seconds, threads = float(sys.argv[4]), int(sys.argv[5])
stop = time.monotonic() + seconds
tries = []
def guess():
    while time.monotonic() < stop:
        try:
            with socket.create_connection((host, port), 30, (source, 0)) as s:
                f = s.makefile("rb")
                f.readline()
                s.sendall(f'a LOGIN "alice@lab.test" "{uuid.uuid4().hex}"\r\n'.encode())
                while not f.readline().startswith(b"a "):
                    pass
                tries.append(1)
        except OSError:
            time.sleep(0.1)
workers = [threading.Thread(target=guess) for _ in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
print(len(tries))
"""


def start_guesser(lab: Lab, source: str, threads: int) -> subprocess.Popen[str]:
    imap = lab.endpoint("primary", "imap")
    return subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
         "-c", GUESSER, imap.host, str(imap.port), source, str(GUESS_SECONDS), str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_guesser_hammering_the_primary_does_not_fail_it_over(lab: Lab) -> None:
    """Guessers on 127.0.0.1 (what any local user has) and even on the probe's own address: the
    probes go on, the LOGIN is reported slow, and the state stays normal."""
    store = open_store(lab.config)
    try:
        assert current_state(store).name == "normal"
        since = time.time()
        guessers = [start_guesser(lab, "127.0.0.1", 8), start_guesser(lab, PROBE_SOURCE, 8)]
        states = set()
        try:
            deadline = time.monotonic() + GUESS_SECONDS + 5
            while time.monotonic() < deadline and any(g.poll() is None for g in guessers):
                states.add(current_state(store).name)
                time.sleep(0.5)
        finally:
            outputs = []
            for guesser in guessers:
                try:
                    outputs.append(guesser.communicate(timeout=60))
                except subprocess.TimeoutExpired:
                    guesser.kill()
                    outputs.append(guesser.communicate())
        assert all(int(out.strip() or 0) > 20 for out, _ in outputs), outputs  # it guessed
        states.add(current_state(store).name)
        assert states == {"normal"}, states
        transitions = store.query("SELECT event, to_state FROM audit WHERE at >= ? AND"
                                  " to_state IS NOT NULL", [since])
        assert not transitions, transitions
        slow = store.query("SELECT error FROM health_probes WHERE at >= ? AND probe ="
                           " 'imap_login' AND ok = 1 AND error LIKE 'slow to log in%'", [since])
        assert slow, "the probe's LOGIN was slowed by the guesser on its address"
        down = store.query("SELECT probe, error FROM health_probes WHERE at >= ? AND ok = 0",
                           [since])
        assert not down, down
    finally:
        store.close()

