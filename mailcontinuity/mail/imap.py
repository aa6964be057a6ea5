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
from collections.abc import Iterator, Sequence
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


LOGIN_METHODS = ("master_user", "sasl_plain", "xoauth2")


def login_as(client: IMAPClient, user: str, method: str, admin: str, password: str,
             master_separator: str = "*") -> None:
    """Log in to ``user``'s mailbox with an administrator's credentials: ``master_user`` is
    Dovecot's ``LOGIN user*admin``; ``sasl_plain`` is AUTHENTICATE PLAIN with the admin as
    authentication identity and ``user`` as authorization identity (RFC 4616), which Cyrus
    admins, Dovecot master users and other proxy-authentication setups accept; ``xoauth2`` is
    AUTHENTICATE XOAUTH2 with ``user`` and ``password`` as the access token (an app-only token
    opens any mailbox the app may reach; ``admin`` is not used).

    Raises IMAPClientError with the server's words when it refuses."""
    if method == "master_user":
        client.login(f"{user}{master_separator}{admin}", password)
    elif method == "sasl_plain":
        client.plain_login(admin, password, authorization_identity=user)
    elif method == "xoauth2":
        client.oauth2_login(user, password)
    else:
        raise ValueError(f"unknown login method {method!r}; one of {', '.join(LOGIN_METHODS)}")
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


# The standby's special folders, the SPECIAL-USE attribute (RFC 6154) that marks the primary's
# folder for the same use, and the names servers without SPECIAL-USE give them (Exchange,
# Gmail's localised-English layout, Apple/Thunderbird habits), in the order they are tried.
SPECIAL_FOLDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Sent": ("\\sent", ("Sent Items", "Sent Messages", "Sent Mail", "[Gmail]/Sent Mail",
                          "[Google Mail]/Sent Mail")),
    "Drafts": ("\\drafts", ("[Gmail]/Drafts", "[Google Mail]/Drafts")),
    "Junk": ("\\junk", ("Junk Email", "Junk E-mail", "Spam", "[Gmail]/Spam",
                          "[Google Mail]/Spam")),
    "Trash": ("\\trash", ("Deleted Items", "Deleted Messages", "[Gmail]/Trash", "[Gmail]/Bin",
                            "[Google Mail]/Trash", "[Google Mail]/Bin")),
    "Archive": ("\\archive", ("Archives",)),
}
# Folders that exist but hold no messages of their own (RFC 3501, RFC 5258).
UNSELECTABLE = {"\\noselect", "\\nonexistent"}
# A folder that shows every message again (Gmail's All Mail): never a copy of its own.
ALL_MAIL = "\\all"


Listing = list[tuple[tuple[bytes | str, ...], bytes | str | None, str]]
"""LIST's answer as imapclient gives it: (attributes, separator, name) per folder."""


class FolderNames:
    """A mailbox's folders in our names whatever the server's layout: ``/`` separated, without
    the personal NAMESPACE prefix (Cyrus' ``INBOX.``), and the standby's special folders
    (``Sent``...) standing for the server's folder for that use (found by SPECIAL-USE, else by
    known names: Exchange's ``Sent Items``, Gmail's ``[Gmail]/Sent Mail``).

    ``folders`` hold messages; ``unselectable`` ones (``\\Noselect``, ``\\NonExistent``) exist
    but are never selected nor created again; ``hidden`` ones are never looked at: All Mail
    (every message again, not a copy of its own) and a folder a special folder's alias shadows
    (a plain ``Sent`` beside the ``\\Sent`` folder ``Sent Items``)."""

    def __init__(self, listing: Listing, prefix: str = "") -> None:
        self.separator = next((_text(sep) for _, sep, _ in listing if sep), IMAP_SEPARATOR)
        self.prefix = prefix
        attributes = {name: {_text(flag).lower() for flag in flags}
                      for flags, _, name in listing}
        self.alias: dict[str, str] = {}
        """Standby folder -> the primary's folder for the same use, where the names differ."""
        plain = {self._plain(name): name for name in attributes}
        for folder, (use, known) in SPECIAL_FOLDERS.items():
            native = next((name for name, flags in sorted(attributes.items())
                           if use in flags and not flags & UNSELECTABLE), None)
            if native is None:
                native = next((plain[name] for name in known if name in plain), None)
            if native is not None and self._plain(native) != folder:
                self.alias[folder] = native
        self._alias_back = {native: folder for folder, native in self.alias.items()}
        self.hidden: set[str] = set()
        self.unselectable: set[str] = set()
        self.folders: set[str] = set()
        for name, flags in attributes.items():
            if ALL_MAIL in flags or (self._plain(name) in self.alias
                                     and name not in self._alias_back):
                self.hidden.add(name)
            elif flags & UNSELECTABLE:
                self.unselectable.add(self.ours(name))
            else:
                self.folders.add(self.ours(name))

    def _plain(self, name: str) -> str:
        """A server folder name without prefix and with our separator (no alias)."""
        if name.upper() == "INBOX":
            return "INBOX"
        if self.prefix and name.startswith(self.prefix):
            name = name[len(self.prefix):]
        return name.replace(self.separator, IMAP_SEPARATOR)

    def ours(self, name: str) -> str:
        """Our name of the server's folder ``name``."""
        return self._alias_back.get(name) or self._plain(name)

    def theirs(self, folder: str) -> str:
        """The server's name of our ``folder``."""
        if folder in self.alias:
            return self.alias[folder]
        if folder.upper() == "INBOX":
            return "INBOX"
        return self.prefix + folder.replace(IMAP_SEPARATOR, self.separator)


class Mailbox:
    """One logged-in user's folders, named as FolderNames says, and their messages; every
    method raises IMAPClientError when the server refuses."""

    def __init__(self, client: IMAPClient) -> None:
        self.client = client
        # Commands are sent in several writes (MULTIAPPEND literals); Nagle would hold the last.
        with contextlib.suppress(OSError):
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.names = FolderNames(client.list_folders(), personal_prefix(client))
        self.folders = self.names.folders
        self.unselectable = self.names.unselectable
        self.ours = self.names.ours
        self.theirs = self.names.theirs
        self.selected: str | None = None

    @property
    def capabilities(self) -> set[bytes]:
        return set(self.client.capabilities())

    @property
    def append_limit(self) -> int | None:
        """The largest message the server accepts (APPENDLIMIT=N, RFC 7889), if it says."""
        for capability in self.capabilities:
            name, _, value = capability.partition(b"=")
            if name.upper() == b"APPENDLIMIT" and value.isdigit():
                return int(value)
        return None

    def select(self, folder: str) -> dict[bytes, Any]:
        self.selected = folder
        return self.client.select_folder(self.theirs(folder))

    def fetch(self, folder: str, items: list[str], since: date | None = None,
              also: Sequence[list[Any]] = (), by: str = "SAVEDSINCE"
              ) -> dict[int, dict[bytes, Any]]:
        """``items`` of every message in ``folder`` (with ``since``: only those the ``by``
        search finds from that day, SAVEDSINCE with SAVEDATE or SINCE (INTERNALDATE), and
        those each of the ``also`` SEARCH criteria finds), in bounded chunks."""
        self.select(folder)
        found = set(self.client.search([by, since] if since else ["ALL"]))
        for criteria in also if since else ():
            found.update(self.client.search(criteria))
        uids = sorted(found)
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
            if name not in self.folders and name not in self.unselectable:
                try:
                    self.client.create_folder(self.theirs(name))
                except IMAPClientError as exc:
                    if b"ALREADYEXISTS" not in str(exc).encode():
                        raise
                self.client.subscribe_folder(self.theirs(name))
                self.folders.add(name)
        return True

    def append(self, folder: str, items: list[Append]) -> None:
        """APPEND ``items``: one MULTIAPPEND round trip when the server offers it.

        Raises IMAPClientError when the server refuses; a refused MULTIAPPEND stores nothing
        (it is atomic, RFC 3502).
        """
        name = self.theirs(folder)
        limit = self.append_limit
        if limit is not None and any(len(item.message) > limit for item in items):
            if len(items) == 1:
                raise IMAPClientError(f"APPEND to {folder!r} not sent: the message has"
                                      f" {len(items[0].message)} bytes, above the primary's"
                                      f" APPENDLIMIT of {limit}")
            raise IMAPClientError("a message of this batch is above the primary's APPENDLIMIT")
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
        """MOVE (RFC 6851); without it COPY, then ``\\Deleted`` and an expunge of that one
        message (see ``expunge``)."""
        if self.selected != folder:
            self.select(folder)
        if b"MOVE" in self.capabilities:
            self.client.move([uid], self.theirs(destination))
            return
        self.client.copy([uid], self.theirs(destination))
        self.expunge(folder, uid)

    def copy(self, folder: str, uid: int, destination: str) -> int:
        """COPY one message; returns its UID in ``destination``: from the server's COPYUID
        (UIDPLUS), else the UID that ``destination``'s UIDNEXT promised before the copy."""
        if self.selected != folder:
            self.select(folder)
        theirs = self.theirs(destination)
        promised = int(self.client.folder_status(theirs, ["UIDNEXT"])[b"UIDNEXT"])
        said = self.client.copy([uid], theirs)
        text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        match = _COPYUID.search(text)
        return int(match.group(1)) if match else promised

    def expunge(self, folder: str, uid: int) -> None:
        """Remove one message: UID EXPUNGE (UIDPLUS); without UIDPLUS a plain EXPUNGE, which
        also removes what the user had marked ``\\Deleted`` in that folder and not yet
        expunged (RFC 3501 offers nothing narrower)."""
        if self.selected != folder:
            self.select(folder)
        self.client.add_flags([uid], ["\\Deleted"], silent=True)
        if b"UIDPLUS" in self.capabilities:
            self.client.uid_expunge([uid])
        else:
            self.client.expunge()

    def close(self) -> None:
        with contextlib.suppress(OSError, IMAPClientError):  # the session is over either way
            self.client.logout()


_BACKOFF = re.compile(r"Suggested Backoff Time:\s*(\d+)\s*milliseconds", re.IGNORECASE)
_THROTTLED = re.compile(r"\[(THROTTLED|UNAVAILABLE|LIMIT)\]|\bthrottl|too many|rate limit",
                        re.IGNORECASE)


def backoff_hint(said: str, attempt: int) -> float | None:
    """Seconds to wait before trying again when the server's refusal ``said`` is throttling
    (Exchange Online's "Suggested Backoff Time: N milliseconds", Gmail's ``[THROTTLED]``,
    RFC 5530's ``[UNAVAILABLE]``/``[LIMIT]``), else None: a refusal to report, not retry.
    Without a hint, 1, 2, 4... seconds by ``attempt``, at most 60."""
    suggested = _BACKOFF.search(said)
    if suggested:
        return min(int(suggested.group(1)) / 1000, 60.0)
    if _THROTTLED.search(said):
        return float(min(2 ** attempt, 60))
    return None


def personal_prefix(client: IMAPClient) -> str:
    """The personal NAMESPACE's prefix (RFC 2342), e.g. Cyrus' ``INBOX.``; empty without
    NAMESPACE or when the server has none."""
    if not client.has_capability("NAMESPACE"):
        return ""
    personal = client.namespace().personal
    if not personal:
        return ""
    prefix = personal[0][0]
    return _text(prefix)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
