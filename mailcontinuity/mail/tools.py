"""Running the mail servers' own command-line tools.

Output goes to temporary files, not pipes: ``dovecot`` and ``postfix start`` fork daemons that
inherit stdout/stderr, and a pipe they hold open would make the caller wait for them forever.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass


class CommandError(Exception):
    """A tool is missing, failed or hung; the message names it and what it said.

    ``returncode`` is the tool's exit status when it ran and failed (None otherwise), for callers
    that tell one failure from another (doveadm's 67 "no such user" vs 75 "try again").
    """

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


@dataclass(frozen=True)
class Completed:
    """A tool's exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_command(argv: Sequence[str], timeout: float = 60, missing_hint: str = "") -> str:
    """Run ``argv`` and return its stdout; raise CommandError with its output on failure."""
    done = run_tool(argv, timeout, missing_hint)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().replace("\n", "; ")
        raise CommandError(f"{' '.join(argv)} failed (exit {done.returncode}): {said}",
                           done.returncode)
    return done.stdout


def run_tool(argv: Sequence[str], timeout: float = 60, missing_hint: str = "") -> Completed:
    """Run ``argv``: its exit status and output, for a caller that reads a tool's output
    whatever the status (CommandError only when it is missing or hung)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            code = subprocess.run(argv, stdout=out, stderr=err, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL).returncode
        except FileNotFoundError:
            raise CommandError(
                f"{argv[0]} not found{'; ' + missing_hint if missing_hint else ''}") from None
        except subprocess.TimeoutExpired:
            raise CommandError(f"{' '.join(argv)} did not finish within {timeout:.0f}s") from None
        out.seek(0)
        err.seek(0)
        return Completed(code, out.read().decode(errors="replace"),
                         err.read().decode(errors="replace"))
