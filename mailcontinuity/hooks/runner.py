"""Running the administrator's hooks on each state transition.

Every executable in ``hooks_dir/on-<new state>.d/`` runs in name order, with the transition in
its environment (OLD_STATE, NEW_STATE, CAUSE, ACTOR, TIME). Hooks run after routing has been
switched and each is bounded by a timeout (its whole process group is killed when it expires),
so a failing or hanging hook can delay only other hooks, never mail. Their output is logged.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAX_LOGGED_LINES = 50


@dataclass(frozen=True)
class Transition:
    """What a hook is told about the transition it runs for."""

    old_state: str
    new_state: str
    cause: str
    actor: str
    at: float

    def environment(self) -> dict[str, str]:
        return {
            "OLD_STATE": self.old_state,
            "NEW_STATE": self.new_state,
            "CAUSE": self.cause,
            "ACTOR": self.actor,
            "TIME": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
        }


@dataclass(frozen=True)
class HookResult:
    hook: Path
    exit_code: int | None
    """None when the hook did not finish within the timeout (or could not be started)."""
    output: str


def hooks_for(hooks_dir: Path, state: str) -> list[Path]:
    """The executables in ``on-<state>.d``, in name order; others are skipped with a note."""
    directory = hooks_dir / f"on-{state}.d"
    if not directory.is_dir():
        return []
    hooks = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not os.access(path, os.X_OK):
            log.info("event=hook_skipped hook=%s reason=not_executable (chmod +x to enable)", path)
            continue
        hooks.append(path)
    return hooks


def run_hooks(hooks_dir: Path, transition: Transition, timeout: float,
              extra_env: dict[str, str] | None = None) -> list[HookResult]:
    """Run every hook for ``transition.new_state``; never raises for a hook's failure."""
    env = {**os.environ, **(extra_env or {}), **transition.environment()}
    return [run_hook(hook, env, timeout) for hook in hooks_for(hooks_dir, transition.new_state)]


def run_hook(hook: Path, env: dict[str, str], timeout: float) -> HookResult:
    started = time.monotonic()
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen([str(hook)], stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:
            log.error("event=hook_failed hook=%s error=%r", hook, str(exc))
            return HookResult(hook, None, str(exc))
        try:
            exit_code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            exit_code = None
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    seconds = time.monotonic() - started
    for line in text.splitlines()[:MAX_LOGGED_LINES]:
        log.info("event=hook_output hook=%s line=%r", hook.name, line)
    if exit_code is None:
        log.error("event=hook_timeout hook=%s timeout=%gs action=killed", hook, timeout)
    elif exit_code != 0:
        log.error("event=hook_failed hook=%s exit=%d seconds=%.2f", hook, exit_code, seconds)
    else:
        log.info("event=hook_done hook=%s seconds=%.2f", hook, seconds)
    return HookResult(hook, exit_code, text)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """A hung hook and everything it started (a hook is often a shell pipeline)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
