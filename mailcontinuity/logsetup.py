"""Logging set-up shared by every daemon and command: one line per event, ``key=value``.

Lines go to stderr without a timestamp (journald and syslog add their own) as
``event=NAME key=value ... level=LEVEL logger=NAME``, so that journald/syslog tools and log
shippers can filter on any field. The quoting is done here, centrally, not in each call: a value
with a space, a quote, ``=``, a backslash or a newline is written as a JSON string, a traceback
becomes a quoted ``traceback=`` field, and a message from a library that does not follow the
convention is wrapped as ``event=log msg="..."``. A multi-line error can therefore never start a
line that looks like an event of its own.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

# Characters that make a bare value ambiguous for a key=value parser.
_NEEDS_QUOTES = frozenset(' "=\\\n\r\t')


def kv_value(value: object) -> str:
    """``value`` as it appears after ``key=``: bare when unambiguous, else a JSON string."""
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and not _NEEDS_QUOTES.intersection(text):
        return text
    return json.dumps(text, ensure_ascii=False)


class _Quoted:
    """A log argument that renders as a key=value value whether the format says %s or %r."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return kv_value(self.value)

    def __repr__(self) -> str:
        # %r was how calls quoted strings before; a string keeps its text, not Python's repr.
        return kv_value(self.value if isinstance(self.value, str) else repr(self.value))


def _quote_arg(value: object) -> object:
    """Numbers stay as they are (``%d``, ``%.1f`` need them); everything else is quoted."""
    return value if isinstance(value, (int, float)) else _Quoted(value)


def _one_line(text: str) -> str:
    """Newlines in the literal part of a message (never in a value: those are quoted)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class KeyValueFormatter(logging.Formatter):
    """Formats records as one ``event=... key=value`` line; see the module docstring.

    ``context`` appends ``level=`` and ``logger=`` (for stderr); syslog has its own priority
    field and needs neither.
    """

    def __init__(self, context: bool = True) -> None:
        super().__init__()
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        line = self._message(record)
        if not line.startswith("event="):
            line = f"event=log msg={kv_value(line)}"
        if record.exc_info:
            line += f" traceback={kv_value(self.formatException(record.exc_info))}"
        if record.stack_info:
            line += f" stack={kv_value(self.formatStack(record.stack_info))}"
        if self.context:
            line += f" level={record.levelname.lower()} logger={kv_value(record.name)}"
        return _one_line(line)

    @staticmethod
    def _message(record: logging.LogRecord) -> str:
        """``record.getMessage()`` with its arguments quoted, leaving the record untouched
        (other handlers format the same record)."""
        message = str(record.msg)
        args = record.args
        if not args:
            return message
        quoted: Any
        if isinstance(args, Mapping):
            quoted = {key: _quote_arg(value) for key, value in args.items()}
        else:
            quoted = tuple(_quote_arg(value) for value in args)
        try:
            return message % quoted
        except (TypeError, ValueError):  # a call whose format and arguments disagree: say so
            return f"event=log_format_error msg={kv_value(message)} args={kv_value(args)}"


def configure_logging(program: str, level: str = "INFO") -> None:
    """Send every logger to stderr as key=value lines; route uncaught exceptions (main thread
    and others) and Python warnings through the same formatter, so that a crash is one line
    too. ``program`` names the process for the uncaught-exception logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    crash_log = logging.getLogger(program)

    def log_uncaught(kind: type[BaseException], value: BaseException,
                     tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        crash_log.critical("event=uncaught_exception error=%s", value, exc_info=(kind, value, tb))

    def log_thread_crash(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            crash_log.critical("event=uncaught_exception thread=%s error=%s",
                               args.thread.name if args.thread else "?", args.exc_value,
                               exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = log_uncaught
    threading.excepthook = log_thread_crash
