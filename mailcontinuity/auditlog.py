"""The audit trail's log side: every audit record as one key=value line, also sent to syslog.

The audit table is the record ``mailcontinuity audit`` reads; this line is what a central log
host keeps, and it must reach syslog even from an interactive command, whose stderr is a
terminal. The facility is ``authpriv``: audit lines say who did what to people's mail, and
Debian's rsyslog files ``authpriv`` into /var/log/auth.log (root/adm only), not into the
world-readable /var/log/syslog or messages. Syslog being down never stops auditing: the table
row is written first, and a missing socket is reported once per process.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailcontinuity.logsetup import KeyValueFormatter

if TYPE_CHECKING:
    from mailcontinuity.state import AuditEntry

AUDIT_LOGGER = "mailcontinuity.audit"
SYSLOG_IDENT = "mailcontinuity"
audit_logger = logging.getLogger(AUDIT_LOGGER)
audit_logger.setLevel(logging.INFO)  # audit lines are kept whatever --log-level says
log = logging.getLogger(__name__)

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
        fields[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
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
