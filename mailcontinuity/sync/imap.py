"""IMAP sessions on the primary, as each user, through the configured master/admin login.

Failback and verify look at the primary the same way: an index of every message by the key
``maildir_scan.identity`` computes for standby files (id header, else Message-ID with size), so a
copy that is already there (delivered from Postfix's queue, appended by an interrupted run, or
renumbered by a UIDVALIDITY change) is recognised without trusting any UID kept from before.
"""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.exceptions import IMAPClientError

from mailcontinuity.config import Config, ConfigError, read_secret
from mailcontinuity.headers import DEFAULT_ID_HEADER, JOURNAL_HEADER
from mailcontinuity.sync.maildir_scan import IMAP_SEPARATOR, identity, parse_headers
from mailcontinuity.tls import TLSError, TLSPolicy, open_imap

_HEADER_FIELDS = f"{DEFAULT_ID_HEADER} {JOURNAL_HEADER} MESSAGE-ID DATE FROM SUBJECT".upper()
_HEADER_ITEM = f"BODY.PEEK[HEADER.FIELDS ({_HEADER_FIELDS})]"
_HEADER_KEY = f"BODY[HEADER.FIELDS ({_HEADER_FIELDS})]".encode()
SERVER_SET_FLAGS = {"\\Recent"}
FETCH_CHUNK = 2000


class PrimaryError(Exception):
    """The primary cannot be reached or logged into; the message says what to check."""


@dataclass(frozen=True)
class PrimaryCopy:
    """A message on the primary as the index sees it."""

    folder: str
    uid: int
    flags: tuple[str, ...]
    key: str


@dataclass(frozen=True)
class Append:
    """One message to APPEND: raw bytes, flags and INTERNALDATE."""

    message: bytes
    flags: tuple[str, ...]
    date: datetime


def read_admin_password(config: Config) -> str:
    """The master user's password, checked like every secrets file; a problem with it is a
    PrimaryError, on which the sync agent retries its failback later instead of stopping."""
    try:
        return read_secret(config, "sync.password_file")
    except ConfigError as exc:
        raise PrimaryError(str(exc)) from None


def connect(config: Config, user: str, password: str) -> IMAPClient:
    """A session on the primary as ``user``, logged in as ``user*admin`` (Dovecot master user),
    over TLS as ``primary.tls`` says: the master password opens every mailbox."""
    endpoint = config.primary.imap
    sync = config.sync
    try:
        client = open_imap(endpoint, TLSPolicy.of(config, "primary"), sync.timeout_seconds)
    except TLSError as exc:
        raise PrimaryError(str(exc)) from None
    except (OSError, IMAPClientError) as exc:
        raise PrimaryError(f"primary IMAP {endpoint}: {exc}; is the primary up"
                           " (mailcontinuity status) and primary.imap right?") from None
    try:
        client.login(f"{user}{sync.master_user_separator}{sync.admin_login}", password)
    except IMAPClientError as exc:
        client.shutdown()
        raise PrimaryError(f"primary IMAP {endpoint}: login as {user} via {sync.admin_login}"
                           f" failed ({exc}); check sync.admin_login and sync.password_file")
    # Commands are sent in several writes (MULTIAPPEND literals); Nagle would hold the last.
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


class PrimaryMailbox:
    """One user's mailbox on the primary, and the index of its messages failback plans with."""

    def __init__(self, client: IMAPClient) -> None:
        self.client = client
        listing = client.list_folders()
        self.separator = next((str(sep, "ascii") if isinstance(sep, bytes) else sep
                               for _, sep, _ in listing if sep), IMAP_SEPARATOR)
        self.folders = {self._ours(name) for _, _, name in listing}
        self.selected: str | None = None

    def _ours(self, name: str) -> str:
        return name.replace(self.separator, IMAP_SEPARATOR)

    def _theirs(self, folder: str) -> str:
        return folder.replace(IMAP_SEPARATOR, self.separator)

    @property
    def capabilities(self) -> set[bytes]:
        return set(self.client.capabilities())

    def index(self, saved_since: date | None = None,
              whole: Iterable[str] = ()) -> dict[str, list[PrimaryCopy]]:
        """key -> copies in any folder.

        With ``saved_since`` (and a server with SAVEDATE, RFC 8514), only messages saved on the
        primary since that day are looked at, except in the ``whole`` folders: every copy of
        outage mail (a queued delivery, an earlier run's APPEND, COPY or MOVE) was saved after
        the outage began, so a primary holding years of history is not read in full.
        """
        if b"SAVEDATE" not in self.capabilities:
            saved_since = None
        index: dict[str, list[PrimaryCopy]] = defaultdict(list)
        for folder in sorted(self.folders):
            for copy in self.scan_folder(folder, None if folder in whole else saved_since):
                index[copy.key].append(copy)
        return index

    def scan_folder(self, folder: str, saved_since: date | None = None) -> list[PrimaryCopy]:
        self.select(folder)
        uids = self.client.search(["SAVEDSINCE", saved_since] if saved_since else ["ALL"])
        fetched: dict[int, dict[bytes, Any]] = {}
        for start in range(0, len(uids), FETCH_CHUNK):
            fetched |= self.client.fetch(uids[start:start + FETCH_CHUNK],
                                         ["FLAGS", "RFC822.SIZE", _HEADER_ITEM])
        copies = []
        for uid, data in fetched.items():
            headers = parse_headers(data.get(_HEADER_KEY) or b"")
            copies.append(PrimaryCopy(folder, int(uid), _str_flags(data[b"FLAGS"]),
                                      identity(headers, int(data[b"RFC822.SIZE"]))))
        return copies

    def select(self, folder: str) -> dict[bytes, Any]:
        self.selected = folder
        return self.client.select_folder(self._theirs(folder))

    def uidvalidity(self, folder: str) -> int:
        status = self.client.folder_status(self._theirs(folder), ["UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])

    def ensure_folder(self, folder: str) -> bool:
        """Create ``folder`` (and its parents) when missing; True if it was created."""
        if folder in self.folders:
            return False
        parts = folder.split(IMAP_SEPARATOR)
        for depth in range(1, len(parts) + 1):
            name = IMAP_SEPARATOR.join(parts[:depth])
            if name not in self.folders:
                try:
                    self.client.create_folder(self._theirs(name))
                except IMAPClientError as exc:
                    if b"ALREADYEXISTS" not in str(exc).encode():
                        raise
                self.client.subscribe_folder(self._theirs(name))
                self.folders.add(name)
        return True

    def append(self, folder: str, items: list[Append]) -> None:
        """APPEND ``items``: one MULTIAPPEND round trip when the server offers it.

        Raises IMAPClientError when the server refuses; a refused MULTIAPPEND stores nothing
        (it is atomic, RFC 3502).
        """
        name = self._theirs(folder)
        if len(items) > 1 and {b"MULTIAPPEND", b"LITERAL+"} <= self.capabilities:
            self._multiappend(name, items)
            return
        for item in items:
            self.client.append(name, item.message, flags=item.flags, msg_time=item.date)

    def _multiappend(self, name: str, items: list[Append]) -> None:
        """One MULTIAPPEND with LITERAL+ literals, each message sent as it is.

        Not imapclient's ``multiappend``: it copies every message twice before sending (the
        bulk of failback's own CPU time) and returns a NO instead of raising it, which would
        have checkpointed refused messages as appended. It uses the same imaplib internals as
        imapclient's own multi-literal commands.
        """
        imap = self.client._imap
        tag = imap._new_tag()
        imap.send(tag + b" APPEND " + self.client._normalise_folder(name))
        for item in items:
            flags = " ".join(item.flags).encode("ascii")
            date = datetime_to_INTERNALDATE(item.date).encode("ascii")
            imap.send(b' (%s) "%s" {%d+}\r\n' % (flags, date, len(item.message)))
            imap.send(item.message)
        imap.send(b"\r\n")
        status, data = imap._command_complete("APPEND", tag)
        if status != "OK":
            detail = b" ".join(part for part in data if isinstance(part, bytes))
            raise IMAPClientError(f"APPEND of {len(items)} messages to {name!r} refused:"
                                  f" {status} {detail.decode(errors='replace')}")

    def set_flags(self, folder: str, uid: int, add: tuple[str, ...],
                  remove: tuple[str, ...]) -> None:
        if self.selected != folder:
            self.select(folder)
        if add:
            self.client.add_flags([uid], list(add), silent=True)
        if remove:
            self.client.remove_flags([uid], list(remove), silent=True)

    def move(self, folder: str, uid: int, destination: str) -> None:
        if self.selected != folder:
            self.select(folder)
        self.client.move([uid], self._theirs(destination))

    def copy(self, folder: str, uid: int, destination: str) -> None:
        if self.selected != folder:
            self.select(folder)
        self.client.copy([uid], self._theirs(destination))

    def expunge(self, folder: str, uid: int) -> None:
        if self.selected != folder:
            self.select(folder)
        self.client.add_flags([uid], ["\\Deleted"], silent=True)
        self.client.uid_expunge([uid])

    def close(self) -> None:
        try:
            self.client.logout()
        except (OSError, IMAPClientError):  # the session is over either way
            pass


def _str_flags(flags: tuple[bytes | str, ...]) -> tuple[str, ...]:
    names = {flag.decode() if isinstance(flag, bytes) else flag for flag in flags}
    return tuple(sorted(names - SERVER_SET_FLAGS))
