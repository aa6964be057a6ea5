"""Writing messages into Maildir++ folders the way Dovecot expects to find them.

Shared by the journal milter's maildir sink and anything else that drops mail beside Dovecot.
Dovecot picks up a file that appears in ``new/`` at its next mailbox sync, so an outside writer
only has to follow the rules in shared/postfix-dovecot-facts.md section 3: write ``tmp/<name>``,
fsync, ``rename()`` into ``new/``; a unique name never reused; ``S=`` the size on disk and ``W=``
the size with CRLF line ends (Dovecot trusts ``W=``: a wrong one truncates the message).
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path

from imapclient import imap_utf7

INBOX = "INBOX"
# Folder separator of Dovecot's default Maildir++ layout; IMAP clients see "/" in the lab.
IMAP_SEPARATOR = "/"
COPY_CHUNK = 1 << 20


class MaildirError(Exception):
    """A Maildir cannot be written; the message names the path and the cause."""


@dataclass(frozen=True)
class MailOwner:
    """The uid/gid Dovecot accesses mail as (Dovecot refuses uid 0)."""

    uid: int
    gid: int

    @classmethod
    def parse(cls, spec: str) -> MailOwner:
        """``user`` (its primary group) or ``user:group``, by name or number."""
        user, _, group = spec.partition(":")
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            gid = entry.pw_gid
            if group:
                gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise MaildirError(
                f"mail owner {spec!r} does not exist on this host; set milter.mail_owner to the"
                " user Dovecot stores mail as (e.g. vmail)"
            ) from None
        return cls(entry.pw_uid, gid)


def expand_template(template: str, address: str) -> Path:
    """Dovecot's ``%u`` (whole address), ``%n`` (local part), ``%d`` (domain) and ``%%``."""
    local, _, domain = address.partition("@")
    values = {"u": address, "n": local, "d": domain, "%": "%"}
    out, chars = [], iter(template)
    for char in chars:
        if char != "%":
            out.append(char)
            continue
        key = next(chars, "")
        if key not in values:
            raise MaildirError(f"maildir template {template!r}: unknown variable %{key}")
        out.append(values[key])
    return Path("".join(out))


def folder_dir(maildir: Path, folder: str) -> Path:
    """Where Maildir++ keeps an IMAP folder: INBOX is the root, ``A/B`` is ``.A.B``."""
    if folder.upper() == INBOX:
        return maildir
    parts = [imap_utf7.encode(part).decode("ascii") for part in folder.split(IMAP_SEPARATOR)]
    return maildir / ("." + ".".join(parts))


def _hostname() -> str:
    """The host part of a Maildir name, with the two characters Maildir reserves escaped."""
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


HOSTNAME = _hostname()


def message_name(unique: str, size: int, virtual_size: int) -> str:
    """A Maildir base name: ``<unique>.<host>,S=<size>,W=<size with CRLF>``."""
    return f"{unique}.{HOSTNAME},S={size},W={virtual_size}"


def ensure_folder(path: Path, owner: MailOwner) -> None:
    """Create the folder's ``tmp``/``new``/``cur`` (and missing parents) owned by ``owner``."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        _make_owned(directory, owner)
    for sub in ("tmp", "new", "cur"):
        if not (path / sub).is_dir():
            _make_owned(path / sub, owner)
    if path.name.startswith("."):
        # Dovecot treats a Maildir++ folder as a mailbox only with this marker file present.
        marker = path / "maildirfolder"
        if not marker.exists():
            marker.touch(mode=0o600)
            os.chown(marker, owner.uid, owner.gid)


def _make_owned(directory: Path, owner: MailOwner) -> None:
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chown(directory, owner.uid, owner.gid)


def find_delivered(path: Path, name: str) -> Path | None:
    """The file delivered under ``name``: still in ``new/``, or moved to ``cur/`` with flags."""
    fresh = path / "new" / name
    if fresh.exists():
        return fresh
    try:
        with os.scandir(path / "cur") as entries:
            for entry in entries:
                if entry.name == name or entry.name.startswith(name + ":"):
                    return Path(entry.path)
    except FileNotFoundError:
        pass
    return None


def deliver(path: Path, name: str, source: int, length: int, owner: MailOwner,
            received: float) -> Path:
    """Copy ``length`` bytes from the start of file descriptor ``source`` into ``path/new/name``.

    The copy stays in the kernel (``os.copy_file_range``), so a 50 MB message never passes
    through Python. mtime is set to ``received``: Dovecot shows it as the INTERNALDATE.
    """
    ensure_folder(path, owner)
    temporary = path / "tmp" / name
    final = path / "new" / name
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        copied = 0
        while copied < length:
            done = os.copy_file_range(source, fd, min(COPY_CHUNK, length - copied), copied, copied)
            if done == 0:
                raise MaildirError(f"{temporary}: source ended after {copied} of {length} bytes")
            copied += done
        os.fchown(fd, owner.uid, owner.gid)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.utime(temporary, (received, received))
    os.rename(temporary, final)
    return final


def read_header_block(path: Path, limit: int = 256 * 1024) -> bytes:
    """The header section of a stored message (up to the first empty line), for checks."""
    with open(path, "rb") as handle:
        head = handle.read(limit)
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = head.find(separator)
        if end != -1:
            return head[: end + len(separator)]
    return head
