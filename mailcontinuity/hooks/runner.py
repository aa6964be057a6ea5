"""Running the administrator's hooks on each state transition.

Every executable in ``hooks_dir/on-<new state>.d/`` runs in name order, with the transition in
its environment (OLD_STATE, NEW_STATE, CAUSE, ACTOR, TIME). Hooks run after routing has been
switched and each is bounded by a timeout (its whole process group is killed when it expires),
so a failing or hanging hook can delay only other hooks, never mail. Their output is logged.

The daemons hand transitions to a ``HookQueue``: one thread of its own runs their hooks in
order, so that a slow hook never stalls the health monitor's probes, its heartbeat or its next
decision (nor the sync agent's). An operator's command runs them itself and waits, to show what
they did.

The hooks' own settings (webhook URL, administrators' addresses...) go in ``hooks_dir/environment``
as ``KEY=VALUE`` lines, so that a hook sees the same settings whether the health monitor (a
systemd unit) or an operator's ``mailcontinuity failover`` caused the transition.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAX_LOGGED_LINES = 50
ENVIRONMENT_FILE = "environment"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


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
            "TIME": time.strftime(TIME_FORMAT, time.gmtime(self.at)),
        }

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Transition:
        """The transition a hook was started for (the inverse of ``environment``)."""
        missing = [key for key in ("OLD_STATE", "NEW_STATE", "TIME") if not env.get(key)]
        if missing:
            raise ValueError(f"{', '.join(missing)} not set: run this from a mailcontinuity"
                             " hooks directory (on-<state>.d), where the runner sets them")
        at = calendar.timegm(time.strptime(env["TIME"], TIME_FORMAT))
        return cls(env["OLD_STATE"], env["NEW_STATE"], env.get("CAUSE", ""),
                   env.get("ACTOR", ""), float(at))


@dataclass(frozen=True)
class HookResult:
    hook: Path
    exit_code: int | None
    """None when the hook did not finish within the timeout (or could not be started)."""
    output: str
    seconds: float = 0.0
    timed_out: bool = False


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
            log.info('event=hook_skipped hook=%s reason=not_executable'
                     ' hint="chmod +x to enable"', path)
            continue
        hooks.append(path)
    return hooks


Started = Callable[[subprocess.Popen[bytes] | None], None]


def run_hooks(hooks_dir: Path, transition: Transition, timeout: float,
              extra_env: dict[str, str] | None = None,
              started: Started | None = None) -> list[HookResult]:
    """Run every hook for ``transition.new_state``; never raises for a hook's failure.
    ``started`` hears of each hook's process as it starts (and None when it is over)."""
    env = {**os.environ, **hooks_environment(hooks_dir), **(extra_env or {}),
           **transition.environment()}
    return [run_hook(hook, env, timeout, started)
            for hook in hooks_for(hooks_dir, transition.new_state)]


def hooks_environment(hooks_dir: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of ``hooks_dir/environment`` (``#`` comments, optional quotes)."""
    path = hooks_dir / ENVIRONMENT_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.error("event=hooks_environment_unreadable path=%s error=%r", path, exc.strerror)
        return {}
    env = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            log.error("event=hooks_environment_line_skipped path=%s line=%d"
                      ' reason="expected KEY=VALUE"', path, number)
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def run_hook(hook: Path, env: dict[str, str], timeout: float,
             started: Started | None = None) -> HookResult:
    began = time.monotonic()
    timed_out = False
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen([str(hook)], stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:
            log.error("event=hook_failed hook=%s error=%r", hook, str(exc))
            return HookResult(hook, None, str(exc))
        if started is not None:
            started(process)
        try:
            exit_code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            exit_code, timed_out = None, True
        finally:
            if started is not None:
                started(None)
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    seconds = time.monotonic() - began
    for line in text.splitlines()[:MAX_LOGGED_LINES]:
        log.info("event=hook_output hook=%s line=%r", hook.name, line)
    if exit_code is None:
        log.error("event=hook_timeout hook=%s timeout=%gs action=killed", hook, timeout)
    elif exit_code != 0:
        log.error("event=hook_failed hook=%s exit=%d seconds=%.2f", hook, exit_code, seconds)
    else:
        log.info("event=hook_done hook=%s seconds=%.2f", hook, seconds)
    return HookResult(hook, exit_code, text, round(seconds, 3), timed_out)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """A hung hook and everything it started (a hook is often a shell pipeline)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


Done = Callable[[Transition, list[HookResult]], None]
# Transitions whose hooks wait to run: a flapping primary cannot pile up hooks without bound.
MAX_PENDING = 16


class HookQueue:
    """Runs the hooks of each transition handed to it, in order, in a thread of its own, and
    tells ``done`` what they did (the transitions module audits it)."""

    def __init__(self, hooks_dir: Path, timeout: float, extra_env: dict[str, str],
                 done: Done, max_pending: int = MAX_PENDING) -> None:
        self.hooks_dir = hooks_dir
        self.timeout = timeout
        self.extra_env = extra_env
        self.done = done
        self._pending: queue.Queue[Transition | None] = queue.Queue(max_pending)
        self._running: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="hooks", daemon=True)
        self._thread.start()

    def submit(self, transition: Transition) -> bool:
        """Queue the transition's hooks; False (logged) when too many are waiting already."""
        try:
            self._pending.put_nowait(transition)
        except queue.Full:
            log.error("event=hooks_skipped transition=%s->%s reason=queue_full pending=%d",
                      transition.old_state, transition.new_state, self._pending.qsize())
            return False
        return True

    def close(self, wait: float) -> None:
        """Let queued hooks finish for up to ``wait`` seconds, then kill the one still running
        (its process group) and give up on the rest, logged."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._pending.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            with self._lock:
                running = self._running
            if running is not None:
                log.error("event=hook_killed reason=shutdown pid=%d", running.pid)
                _kill_group(running)
            self._thread.join(5)
        skipped = 0
        while True:
            try:
                if self._pending.get_nowait() is not None:
                    skipped += 1
            except queue.Empty:
                break
        if skipped:
            log.error("event=hooks_skipped reason=shutdown transitions=%d", skipped)

    def _track(self, process: subprocess.Popen[bytes] | None) -> None:
        with self._lock:
            self._running = process

    def _work(self) -> None:
        while (transition := self._pending.get()) is not None:
            try:
                results = run_hooks(self.hooks_dir, transition, self.timeout, self.extra_env,
                                    self._track)
                self.done(transition, results)
            except Exception:  # the queue must outlive one bad transition
                log.exception("event=hooks_failed transition=%s->%s", transition.old_state,
                              transition.new_state)
