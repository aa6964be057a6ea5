"""Maildir++ as Dovecot keeps it: paths, folder names, file names, flags, reading and writing.

The one Maildir library: the journal's maildir sink writes with it, the outage recorder and
failback read with it, prune deletes with it. Everything follows Dovecot's conventions as
verified in shared/postfix-dovecot-facts.md section 3:

- a user's Maildir comes from a ``mail_location``-style template (``%u``, ``%n``, ``%d``, ``%%``);
- INBOX is the Maildir's root, folder ``A/B`` is the directory ``.A.B``, each part in modified
  UTF-7;
- names are ``<unique>.<host>,S=<size>,W=<size with CRLF>`` plus ``:2,<flags>`` once seen, with
  keyword letters mapped in ``dovecot-keywords``; Dovecot trusts ``W=`` (a wrong one truncates);
- an outside writer writes ``tmp/<name>``, fsyncs and ``rename()``s into ``new/``; a name is
  never reused.

Reading never changes a file: Dovecot owns them.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import pwd
import re
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imapclient import imap_utf7

from mailcontinuity.mail.headers import (
    FIELD_KEYS,
    key_headers,
    message_key,
    message_keys,
    parse_headers,
)

INBOX = "INBOX"
# The separator IMAP clients see (the namespace's ``separator = /``); on disk it is ".".
IMAP_SEPARATOR = "/"
COPY_CHUNK = 1 << 20
# Maildir letters for the IMAP system flags (P, "passed", is the conventional $Forwarded).
FLAG_LETTERS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen",
                "T": "\\Deleted", "P": "$Forwarded"}
_SIZE_FIELD = re.compile(r",W=(\d+)")
# syncfs(2), setfsuid(2) and setfsgid(2), which os does not offer.
_libc = ctypes.CDLL(None, use_errno=True)


class MaildirError(Exception):
    """A Maildir cannot be written, or a template is wrong; the message names which."""


# --- where a user's Maildir is ---------------------------------------------------------------
def _template_parts(template: str) -> list[tuple[str, str]]:
    """``template`` as (kind, text) pieces: ``("lit", "/var/")``, ``("var", "d")``..."""
    pieces: list[tuple[str, str]] = []
    chars = iter(template)
    for char in chars:
        if char != "%":
            pieces.append(("lit", char))
            continue
        key = next(chars, "")
        if key == "%":
            pieces.append(("lit", "%"))
        elif key in ("u", "n", "d"):
            pieces.append(("var", key))
        else:
            raise MaildirError(f"maildir template {template!r}: unknown variable %{key};"
                               " use %u, %n, %d or %%")
    return pieces


def expand_template(template: str, address: str) -> Path:
    """Dovecot's ``%u`` (whole address), ``%n`` (local part), ``%d`` (domain) and ``%%``."""
    local, _, domain = address.partition("@")
    values = {"u": address, "n": local, "d": domain}
    return Path("".join(values[text] if kind == "var" else text
                        for kind, text in _template_parts(template)))


def user_maildirs(template: str, domains: list[str]) -> dict[str, Path]:
    """Every existing user Maildir of ``domains``, by address: the directory entries that the
    template's user component matches, whose expansion is a Maildir (has ``cur/``)."""
    found: dict[str, Path] = {}
    pieces = _template_parts(template)
    for domain in domains:
        base, pattern = _user_component(pieces, domain, template)
        try:
            entries = sorted(os.listdir(base))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in entries:
            match = pattern.fullmatch(name)
            if match is None:
                continue
            address = match["u"] if "u" in match.groupdict() else f"{match['n']}@{domain}"
            maildir = expand_template(template, address)
            if (maildir / "cur").is_dir():
                found[address] = maildir
    return found


def _user_component(pieces: list[tuple[str, str]], domain: str,
                    template: str) -> tuple[Path, re.Pattern[str]]:
    """The directory holding one entry per user of ``domain``, and a pattern for the entry
    names: the template up to the first path component that names the user."""
    components: list[list[tuple[str, str]]] = [[]]
    for piece in pieces:
        if piece == ("lit", "/"):
            components.append([])
        else:
            components[-1].append(piece)
    for index, component in enumerate(components):
        if not any(kind == "var" and text in ("u", "n") for kind, text in component):
            continue
        base = "/".join("".join(domain if kind == "var" else text for kind, text in part)
                        for part in components[:index])
        return Path(base or "/"), re.compile(_component_regex(component, domain))
    raise MaildirError(f"maildir template {template!r} does not name the user (%n or %u)")


def _component_regex(component: list[tuple[str, str]], domain: str) -> str:
    """A regex for directory entry names the template component expands to, capturing the
    local part (``n``) or the address (``u``); a variable used twice must match the same."""
    regex, seen = "", set()
    for kind, text in component:
        if kind == "lit":
            regex += re.escape(text)
        elif text == "d":
            regex += re.escape(domain)
        elif text in seen:
            regex += f"(?P={text})"
        else:
            seen.add(text)
            local = "[^/@]+"
            regex += f"(?P<n>{local})" if text == "n" else f"(?P<u>{local}@{re.escape(domain)})"
    return regex


# --- folders ---------------------------------------------------------------------------------
def folder_dirname(folder: str) -> str:
    """The directory Dovecot uses for an IMAP folder name: ``""`` for INBOX (any case),
    ``.Archive.R&AOk-sum&AOk-`` for ``Archive/Résumé``."""
    if folder.upper() == INBOX:
        return ""
    parts = folder.split(IMAP_SEPARATOR)
    return "." + ".".join(imap_utf7.encode(part).decode("ascii") for part in parts)


def folder_name(dirname: str) -> str:
    """The inverse of ``folder_dirname``: the Maildir root (``""``) is INBOX."""
    if dirname in ("", "."):
        return INBOX
    parts = dirname.removeprefix(".").split(".")
    return IMAP_SEPARATOR.join(imap_utf7.decode(part.encode("ascii")) for part in parts)


def folder_path(maildir: Path, folder: str) -> Path:
    """Where a folder of ``maildir`` lives on disk."""
    dirname = folder_dirname(folder)
    return maildir / dirname if dirname else maildir


def folder_dirs(maildir: Path) -> dict[str, Path]:
    """IMAP folder name -> directory, INBOX first."""
    folders = {INBOX: maildir}
    for entry in sorted(maildir.iterdir()):
        if entry.name.startswith(".") and entry.name != "." and (entry / "cur").is_dir():
            folders[folder_name(entry.name)] = entry
    return folders


# --- file names and flags --------------------------------------------------------------------
def _hostname() -> str:
    """The host part of a Maildir name, with the two characters Maildir reserves escaped."""
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


HOSTNAME = _hostname()


def message_name(unique: str, size: int, virtual_size: int) -> str:
    """A Maildir base name: ``<unique>.<host>,S=<size>,W=<size with CRLF>``."""
    return f"{unique}.{HOSTNAME},S={size},W={virtual_size}"


def split_filename(filename: str) -> tuple[str, str]:
    """``base:2,FS`` -> (``base``, ``FS``); a name without info has no flags."""
    base, sep, info = filename.partition(":2,")
    return base, info if sep else ""


def read_keywords(directory: Path) -> dict[str, str]:
    """Letter -> keyword from ``dovecot-keywords`` (``0 $Forwarded`` means ``a``)."""
    try:
        lines = (directory / "dovecot-keywords").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    keywords = {}
    for line in lines:
        number, _, keyword = line.partition(" ")
        if number.isdigit() and int(number) < 26 and keyword:
            keywords[chr(ord("a") + int(number))] = keyword
    return keywords


def flags_of(info: str, keywords: dict[str, str]) -> tuple[str, ...]:
    """IMAP flags and keywords for a Maildir info string, sorted for stable comparison."""
    flags = {FLAG_LETTERS[c] for c in info if c in FLAG_LETTERS}
    flags |= {keywords[c] for c in info if c in keywords}
    return tuple(sorted(flags))


def keywords_known(filename: str, keywords: dict[str, str]) -> bool:
    """Whether every keyword letter of ``filename`` is in ``keywords``. Dovecot renames a file
    to its new letters first and writes a new keyword into ``dovecot-keywords`` after, in the
    same sync: a file read in between shows a letter that means nothing yet."""
    return all(letter in keywords for letter in split_filename(filename)[1]
               if "a" <= letter <= "z")


def rfc822_size(path: Path, filename: str) -> int:
    """RFC822.SIZE (size with CRLF line ends): Dovecot's ``W=`` when present, else counted."""
    match = _SIZE_FIELD.search(filename)
    if match:
        return int(match.group(1))
    data = path.read_bytes()
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


# --- reading messages ------------------------------------------------------------------------
def read_header_fields(path: Path, names: Iterable[str]) -> bytes:
    """The fields ``names`` (any case) of a stored message's header section, with their folded
    lines, as a header block ``parse_headers`` reads.

    However large the header section (Postfix takes header blocks of many megabytes: thousands
    of fields under ``header_size_limit`` each), it is read to its end, line by line, and only
    these fields are kept: a key header after a huge block is still found, and memory holds
    only what is kept."""
    wanted = {name.lower().encode() for name in names}
    kept: list[bytes] = []
    keeping = False
    with open(path, "rb") as handle:
        for line in handle:
            if line in (b"\n", b"\r\n"):
                break
            if line[:1] in (b" ", b"\t"):
                if keeping:
                    kept.append(line)
                continue
            keeping = line.split(b":", 1)[0].strip().lower() in wanted
            if keeping:
                kept.append(line)
    return b"".join(kept) + b"\n"


@dataclass(frozen=True)
class MessageFile:
    """One message file as found on disk, with what failback needs to find it elsewhere."""

    folder: str
    basename: str
    filename: str
    path: Path
    flags: tuple[str, ...]
    key: str
    journal: bool
    size: int
    mtime: float
    message_id: str
    keys: tuple[str, ...] = ()
    """Its key in every scheme (``headers.message_keys``): to recognise it in older
    outages' records."""


def read_message(folder: str, path: Path, keywords: dict[str, str],
                 id_header: str, scheme: int = FIELD_KEYS) -> MessageFile | None:
    """Describe one message file, keyed by the configured ``id_header`` in the outage's key
    ``scheme`` (``headers.message_key``); None if it vanished meanwhile (expunged, renamed)."""
    try:
        stat = path.stat()
        headers = parse_headers(read_header_fields(path, key_headers(id_header)), id_header)
        size = rfc822_size(path, path.name)
    except FileNotFoundError:
        return None
    base, info = split_filename(path.name)
    return MessageFile(
        folder=folder, basename=base, filename=path.name, path=path,
        flags=flags_of(info, keywords), key=message_key(headers, size, scheme),
        journal=bool(headers["is_journal"]), size=size, mtime=stat.st_mtime,
        message_id=headers["message-id"], keys=message_keys(headers, size),
    )


def message_paths(directory: Path) -> Iterator[Path]:
    """Every message file of a folder in new/ and cur/ (tmp/ holds deliveries in progress)."""
    for sub in ("new", "cur"):
        try:
            with os.scandir(directory / sub) as entries:
                for entry in entries:
                    if not entry.name.startswith("."):
                        yield Path(entry.path)
        except FileNotFoundError:
            continue


def find_delivered(directory: Path, name: str) -> Path | None:
    """The file delivered under ``name``: still in ``new/``, or moved to ``cur/`` with flags."""
    fresh = directory / "new" / name
    if fresh.exists():
        return fresh
    try:
        with os.scandir(directory / "cur") as entries:
            for entry in entries:
                if entry.name == name or entry.name.startswith(name + ":"):
                    return Path(entry.path)
    except FileNotFoundError:
        pass
    return None


# --- writing messages ------------------------------------------------------------------------
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


def ensure_folder(path: Path, owner: MailOwner) -> None:
    """Create the folder's ``tmp``/``new``/``cur`` (and missing parents) owned by ``owner``.

    Dovecot may look at the same paths at any moment (a client selects INBOX while the first
    journal copy for a new user arrives), so each directory belongs to ``owner`` from the
    moment it exists: see ``_make_owned``.
    """
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
            _make_owned(marker, owner, directory=False)


def _make_owned(path: Path, owner: MailOwner, directory: bool = True) -> None:
    """Create ``path`` (a directory, else an empty file), mode 0700/0600, owned by ``owner``.

    A process running as root creates it under the owner's file-system identity
    (setfsuid(2)/setfsgid(2), which act on the calling thread only). Created first and given
    away after, it was root's for a moment, and a Dovecot process that reached it then
    answered SELECT with ``[SERVERBUG]`` ("chdir(...) failed: Permission denied ... dir owned
    by 0:0 mode=0700" in its log; 35 of 300 new users' first copies in a loop). Where the owner
    may not write the parent (a root-owned mail root), it is created, then given away, as any
    process other than root does (the milter normally runs as the mail user itself).
    """
    with _file_system_identity(owner) as as_owner:
        if as_owner:
            try:
                _create(path, directory)
                return
            except FileExistsError:
                return
            except PermissionError:
                pass  # the owner may not write here: created as root, then given away
    try:
        _create(path, directory)
    except FileExistsError:
        return
    os.chown(path, owner.uid, owner.gid)


def _create(path: Path, directory: bool) -> None:
    if directory:
        path.mkdir(mode=0o700)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


@contextmanager
def _file_system_identity(owner: MailOwner) -> Iterator[bool]:
    """Within the block, files this thread creates belong to ``owner`` (True), if this process
    is root and the owner is not; otherwise nothing changes (False)."""
    if os.geteuid() != 0 or owner.uid == 0:
        yield False
        return
    gid_before = _libc.setfsgid(owner.gid)
    uid_before = _libc.setfsuid(owner.uid)
    try:
        # setfsuid reports no error: asking with an invalid id (-1) returns the current one.
        yield _libc.setfsuid(-1) == owner.uid and _libc.setfsgid(-1) == owner.gid
    finally:
        _libc.setfsuid(uid_before)
        _libc.setfsgid(gid_before)


# copy_file_range refuses these where the two files are on different file systems (a spool on
# its own disk or tmpfs, a separate /var/vmail) or the file system cannot do it; sendfile can.
_NO_RANGE_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def _copy_in_kernel(source: int, target: int, length: int, start: int = 0,
                    offset: int = 0) -> int:
    """Copy ``length`` bytes of ``source`` from ``start`` into ``target`` at ``offset``, without
    passing them through Python; returns how many were copied (fewer only if ``source`` is
    shorter)."""
    copied = 0
    ranged = True
    while copied < length:
        chunk = min(COPY_CHUNK, length - copied)
        if ranged:
            try:
                done = os.copy_file_range(source, target, chunk, start + copied,
                                          offset + copied)
            except OSError as exc:
                if exc.errno not in _NO_RANGE_COPY:
                    raise
                ranged = False
                os.lseek(target, offset + copied, os.SEEK_SET)
                continue
        else:
            done = os.sendfile(target, source, start + copied, chunk)
        if done == 0:
            break
        copied += done
    return copied


def deliver(path: Path, name: str, source: int, length: int, owner: MailOwner,
            received: float, insert: bytes = b"", insert_at: int = 0, *, start: int = 0,
            durable: bool = True) -> Path:
    """Copy ``length`` bytes from offset ``start`` of file descriptor ``source`` into
    ``path/new/name``, with ``insert`` (the few header fields that differ per copy, e.g.
    ``Delivered-To``) written in after the first ``insert_at`` bytes; the folder must exist
    (``ensure_folder``).

    The copy stays in the kernel (``os.copy_file_range``, or ``os.sendfile`` between file
    systems), so a 50 MB message never passes through Python. mtime is set to ``received``:
    Dovecot shows it as the INTERNALDATE. ``durable=False`` skips the fsync before the rename,
    for a writer that makes a whole batch durable at once (``sync_file_system``) before it
    relies on any of it.
    """
    temporary = path / "tmp" / name
    final = path / "new" / name
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        head = min(insert_at, length)
        copied = _copy_in_kernel(source, fd, head, start)
        if copied == head:
            os.lseek(fd, head, os.SEEK_SET)
            os.write(fd, insert)
            copied += _copy_in_kernel(source, fd, length - head, start + head,
                                      head + len(insert))
        if copied < length:
            raise MaildirError(f"{temporary}: source ended after {copied} of {length} bytes")
        os.fchown(fd, owner.uid, owner.gid)
        os.utime(fd, (received, received))
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(temporary, final)
    return final



def sync_file_system(directory: Path) -> None:
    """Make everything written to the file system holding ``directory`` durable (syncfs(2)):
    one call for a batch of files instead of an fsync per file."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(directory))
    finally:
        os.close(fd)
