"""Running Postfix's own commands against one Postfix instance (its config directory).

The gateway may be the system instance (``/etc/postfix``) or a private one (the lab); every call
names the directory with ``-c`` so that nothing ever falls back to the system instance by accident.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
from pathlib import Path

from mailcontinuity.config import ConfigError, Endpoint, UnixSocket
from mailcontinuity.mail.tools import CommandError, run_command

# Where Debian (and Postfix's default build) keep the queue; Postfix daemons run with it as their
# working directory, chrooted into it when master.cf says so, so sockets under it are named
# relative to it.
POSTFIX_QUEUE_DIR = Path("/var/spool/postfix")


class PostfixError(CommandError):
    """A Postfix command failed; the message carries its output."""


def run_postfix(config_dir: Path, command: str, *args: str, timeout: float = 60) -> str:
    """Run ``command -c config_dir args...`` (postfix, postconf, postmap, postqueue, postsuper)."""
    try:
        return run_command([command, "-c", str(config_dir), *args], timeout,
                           missing_hint="install Debian's postfix package")
    except CommandError as exc:
        raise PostfixError(str(exc)) from None


def reload_postfix(config_dir: Path) -> None:
    """``postfix reload``, which Postfix reserves to the superuser.

    policyd and the sync agent run as unprivileged users; they ask sudo for exactly this command
    line, which is all the Ansible role's sudoers rule allows them (docs/install.md)."""
    if os.geteuid() == 0:
        run_postfix(config_dir, "postfix", "reload")
        return
    postfix = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postfix"
    try:
        run_command(["sudo", "-n", postfix, "-c", str(config_dir), "reload"], 60,
                    missing_hint="install Debian's sudo package")
    except CommandError as exc:
        user = pwd.getpwuid(os.geteuid()).pw_name
        raise PostfixError(
            f"{exc}; as user {user}, 'postfix reload' needs the sudoers rule"
            f" '{user} ALL=(root) NOPASSWD: {postfix} -c {config_dir} reload'") from None


def write_indexed_map(config_dir: Path, path: Path, lines: list[str]) -> None:
    """Replace a ``hash:`` table atomically: Postfix never sees a half-written map.

    The source is written and ``postmap``-ed under a temporary name, then the ``.db`` and the
    source are renamed into place (rename is atomic within one directory).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{line}\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        run_postfix(config_dir, "postmap", f"hash:{tmp}")
        os.chmod(tmp, 0o644)
        os.chmod(f"{tmp}.db", 0o644)
        os.replace(f"{tmp}.db", f"{path}.db")
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, Path(f"{tmp}.db")):
            leftover.unlink(missing_ok=True)


def postfix_socket_name(path: Path) -> str:
    """How Postfix names a unix socket in ``smtpd_milters`` or ``check_policy_service``: relative
    to the queue directory when under it, which works for chrooted and unchrooted smtpd alike."""
    if path.is_relative_to(POSTFIX_QUEUE_DIR):
        return f"unix:{path.relative_to(POSTFIX_QUEUE_DIR)}"
    return f"unix:{path}"


def postfix_milter_name(listen: Endpoint | UnixSocket) -> str:
    """The ``smtpd_milters`` value for a milter listening on ``listen``."""
    if isinstance(listen, UnixSocket):
        return postfix_socket_name(listen.path)
    return f"inet:{listen}"


def postfix_access_problem(path: Path, postfix_user: str = "postfix") -> str | None:
    """Why Postfix's daemons (running as ``postfix_user``) could not connect to the unix socket
    ``path``, or None if they can: connecting needs write permission on the socket and search
    permission on every directory above it. Root passes every such check, so a probe that
    connects as root proves nothing about Postfix; this looks at the modes instead."""
    try:
        user = pwd.getpwnam(postfix_user)
    except KeyError:
        return f"user {postfix_user!r} does not exist on this host"
    groups = {user.pw_gid, *(g.gr_gid for g in grp.getgrall() if postfix_user in g.gr_mem)}

    def allowed(info: os.stat_result, bits: tuple[int, int, int]) -> bool:
        if info.st_uid == user.pw_uid:
            return bool(info.st_mode & bits[0])
        if info.st_gid in groups:
            return bool(info.st_mode & bits[1])
        return bool(info.st_mode & bits[2])

    for directory in reversed(path.parents):
        try:
            info = directory.stat()
        except OSError as exc:
            return f"{directory}: {exc.strerror}"
        if not allowed(info, (0o100, 0o010, 0o001)):
            return f"{directory} is not searchable by user {postfix_user}"
    try:
        info = path.stat()
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not allowed(info, (0o200, 0o020, 0o002)):
        return (f"{path} (mode {info.st_mode & 0o777:04o}) is not writable by user"
                f" {postfix_user} or its groups")
    return None


def grant_postfix_access(path: Path, group: str | None, mode: int, key: str) -> None:
    """Let Postfix's group (smtpd, cleanup) and no other user talk to a socket we listen on.

    A process may give a file only a group it belongs to, or the group the file already has:
    a socket created in a setgid directory of group postfix has it without the daemon being in
    that group (the Ansible role lays the directories out so)."""
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"key '{key}_group': group {group!r} does not exist; set it to the"
                              " group Postfix runs as (usually postfix)") from None
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            raise ConfigError(
                f"key '{key}_group': cannot give {path} to group {group!r}: this process is not"
                f" in it; add the daemon's user to group {group} or make {path.parent} a"
                f" setgid directory of that group (chmod g+s)") from None
    os.chmod(path, mode)


def delivery_bind_address(config_dir: Path, protocol: str) -> str | None:
    """The local address Postfix's ``smtp`` or ``lmtp`` client delivers from
    (``smtp_bind_address`` / ``lmtp_bind_address``), None when unset (the system's choice)."""
    value = run_postfix(config_dir, "postconf", "-h", f"{protocol}_bind_address",
                        timeout=10).strip()
    return value or None
