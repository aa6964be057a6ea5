"""mailcontinuity's own daemons (milter, policyd, sync-agent) as lab parts.

The lab runs each as ``python -m mailcontinuity --config DIR/mailcontinuity.toml NAME`` in its
own session, with a pid file and a log file under ``DIR/daemons``, exactly the command line a
systemd unit would run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.eventually import NotInTime, eventually
from mailcontinuity.lab.process import log_tail, read_pid, spawn, stop_pid_file

START_TIMEOUT_SECONDS = 20.0


@dataclass
class DaemonPart:
    """One mailcontinuity daemon; ``ready`` says when it serves (e.g. its socket accepts)."""

    name: str
    config_file: Path
    run_dir: Path
    ready: Callable[[], bool]

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def start(self) -> None:
        if self.pid() is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "mailcontinuity", "--config", str(self.config_file),
                self.name]
        process = spawn(argv, self.log_file, self.pid_file)
        with contextlib.suppress(NotInTime):  # ready, or exited: an exit is reported at once
            eventually(lambda: self.ready() or process.poll() is not None, START_TIMEOUT_SECONDS,
                       f"{self.name} ready", interval=0.05)
        if process.poll() is not None or not self.ready():
            self.stop()
            raise LabError(f"{self.name} did not start: {log_tail(self.log_file)}"
                           f" (log: {self.log_file})")

    def stop(self) -> None:
        stop_pid_file(self.pid_file)
