"""The audit trail's record and who makes it: the actor, the origin, and the syslog copy.

Every audit record names who acted and from where. The actor is a person (the operator's login;
under sudo, the person behind it) or a daemon's role (``health-monitor``, ``sync-agent``). The
origin says where the action came from: the SSH client's address, the terminal, or the daemon and
host. A process is a daemon once its entry point calls ``become_daemon``; every audit record it
writes from then on carries its origin.

The audit table (``store.audit``) is the record ``mailcontinuity audit`` reads; each record is
also logged as one key=value line, which is what a central log host keeps, and it must reach
syslog even from an interactive command, whose stderr is a terminal. The facility is
``authpriv``: audit lines say who did what to people's mail, and Debian's rsyslog files
``authpriv`` into /var/log/auth.log (root/adm only), not into the world-readable /var/log/syslog
or messages. Syslog being down never stops auditing: the table row is written first, and a
missing socket is reported once per process.
"""

from __future__ import annotations

import getpass
import json
import logging
import logging.handlers
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from mailcontinuity.logsetup import KeyValueFormatter


@dataclass(frozen=True)
class AuditEntry:
    """One record of the audit trail: a state transition, an operator command, or another
    audited action (``event``) such as a merge."""

    id: int
    at: float
    event: str
    from_state: str | None
    to_state: str | None
    cause: str
    actor: str
    detail: dict[str, Any]
    origin: str = ""


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


AUDIT_LOGGER = "mailcontinuity.audit"
SYSLOG_IDENT = "mailcontinuity"
audit_logger = logging.getLogger(AUDIT_LOGGER)
audit_logger.setLevel(logging.INFO)  # audit lines are kept whatever --log-level says
# Not a child of the audit logger: its warnings about syslog must not go to syslog.
log = logging.getLogger("mailcontinuity.auditlog")

# The first keys of a command's line, in this order; the rest of its detail follows sorted.
_LEADING_DETAIL = ("outcome", "reason", "options")


def audit_fields(entry: AuditEntry) -> dict[str, Any]:
    """The key=value fields of an audit record, in the order they are logged."""
    fields: dict[str, Any] = {"kind": entry.event}
    if entry.event == "transition":
        fields |= {"from": entry.from_state, "to": entry.to_state, "cause": entry.cause}
    else:
        fields[entry.event if entry.event == "command" else "action"] = entry.cause
    fields |= {"actor": entry.actor, "origin": entry.origin}
    keys = [key for key in _LEADING_DETAIL if key in entry.detail]
    keys += sorted(key for key in entry.detail if key not in _LEADING_DETAIL)
    for key in keys:
        value = entry.detail[key]
        structured = isinstance(value, (dict, list))
        fields[key] = json.dumps(value, sort_keys=True) if structured else value
    return fields


def announce(entry: AuditEntry) -> None:
    """Log an audit record that is already in the table (stderr/journald and syslog)."""
    fields = audit_fields(entry)
    level = logging.WARNING if entry.detail.get("outcome") == "failed" else logging.INFO
    audit_logger.log(level, "event=audit " + " ".join(f"{key}=%s" for key in fields),
                  *fields.values())


class AuditSyslogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler on a unix socket that reconnects on every record while the socket is
    missing (the standard handler does) and, instead of printing a traceback per record,
    warns once per process."""

    def __init__(self, path: Path) -> None:
        super().__init__(address=str(path), facility=self.LOG_AUTHPRIV)
        self.path = path
        self.ident = f"{SYSLOG_IDENT}[{os.getpid()}]: "
        self.setFormatter(KeyValueFormatter(context=False))
        self.warned = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.warned:
            self.warned = True
            log.warning("event=audit_syslog_unavailable socket=%s error=%s action=%s", self.path,
                        sys.exc_info()[1],
                        "audit records still go to the state store and stderr; start syslog"
                        " or set [audit] syslog_socket = false")


_syslog: AuditSyslogHandler | None = None


def send_audit_to_syslog(socket_path: Path | None) -> None:
    """Send audit lines to the syslog socket at ``socket_path`` (None: stop sending)."""
    global _syslog
    if _syslog is not None:
        audit_logger.removeHandler(_syslog)
        _syslog.close()
        _syslog = None
    if socket_path is not None:
        _syslog = AuditSyslogHandler(socket_path)
        audit_logger.addHandler(_syslog)
