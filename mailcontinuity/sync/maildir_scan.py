"""Reading a Dovecot Maildir++ store: users, folders, message files, flags and identity headers.

Read-only by design: the sync agent and failback look at the standby's files but never change
them (Dovecot owns them). Everything here follows Dovecot's conventions as verified in
shared/postfix-dovecot-facts.md section 3: ``time.M<usec>P<pid>.host,S=..,W=..:2,<flags>``
names, keywords in ``dovecot-keywords``, folders as ``.Parent.Child`` in modified UTF-7.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

from imapclient import imap_utf7

from mailcontinuity.headers import DEFAULT_ID_HEADER, JOURNAL_HEADER

INBOX = "INBOX"
IMAP_SEPARATOR = "/"
# Maildir letters for the IMAP system flags (P, "passed", is the conventional $Forwarded).
FLAG_LETTERS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen",
                "T": "\\Deleted", "P": "$Forwarded"}
LETTER_OF_FLAG = {flag: letter for letter, flag in FLAG_LETTERS.items()}
# Headers are read up to here; a message whose header block is longer is identified by what fits.
MAX_HEADER_BYTES = 256 * 1024
_SIZE_FIELD = re.compile(r",W=(\d+)")


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


def maildir_of(template: str, address: str) -> Path:
    """The user's Maildir from a Dovecot-style template (``%d`` domain, ``%n`` local part)."""
    local, _, domain = address.partition("@")
    return Path(template.replace("%d", domain).replace("%n", local).replace("%u", address))


def user_maildirs(template: str, domains: list[str]) -> dict[str, Path]:
    """Every existing user Maildir of the protected domains, by address."""
    found: dict[str, Path] = {}
    for domain in domains:
        pattern = Path(template.replace("%d", domain).replace("%u", f"%n@{domain}"))
        parts = pattern.parts
        index = next(i for i, part in enumerate(parts) if "%n" in part)
        base = Path(*parts[:index])
        if not base.is_dir():
            continue
        for entry in sorted(base.iterdir()):
            local = entry.name
            candidate = Path(str(pattern).replace("%n", local))
            if (candidate / "cur").is_dir():
                found[f"{local}@{domain}"] = candidate
    return found


def folder_name(dirname: str) -> str:
    """``.Archive.R&AOk-sum&AOk-`` -> ``Archive/Résumé``; the Maildir root is INBOX."""
    if dirname in ("", "."):
        return INBOX
    parts = dirname.removeprefix(".").split(".")
    return IMAP_SEPARATOR.join(imap_utf7.decode(part.encode("ascii")) for part in parts)


def folder_dirname(name: str) -> str:
    """The inverse of ``folder_name``: the directory Dovecot uses for an IMAP folder name."""
    if name == INBOX:
        return ""
    parts = name.split(IMAP_SEPARATOR)
    return "." + ".".join(imap_utf7.encode(part).decode("ascii") for part in parts)


def folder_dirs(maildir: Path) -> dict[str, Path]:
    """IMAP folder name -> directory, INBOX first."""
    folders = {INBOX: maildir}
    for entry in sorted(maildir.iterdir()):
        if entry.name.startswith(".") and entry.name not in (".", "..") and (entry / "cur").is_dir():
            folders[folder_name(entry.name)] = entry
    return folders


def read_keywords(folder_dir: Path) -> dict[str, str]:
    """Letter -> keyword from ``dovecot-keywords`` (``0 $Forwarded`` means ``a``)."""
    try:
        lines = (folder_dir / "dovecot-keywords").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    keywords = {}
    for line in lines:
        number, _, keyword = line.partition(" ")
        if number.isdigit() and int(number) < 26 and keyword:
            keywords[chr(ord("a") + int(number))] = keyword
    return keywords


def split_filename(filename: str) -> tuple[str, str]:
    """``base:2,FS`` -> (``base``, ``FS``); a name without info has no flags."""
    base, sep, info = filename.partition(":2,")
    return base, info if sep else ""


def flags_of(info: str, keywords: dict[str, str]) -> tuple[str, ...]:
    """IMAP flags and keywords for a Maildir info string, sorted for stable comparison."""
    flags = {FLAG_LETTERS[c] for c in info if c in FLAG_LETTERS}
    flags |= {keywords[c] for c in info if c in keywords}
    return tuple(sorted(flags))


def identity(headers: dict[str, str], size: int) -> str:
    """The key failback finds a message by on the primary: the id header the gateway puts on
    every message, else Message-ID with size, else a digest of the headers a client sets."""
    if headers.get("id"):
        return f"id:{headers['id']}"
    if headers.get("message-id"):
        return f"mid:{headers['message-id']}:{size}"
    digest = hashlib.sha256(
        "\n".join(headers.get(name, "") for name in ("date", "from", "subject")).encode()
    ).hexdigest()[:32]
    return f"hdr:{digest}:{size}"


def parse_headers(block: bytes) -> dict[str, str]:
    """The identity headers of a message header block (unfolded, stripped)."""
    message = BytesHeaderParser(policy=compat32).parsebytes(block)

    def value(name: str) -> str:
        raw = message.get(name)
        return " ".join(str(raw).split()) if raw is not None else ""

    return {
        "id": value(DEFAULT_ID_HEADER),
        "is_journal": "1" if JOURNAL_HEADER in message else "",
        "message-id": value("Message-ID"),
        "date": value("Date"),
        "from": value("From"),
        "subject": value("Subject"),
    }


def read_header_block(path: Path) -> bytes:
    """The bytes up to the first empty line (the whole header block)."""
    with open(path, "rb") as handle:
        data = handle.read(65536)
        while b"\n\n" not in data and b"\r\n\r\n" not in data and len(data) < MAX_HEADER_BYTES:
            more = handle.read(65536)
            if not more:
                break
            data += more
    end = min((i for i in (data.find(b"\n\n"), data.find(b"\r\n\r\n")) if i >= 0),
              default=len(data))
    return data[: end + 1]


def rfc822_size(path: Path, filename: str) -> int:
    """RFC822.SIZE (size with CRLF line ends): Dovecot's ``W=`` when present, else counted."""
    match = _SIZE_FIELD.search(filename)
    if match:
        return int(match.group(1))
    data = path.read_bytes()
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def read_message(folder: str, path: Path, keywords: dict[str, str]) -> MessageFile | None:
    """Describe one message file; None if it vanished meanwhile (expunged, renamed)."""
    try:
        stat = path.stat()
        headers = parse_headers(read_header_block(path))
        size = rfc822_size(path, path.name)
    except FileNotFoundError:
        return None
    base, info = split_filename(path.name)
    return MessageFile(
        folder=folder, basename=base, filename=path.name, path=path,
        flags=flags_of(info, keywords), key=identity(headers, size),
        journal=bool(headers["is_journal"]), size=size, mtime=stat.st_mtime,
        message_id=headers["message-id"],
    )


def message_paths(folder_dir: Path) -> Iterator[Path]:
    """Every message file in new/ and cur/ (tmp/ holds deliveries not finished yet)."""
    for sub in ("new", "cur"):
        try:
            with os.scandir(folder_dir / sub) as entries:
                for entry in entries:
                    if not entry.name.startswith("."):
                        yield Path(entry.path)
        except FileNotFoundError:
            continue
