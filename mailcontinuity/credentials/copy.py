"""The standby's copy of the directory's password hashes: a Dovecot passwd-file.

Pure parts (hash names, lines) and the one writer: the copy is replaced atomically (a reader,
Dovecot's auth process, sees the old file or the new one, never half of one), created with its
final mode before any secret is written to it, and owned root:GROUP 0640 so that Dovecot's auth
process (group dovecot) reads it and nobody else does. No hash ever reaches a log line or an
error message: only logins and counts do.
"""

from __future__ import annotations

import contextlib
import grp
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

COPY_MODE = 0o640
# What a passwd-file line cannot hold: the field separator and line ends.
_UNSAFE = (":", "\n", "\r", "\0")


@dataclass(frozen=True)
class Account:
    """One user the standby may let in: the login and the password hash, scheme prefixed."""

    login: str
    password_hash: str

    def __repr__(self) -> str:  # never show the hash, even in a traceback or a test failure
        return f"Account(login={self.login!r})"


@dataclass(frozen=True)
class Skipped:
    """A directory entry left out of the copy, and why (never the hash itself)."""

    login: str
    reason: str


def dovecot_hash(value: bytes | str) -> str | None:
    """The directory's password value as Dovecot reads it, or None when it is no usable hash.

    ``{SSHA}``, ``{SSHA512}``, ``{CRYPT}$6$...`` pass as they are; slapd's ``{ARGON2}`` becomes
    ``{ARGON2I}`` or ``{ARGON2ID}`` (Dovecot's names); a value without a scheme is a clear-text
    password (the directory stores it so), which is refused rather than copied: the copy holds
    hashes only."""
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        return None
    if not text.startswith("{") or "}" not in text:
        return None
    scheme, _, rest = text[1:].partition("}")
    scheme = scheme.upper()
    if not scheme or not rest or scheme in ("PLAIN", "CLEARTEXT", "SASL"):
        return None
    if scheme == "ARGON2":
        scheme = "ARGON2ID" if rest.startswith("$argon2id$") else "ARGON2I"
    return f"{{{scheme}}}{rest}"


def unsafe(text: str) -> bool:
    return any(character in text for character in _UNSAFE)


def passwd_file_text(accounts: Iterable[Account]) -> str:
    """One ``login:{SCHEME}hash::::::`` line per account (no extra fields), sorted by login so
    that an unchanged directory gives an identical file."""
    lines = []
    for account in sorted(accounts, key=lambda account: account.login):
        if unsafe(account.login) or unsafe(account.password_hash):
            raise ValueError(f"{account.login!r}: a login or hash with ':' or a line break"
                             " cannot go into a passwd-file")
        lines.append(f"{account.login}:{account.password_hash}::::::\n")
    return "".join(lines)


def read_logins(path: Path) -> list[str]:
    """The logins in an existing copy (for counting what a refresh removed), [] if none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [line.partition(":")[0] for line in text.splitlines() if ":" in line]


def write_copy(path: Path, text: str, group: str, mode: int = COPY_MODE) -> None:
    """Replace ``path`` with ``text`` atomically: a temporary file in the same directory,
    created 0600, given its owner and final mode, written, synced, then renamed over ``path``.
    On any failure the old copy stays and the temporary file is removed."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"group {group!r} does not exist (credentials.copy_group); it must be"
                         " the group of Dovecot's auth process, usually dovecot") from None
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchown(fd, 0 if os.geteuid() == 0 else -1, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
