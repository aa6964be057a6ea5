"""IMAP sessions: connecting with TLS first, and one logged-in mailbox's operations.

Built on imapclient. One step is not imapclient's: MULTIAPPEND (RFC 3502) is sent here with
LITERAL+ literals, because imapclient's ``multiappend`` copies every message twice before sending
(the bulk of failback's own CPU time) and returns a NO instead of raising it, which would have
checkpointed refused messages as appended. That shim uses private parts of imaplib and imapclient
(``_imap``, ``_new_tag``, ``_command_complete``, ``_normalise_folder``): pyproject.toml pins
imapclient below its next minor version, and tests/unit/test_private_apis.py fails loudly when
one of these parts is gone.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from mailcontinuity.config import Endpoint
from mailcontinuity.mail.maildir import IMAP_SEPARATOR
from mailcontinuity.mail.tls import TLSPolicy

SERVER_SET_FLAGS = {"\\Recent"}
_COPYUID = re.compile(r"\[COPYUID \d+ \d+ (\d+)\]", re.IGNORECASE)
FETCH_CHUNK = 2000
# What the MULTIAPPEND shim takes from imaplib.IMAP4 and IMAPClient (see the module docstring).
PRIVATE_PARTS = {"imaplib.IMAP4": ("_new_tag", "_command_complete", "send"),
                 "imapclient.IMAPClient": ("_imap", "_normalise_folder")}


def open_imap(endpoint: Endpoint, tls: TLSPolicy, timeout: float) -> IMAPClient:
    """An IMAP connection, not logged in, encrypted as ``tls`` says before any password is sent.

    Raises TLSError for a missing STARTTLS or a failed handshake; OSError or IMAPClientError when
    the server cannot be reached at all."""
    try:
        client = IMAPClient(endpoint.host, endpoint.port, ssl=tls.implicit,
                            ssl_context=tls.context, timeout=timeout)
    except ssl.SSLError as exc:
        raise tls.explain("IMAP", endpoint, exc) from None
    if not tls.enabled or tls.implicit:
        return client
    try:
        if not client.has_capability("STARTTLS"):
            raise tls.no_starttls("IMAP", endpoint)
        client.starttls(tls.context)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # a failed handshake may have closed it already
            client.shutdown()
        if isinstance(exc, ssl.SSLError):
            raise tls.explain("IMAP", endpoint, exc) from None
        raise
    return client


@contextmanager
def imap_login(endpoint: Endpoint, login: str, password: str,
               tls: TLSPolicy | None = None) -> Iterator[IMAPClient]:
    """A session logged in as a user would; with ``tls``, encrypted first as a production client
    would be (without, only where the server treats the connection as secure: loopback)."""
    if tls is None:
        client = IMAPClient(endpoint.host, endpoint.port, ssl=False, timeout=30)
    else:
        client = open_imap(endpoint, tls, timeout=30)
    try:
        client.login(login, password)
        yield client
    finally:
        with contextlib.suppress(Exception):  # the server may already be gone; nothing to save
            client.logout()


# What a session that is gone raises: a reset, EOF, timeout or TLS failure (OSError, some wrapped
# by imaplib as "socket error: ..."), or the server's BYE (IMAPClientAbortError). Work cut short
# this way may or may not have been done: it is retried, never taken as the server's refusal,
# which is only a tagged NO or BAD (IMAPClientError).
CONNECTION_LOST = (OSError, IMAPClientAbortError)


@dataclass(frozen=True)
class Append:
    """One message to APPEND: raw bytes, flags and INTERNALDATE."""

    message: bytes
    flags: tuple[str, ...]
    date: datetime


def str_flags(flags: tuple[bytes | str, ...]) -> tuple[str, ...]:
    """Flags as sorted text, without the ones only the server sets."""
    names = {flag.decode() if isinstance(flag, bytes) else flag for flag in flags}
    return tuple(sorted(names - SERVER_SET_FLAGS))


class Mailbox:
    """One logged-in user's folders, in our folder names (``/`` separated) whatever the
    server's separator; every method raises IMAPClientError when the server refuses."""

    def __init__(self, client: IMAPClient) -> None:
        self.client = client
        # Commands are sent in several writes (MULTIAPPEND literals); Nagle would hold the last.
        with contextlib.suppress(OSError):
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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

    def select(self, folder: str) -> dict[bytes, Any]:
        self.selected = folder
        return self.client.select_folder(self._theirs(folder))

    def fetch(self, folder: str, items: list[str],
              saved_since: date | None = None) -> dict[int, dict[bytes, Any]]:
        """``items`` of every message in ``folder`` (saved since a day, with SAVEDATE), in
        bounded chunks."""
        self.select(folder)
        uids = self.client.search(["SAVEDSINCE", saved_since] if saved_since else ["ALL"])
        fetched: dict[int, dict[bytes, Any]] = {}
        for start in range(0, len(uids), FETCH_CHUNK):
            fetched |= self.client.fetch(uids[start:start + FETCH_CHUNK], items)
        return fetched

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
            multiappend(self.client, name, items)
            return
        for item in items:
            self.client.append(name, item.message, flags=item.flags, msg_time=item.date)

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

    def copy(self, folder: str, uid: int, destination: str) -> int:
        """COPY one message; returns its UID in ``destination``: from the server's COPYUID
        (UIDPLUS), else the UID that ``destination``'s UIDNEXT promised before the copy."""
        if self.selected != folder:
            self.select(folder)
        theirs = self._theirs(destination)
        promised = int(self.client.folder_status(theirs, ["UIDNEXT"])[b"UIDNEXT"])
        said = self.client.copy([uid], theirs)
        text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        match = _COPYUID.search(text)
        return int(match.group(1)) if match else promised

    def expunge(self, folder: str, uid: int) -> None:
        if self.selected != folder:
            self.select(folder)
        self.client.add_flags([uid], ["\\Deleted"], silent=True)
        self.client.uid_expunge([uid])

    def close(self) -> None:
        with contextlib.suppress(OSError, IMAPClientError):  # the session is over either way
            self.client.logout()


def multiappend(client: IMAPClient, folder: str, items: list[Append]) -> None:
    """One MULTIAPPEND with LITERAL+ literals, each message sent as it is (see the module
    docstring for why this is not imapclient's ``multiappend``)."""
    imap = client._imap
    tag = imap._new_tag()
    imap.send(tag + b" APPEND " + client._normalise_folder(folder))
    for item in items:
        flags = " ".join(item.flags).encode("ascii")
        when = datetime_to_INTERNALDATE(item.date).encode("ascii")
        imap.send(b' (%s) "%s" {%d+}\r\n' % (flags, when, len(item.message)))
        imap.send(item.message)
    imap.send(b"\r\n")
    status, data = imap._command_complete("APPEND", tag)
    if status != "OK":
        detail = b" ".join(part for part in data if isinstance(part, bytes))
        raise IMAPClientError(f"APPEND of {len(items)} messages to {folder!r} refused:"
                              f" {status} {detail.decode(errors='replace')}")
