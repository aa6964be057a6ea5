"""Who does something and from where, for the audit trail.

The actor is a person (the operator's login; under sudo, the person behind it) or a daemon's
role (``health-monitor``, ``sync-agent``). The origin says where the action came from: the SSH
client's address, the terminal, or the daemon and host. A process is a daemon once its entry
point calls ``become_daemon``; every audit record it writes from then on carries its origin.
"""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path
from typing import NamedTuple

_daemon: str | None = None


class Who(NamedTuple):
    """The (actor, origin) pair every audit record carries."""

    actor: str
    origin: str


def become_daemon(name: str) -> None:
    """Mark this process as the daemon ``name`` (``policyd``, ``sync-agent``...)."""
    global _daemon
    _daemon = name


def operator() -> str:
    """The person running this command: their login, and under sudo the account they became
    (``alice (sudo root)``), because the audit trail must name a person, not just ``root``."""
    login = _login()
    person = os.environ.get("SUDO_USER")
    if person and person != login:
        return f"{person} (sudo {login})"
    return person or login


def origin() -> str:
    """Where this process acts from: ``daemon:NAME@HOST``, ``ssh:CLIENT_IP``,
    ``tty:/dev/pts/N`` or ``local`` (cron, a systemd timer, a script without a terminal)."""
    if _daemon is not None:
        return f"daemon:{_daemon}@{socket.gethostname()}"
    ssh = os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_CLIENT")
    if ssh and ssh.split():
        return f"ssh:{ssh.split()[0]}"
    tty = _controlling_tty()
    return f"tty:{tty}" if tty else "local"


def who() -> Who:
    """The operator running this command and where from. Daemons name their role as the actor
    themselves (the health monitor's decisions depend on it) and get ``origin()`` by default."""
    return Who(operator(), origin())


def _login() -> str:
    try:
        return getpass.getuser()
    except OSError:  # no login name and no passwd entry for the uid (a bare container)
        return f"uid {os.getuid()}"


def _controlling_tty() -> str | None:
    """The session's terminal, even when stdin/stdout are redirected (``... | tee``): a standard
    stream's terminal if any, else the controlling terminal the kernel records for us."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.ttyname(fd)
        except OSError:
            continue
    try:
        # /proc/self/stat: "pid (comm) state ppid pgrp session tty_nr ..."; comm may hold spaces.
        tty_nr = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[4])
    except (OSError, ValueError, IndexError):
        return None
    if tty_nr == 0:
        return None
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:  # Unix98 pseudo-terminals
        return f"/dev/pts/{(major - 136) * 256 + minor}"
    return f"/dev/char/{major}:{minor}"
