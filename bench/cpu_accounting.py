"""CPU time per part of a benchmark, from the kernel's own accounting (cgroup cpuacct).

Postfix's smtpd, cleanup and smtp processes come and go (``max_use``, ``max_idle``), so summing
``/proc/PID/stat`` of the processes alive at the end misses most of their work. A control group
counts every process that was ever in it, children included: each part of the benchmark (the
Postfix gateway, the milter, the load generator...) goes into its own group, and the groups'
user and system (kernel) times are read before and after a run. Kernel threads (the file
system's journal commits, writeback, softirqs) belong to no group: they are read per thread from
``/proc`` and reported together as "kernel threads"; they include other work on the machine.
Kernel workers come and go during a run, and an exited one's time leaves the sum: the readings
add up each thread's growth since the previous reading, so they never go backwards (a worker's
time between the last reading and its exit is not counted).

Works with the cgroup v1 ``cpuacct`` controller (Debian 12 in this VM) and with cgroup v2's
``cpu.stat``; ``CpuGroups`` removes its groups on exit, moving any live member back to the root.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/cpuacct")
V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTime:
    """Seconds of CPU spent in user space and in the kernel on behalf of a group."""

    user: float
    system: float

    def __sub__(self, other: CpuTime) -> CpuTime:
        return CpuTime(self.user - other.user, self.system - other.system)

    def __add__(self, other: CpuTime) -> CpuTime:
        return CpuTime(self.user + other.user, self.system + other.system)

    @property
    def total(self) -> float:
        return self.user + self.system


class CpuGroups:
    """Named control groups for the parts of one benchmark run."""

    def __init__(self, names: Iterable[str]) -> None:
        self.root, self.v1 = _find_root()
        self.base = self.root / f"mcbench-{os.getpid()}-{secrets.token_hex(3)}"
        self.base.mkdir()
        if not self.v1:
            with contextlib.suppress(OSError):
                (self.base / "cgroup.subtree_control").write_text("+cpu")
        self.names = list(names)
        for name in self.names:
            (self.base / name).mkdir()
        self._kernel_threads = KernelThreads()

    def add(self, name: str, pids: Iterable[int]) -> None:
        """Move processes (with all their threads; later children follow) into a group."""
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, OSError):
                (self.base / name / "cgroup.procs").write_text(f"{pid}\n")

    def read(self) -> dict[str, CpuTime]:
        """Each group's CPU so far, plus ``kernel threads`` and the whole ``machine``."""
        times = {name: self._group_time(self.base / name) for name in self.names}
        times["kernel threads"] = self._kernel_threads.read()
        times["machine"] = machine_time()
        return times

    def _group_time(self, group: Path) -> CpuTime:
        if self.v1:
            user = int((group / "cpuacct.usage_user").read_text()) / 1e9
            system = int((group / "cpuacct.usage_sys").read_text()) / 1e9
            return CpuTime(user, system)
        stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
        return CpuTime(int(stat["user_usec"]) / 1e6, int(stat["system_usec"]) / 1e6)

    def close(self) -> None:
        """Move what is still alive back to the root group, then remove the groups."""
        for name in self.names:
            group = self.base / name
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        (self.root / "cgroup.procs").write_text(f"{pid}\n")
            with contextlib.suppress(OSError):
                group.rmdir()
        with contextlib.suppress(OSError):
            self.base.rmdir()

    def __enter__(self) -> CpuGroups:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _find_root() -> tuple[Path, bool]:
    if (V1_ROOT / "cpuacct.usage_user").exists():
        return V1_ROOT, True
    for root in V2_ROOTS:
        if (root / "cgroup.controllers").exists():
            return root, False
    raise SystemExit("no cgroup cpuacct (v1) or cgroup v2 hierarchy found for CPU accounting")


class KernelThreads:
    """CPU of the kernel threads (children of kthreadd, pid 2: jbd2, kworkers, ksoftirqd) since
    this object was made, summed from each thread's growth between readings."""

    def __init__(self) -> None:
        self._seen = _kernel_thread_seconds()
        self._total = 0.0

    def read(self) -> CpuTime:
        now = _kernel_thread_seconds()
        for pid, seconds in now.items():
            before = self._seen.get(pid, 0.0)
            self._total += seconds - before if seconds >= before else seconds  # pid reused
        self._seen = now
        return CpuTime(0.0, self._total)


def _kernel_thread_seconds() -> dict[str, float]:
    return {stat[-1]: (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
            for stat in _proc_stats() if stat[1] == "2"}  # ppid


def machine_time() -> CpuTime:
    """All CPUs, all processes: user+nice as user; system, irq and softirq as system."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return CpuTime((user + nice) / CLOCK_TICKS, (system + irq + softirq) / CLOCK_TICKS)


def _proc_stats() -> Iterator[list[str]]:
    """``/proc/PID/stat`` fields after the command name: state, ppid, ... (utime is [11]),
    with the pid appended last."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
                yield [*fields, entry.name]
