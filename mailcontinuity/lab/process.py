"""Ports and processes for the lab's private server instances.

Postfix and Dovecot daemonise themselves; what the lab needs is to know when a listener is up,
when it is really gone, and to take down a master process together with every child it forked.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from mailcontinuity.config import Endpoint
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.eventually import NotInTime, eventually
from mailcontinuity.store.heartbeats import pid_alive

# Below Linux's ephemeral range (32768-60999), so that an outgoing connection's local port never
# takes a listener's port between allocation and start.
LAB_PORT_RANGE = range(20000, 32768)


# Ports this process has handed out. A lab asks for ports in several calls before any of its
# parts listens (the multi-host lab's gw2 after gw1's), and a port free at the second call may be
# the first call's: CI saw gw2's Postfix fail to bind. Forgotten only when most of the range is.
_HANDED_OUT: set[int] = set()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports nothing listens on now and this process has not handed out
    before, picked at random so parallel labs rarely meet."""
    if len(_HANDED_OUT) + count > len(LAB_PORT_RANGE) // 2:
        _HANDED_OUT.clear()
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            port = random.choice(LAB_PORT_RANGE)
            if port in _HANDED_OUT:
                continue
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind((host, port))
            except OSError:
                probe.close()
                continue
            held.append(probe)
            _HANDED_OUT.add(port)
        return [int(probe.getsockname()[1]) for probe in held]
    finally:
        for probe in held:
            probe.close()


def accepts_connections(endpoint: Endpoint, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return True
    except OSError:
        return False


def accepts_unix_connections(path: Path, timeout: float = 1.0) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def wait_for(endpoints: Iterable[Endpoint], up: bool, what: str, timeout: float = 20.0) -> None:
    """Wait until every endpoint accepts (``up``) or refuses (not ``up``) connections."""
    pending = list(endpoints)

    def settled() -> bool:
        pending[:] = [ep for ep in pending if accepts_connections(ep, 0.5) != up]
        return not pending

    try:
        eventually(settled, timeout, what, interval=0.05)
    except NotInTime:
        state = "accept" if up else "stop accepting"
        names = ", ".join(str(ep) for ep in pending)
        raise LabError(f"{what}: {names} did not {state} connections within {timeout:.0f}s"
                       ) from None


def read_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return [child for child in found if pid_alive(child)]


def stop_process_tree(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM a master and its children, wait, then SIGKILL whatever is left."""
    victims = [pid, *descendants(pid)]
    _signal_all(victims, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_alive(victim) for victim in victims) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_all([v for v in victims if pid_alive(v)], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(pid_alive(victim) for victim in victims) and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for victim in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, sig)


def stop_pid_file(pid_file: Path) -> None:
    """Stop the process tree whose master's pid is in ``pid_file``, reap it if it is our child,
    and remove the file: for the lab parts this package starts itself with ``Popen``."""
    pid = read_pid(pid_file)
    if pid is not None:
        stop_process_tree(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    pid_file.unlink(missing_ok=True)


def spawn(argv: list[str], log_file: Path, pid_file: Path) -> subprocess.Popen[bytes]:
    """A lab process in a session of its own (so that stopping it reaches its children), its
    output appended to ``log_file`` and its pid written to ``pid_file``."""
    with open(log_file, "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    pid_file.write_text(f"{process.pid}\n")
    return process


def log_tail(log_file: Path, lines: int = 5) -> str:
    """The last lines of a part's log, joined for a one-line error."""
    try:
        text = log_file.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {log_file})"
    return " | ".join(text.strip().splitlines()[-lines:])
