"""Logging set-up shared by every daemon and command.

One line per event on stderr, no timestamp (journald and syslog add their own), the program name
first so that ``journalctl -t`` and syslog filters find it.
"""

from __future__ import annotations

import logging
import sys


def configure_logging(program: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{program}: %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
