"""pid_alive: leases, heartbeats and the lab's restarts decide on it, so a process that is
still tearing down its threads must count as alive (a restarted milter would otherwise find its
predecessor's socket still bound, and Postfix would pass mail unjournaled meanwhile)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mailcontinuity.lab.eventually import eventually
from mailcontinuity.store.heartbeats import pid_alive

# The main thread exits (pthread_exit) while a second thread sleeps: the kernel then shows
# the process as a zombie though it still runs.
MAIN_THREAD_EXITS = (
    "import ctypes, threading, time\n"
    "threading.Thread(target=time.sleep, args=(30,)).start()\n"
    "ctypes.CDLL(None).pthread_exit(None)\n"
)


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_a_process_whose_main_thread_exited_is_alive_until_its_last_thread_ends() -> None:
    process = subprocess.Popen([sys.executable, "-c", MAIN_THREAD_EXITS])
    try:
        eventually(lambda: state(process.pid) == "Z", 10, "the child shown as a zombie")
        assert pid_alive(process.pid)
    finally:
        process.kill()
        process.wait()
    assert not pid_alive(process.pid)


def test_an_exited_child_not_yet_reaped_is_not_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        eventually(lambda: state(process.pid) == "Z", 10, "the child shown as a zombie")
        assert not pid_alive(process.pid)
    finally:
        process.wait()


def test_this_process_is_alive() -> None:
    assert pid_alive(os.getpid())
