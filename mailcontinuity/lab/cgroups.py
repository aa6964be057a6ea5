"""Each host of a multi-host lab in a cgroup v2 of the lab's own, so that the packet filter can
tell whose socket a packet comes from (``lab.netcut``).

The lab's hosts share one machine, one loopback interface and 127.0.0.1; what sets a host's
processes apart is the cgroup they run in: ``<cgroup2 mount>/mailcontinuity-lab-<id>/<host>``
(``id`` from the lab's resolved directory, as the nftables table's). ``lab up`` creates them;
every part of a host is started with the lab's own process moved into that host's cgroup for
the start (``HostPart``), so Postfix's master, Dovecot, PostgreSQL, the daemons and everything
they fork later are born there, and their sockets (listeners, and the connections accepted
from them) carry the cgroup. A command a test or an operator runs "on host X" goes there too
(``run_on_host``, ``mailcontinuity lab run``). ``lab down`` kills whatever is left in them and
removes them.

The lab's own process is moved rather than each child put there by a ``preexec_fn`` because the
parts start their servers through the product's command runner (``postfix start``, ``dovecot``,
``pg_ctl``), which knows nothing of the lab; the move lasts only the start. cgroup v2 has no
controller enabled here: the groups are labels, not limits.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.eventually import NotInTime, eventually

# nft resolves a ``socket cgroupv2`` path under this directory (nftables' SYSFS_CGROUPSV2_PATH).
NFT_CGROUP_BASE = Path("/sys/fs/cgroup")
# Our cgroups are <mount>/<lab>/<host>: two levels below the cgroup2 root.
HOST_LEVEL = 2


def cgroup2_mount(mountinfo: str | None = None) -> Path:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` on a unified system,
    ``/sys/fs/cgroup/unified`` on a hybrid one)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields = before.split()
        if after.split()[:1] == ["cgroup2"] and len(fields) > 4 and fields[3] == "/":
            return Path(fields[4])
    raise LabError("no cgroup v2 hierarchy is mounted (lab isolate needs one to tell the lab's"
                   " hosts apart): boot with systemd.unified_cgroup_hierarchy=1, or mount one:"
                   " mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none"
                   " /sys/fs/cgroup/unified")


class Part(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def pid(self) -> int | None: ...


@dataclass(frozen=True)
class HostCgroups:
    """The cgroups of one lab's hosts."""

    name: str
    """``mailcontinuity-lab-<id>``, the lab's group below the cgroup2 root."""
    mount: Path

    @classmethod
    def of(cls, name: str) -> HostCgroups:
        return cls(name, cgroup2_mount())

    @property
    def root(self) -> Path:
        return self.mount / self.name

    def path(self, host: str) -> Path:
        return self.root / host

    def nft_path(self, host: str) -> str:
        """The path ``socket cgroupv2 level 2`` takes: below /sys/fs/cgroup, where nft looks."""
        try:
            return str(self.path(host).relative_to(NFT_CGROUP_BASE))
        except ValueError:
            raise LabError(f"the cgroup v2 hierarchy is mounted on {self.mount}, outside"
                           f" {NFT_CGROUP_BASE} where nft looks for cgroups; mount it there"
                           " (mount -t cgroup2 none /sys/fs/cgroup/unified)") from None

    def create(self, hosts: list[str]) -> None:
        for host in hosts:
            try:
                self.path(host).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LabError(f"cannot create the lab's cgroup {self.path(host)}: {exc}"
                               " (the multi-host lab needs root and a writable cgroup v2"
                               " hierarchy)") from None

    def missing(self, hosts: list[str]) -> list[str]:
        return [host for host in hosts if not self.path(host).is_dir()]

    def processes(self, host: str) -> list[int]:
        try:
            text = (self.path(host) / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def remove(self) -> None:
        """Kill whatever the lab left in its hosts' cgroups (every part is stopped by now), then
        remove them; none there is fine."""
        if not self.root.is_dir():
            return
        hosts = sorted(entry for entry in self.root.iterdir() if entry.is_dir())
        if own_cgroup(self.mount).is_relative_to(self.root):  # never kill the lab's own process
            _move(self.mount, "0")
        for path in hosts:
            if self.processes(path.name):
                with contextlib.suppress(OSError):
                    (path / "cgroup.kill").write_text("1\n")
        try:
            eventually(lambda: not any(self.processes(p.name) for p in hosts), 10,
                       "the lab's cgroups empty", interval=0.05)
        except NotInTime:
            left = {p.name: self.processes(p.name) for p in hosts if self.processes(p.name)}
            raise LabError(f"processes left in the lab's cgroups {self.root}: {left}; stop"
                           " them, then rmdir the groups") from None
        for path in [*hosts, self.root]:
            try:
                path.rmdir()
            except OSError as exc:
                raise LabError(f"cannot remove the lab's cgroup {path}: {exc}") from None

    @contextmanager
    def entered(self, host: str) -> Iterator[None]:
        """This whole process (every thread) in ``host``'s cgroup, then back where it was: the
        processes started meanwhile are that host's."""
        home = own_cgroup(self.mount)
        _move(self.path(host), "0")
        try:
            yield
        finally:
            _move(home, "0")

    def preexec(self, host: str) -> Callable[[], None]:
        """For ``subprocess``: the child moves itself into ``host``'s cgroup before it runs."""
        procs = str(self.path(host) / "cgroup.procs")

        def move() -> None:
            with open(procs, "w") as handle:
                handle.write("0\n")

        return move


def own_cgroup(mount: Path) -> Path:
    """The cgroup v2 group this process is in."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    raise LabError("this process is in no cgroup v2 group (/proc/self/cgroup has no 0:: line)")


def _move(group: Path, pid: str) -> None:
    try:
        (group / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as exc:
        raise LabError(f"cannot move a process into the cgroup {group}: {exc}; 'lab down' then"
                       " 'lab up' recreates the lab's cgroups") from None


@dataclass
class HostPart:
    """A lab part started as one host's: the lab's process in that host's cgroup meanwhile."""

    part: Part
    host: str
    cgroups: HostCgroups

    def start(self) -> None:
        if not self.cgroups.path(self.host).is_dir():  # a lab made before cgroups: as before
            self.part.start()
            return
        with self.cgroups.entered(self.host):
            self.part.start()

    def stop(self) -> None:
        self.part.stop()

    def pid(self) -> int | None:
        return self.part.pid()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.part, name)


def run_on_host(cgroups: HostCgroups, host: str, argv: list[str],
                **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command as ``host`` (in its cgroup, so a cut applies to it) and wait for it;
    ``kwargs`` go to ``subprocess.run`` (text output, captured, unless given)."""
    if not cgroups.path(host).is_dir():
        raise LabError(f"no cgroup for lab host {host!r} ({cgroups.path(host)}); 'lab up'"
                       " creates them")
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 300)
    return subprocess.run(argv, preexec_fn=cgroups.preexec(host), check=False,
                          **kwargs)
