"""The primary as failback and verify see it: each user's mailbox and an index of its messages.

Both look at the primary the same way: every message by the key ``mail.headers.message_key``
computes for standby files too (the configured id header, else Message-ID with a digest of
header fields, never the size some servers only estimate), so a copy that is already there
(delivered from Postfix's queue, appended by an interrupted run, or renumbered by a UIDVALIDITY
change) is recognised without trusting any UID kept from before.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from mailcontinuity.config import Config, ConfigError, read_secret
from mailcontinuity.mail.headers import FIELD_KEYS, key_headers, message_key, parse_headers
from mailcontinuity.mail.imap import FETCH_CHUNK, Mailbox, login_as, open_imap, str_flags
from mailcontinuity.mail.oauth2 import TokenError, oauth2_tokens
from mailcontinuity.mail.tls import TLSError, TLSPolicy

# Copies of older history are found by SEARCH HEADER while there are at most this many keys
# (per user and pass), ORed this many to a command; more keys: one FETCH per folder instead.
SEARCH_KEYS_MAX = 500
SEARCH_KEYS_PER_COMMAND = 50
# Without SAVEDATE, outage mail dated this long before the outage began is searched by its key,
# not found by the INTERNALDATE window (``PrimaryMailbox.window``).
ARRIVAL_MARGIN = 86400.0


class PrimaryError(Exception):
    """The primary cannot be reached or logged into; the message says what to check."""


@dataclass(frozen=True)
class PrimaryCopy:
    """A message on the primary as the index sees it."""

    folder: str
    uid: int
    flags: tuple[str, ...]
    key: str


def read_admin_password(config: Config) -> str:
    """The master user's password, checked like every secrets file; a problem with it is a
    PrimaryError, on which the sync agent retries its failback later instead of stopping."""
    try:
        return read_secret(config, "sync.password_file")
    except ConfigError as exc:
        raise PrimaryError(str(exc)) from None


class PrimaryMailbox(Mailbox):
    """One user's mailbox on the primary, and the index of its messages failback plans with;
    ``id_header`` is the configured ``milter.id_header``."""

    def __init__(self, client: IMAPClient, id_header: str) -> None:
        super().__init__(client)
        self.id_header = id_header

    def index(self, since: date | None = None, whole: Iterable[str] = (),
              keys: Iterable[str] = (), by: str = "SAVEDSINCE",
              scheme: int = FIELD_KEYS) -> dict[str, list[PrimaryCopy]]:
        """key -> copies in any folder, keyed in the outage's key ``scheme``.

        With ``since``, only messages the ``by`` search finds from that day are looked at,
        except in the ``whole`` folders: SAVEDSINCE (RFC 8514) where the server has SAVEDATE,
        else SINCE, the INTERNALDATE (``window``): every copy of outage mail (a queued
        delivery, an earlier run's APPEND, COPY or MOVE) was saved, or arrived, after the outage
        began, so a primary holding years of history is not read in full. The copies of
        ``keys`` (history that may be older: the user may have filed it anywhere before the
        outage) are found in every folder by their id (see ``key_searches``).
        """
        searches = key_searches(keys, self.id_header) if since else []
        index: dict[str, list[PrimaryCopy]] = defaultdict(list)
        for folder in sorted(self.folders):
            if folder in whole or searches is None:
                copies = self.scan_folder(folder, scheme=scheme)
            else:
                copies = self.scan_folder(folder, since, searches, by, scheme)
            for copy in copies:
                index[copy.key].append(copy)
        return index

    def window(self, started_at: float) -> tuple[date, str]:
        """(first day, search) that finds every copy of outage mail on the primary.

        With SAVEDATE: what was saved since the day before the outage began (the server's
        time zone may be a day off ours). Without it: what arrived (INTERNALDATE) since two
        days before; queued deliveries arrive after the outage began, failback's APPENDs
        carry the standby file's date (``merge._append_item``), and outage mail dated more
        than a day before the outage (a client may set any date on APPEND) is searched by
        its key instead (``plan.older_copies_needed``'s ``dated_before``)."""
        if b"SAVEDATE" in self.capabilities:
            return date.fromtimestamp(started_at) - timedelta(days=1), "SAVEDSINCE"
        return date.fromtimestamp(started_at - ARRIVAL_MARGIN) - timedelta(days=1), "SINCE"

    def scan_folder(self, folder: str, since: date | None = None,
                    searches: Sequence[list[Any]] = (), by: str = "SAVEDSINCE",
                    scheme: int = FIELD_KEYS) -> list[PrimaryCopy]:
        fields = " ".join(key_headers(self.id_header)).upper()
        reply_key = f"BODY[HEADER.FIELDS ({fields})]".encode()
        fetched = self.fetch(folder, ["FLAGS", "RFC822.SIZE",
                                      f"BODY.PEEK[HEADER.FIELDS ({fields})]"], since,
                             searches, by)
        copies = []
        for uid, data in fetched.items():
            headers = parse_headers(data.get(reply_key) or b"", self.id_header)
            copies.append(PrimaryCopy(folder, int(uid), str_flags(data[b"FLAGS"]),
                                      message_key(headers, int(data[b"RFC822.SIZE"]),
                                                  scheme)))
        return copies

    def read_uids(self, folder: str, uids: list[int]) -> list[tuple[PrimaryCopy, str]]:
        """The copies at ``uids`` of the folder selected now (for the follow pass, which
        EXAMINEs it), with their arrival day (INTERNALDATE), in bounded chunks."""
        fields = " ".join(key_headers(self.id_header)).upper()
        reply_key = f"BODY[HEADER.FIELDS ({fields})]".encode()
        items = ["FLAGS", "RFC822.SIZE", "INTERNALDATE", f"BODY.PEEK[HEADER.FIELDS ({fields})]"]
        found = []
        for start in range(0, len(uids), FETCH_CHUNK):
            for uid, data in self.client.fetch(uids[start:start + FETCH_CHUNK], items).items():
                headers = parse_headers(data.get(reply_key) or b"", self.id_header)
                found.append((PrimaryCopy(folder, int(uid), str_flags(data[b"FLAGS"]),
                                          message_key(headers, int(data[b"RFC822.SIZE"]))),
                              _arrival_day(data.get(b"INTERNALDATE"))))
        return found


def _arrival_day(internaldate: Any) -> str:
    return internaldate.date().isoformat() if internaldate is not None else ""


def key_searches(keys: Iterable[str], id_header: str) -> list[list[Any]] | None:
    """IMAP SEARCH criteria that find the messages of ``keys`` in a folder, at most
    ``SEARCH_KEYS_PER_COMMAND`` ids ORed in one command; None when one folder FETCH of the
    id headers is the better way (more than ``SEARCH_KEYS_MAX`` keys, or a key no header
    search can find: a digest of headers).

    Why SEARCH while the keys are few: one command per folder (per 50 ids) and only the hits
    come back, where a FETCH of the id header returns a line for every message of the folder
    (a 100,000-message Archive is megabytes per pass). With many keys the ORed searches cost
    the server as much as that FETCH, which is then bounded the same way: one per folder.
    A SEARCH HEADER matches substrings; every hit is checked against its key after the FETCH.
    """
    criteria: list[tuple[str, str]] = []
    for key in sorted(set(keys)):
        kind, _, rest = key.partition(":")
        if kind == "id":
            header, value = id_header, rest
        elif kind in ("msg", "mid"):  # Message-ID:digest, Message-ID:size (SIZED_KEYS)
            header, value = "Message-ID", rest.rpartition(":")[0]
        else:
            return None
        if not value or not value.isascii() or not value.isprintable() or '"' in value:
            return None
        criteria.append((header, value))
    if len(criteria) > SEARCH_KEYS_MAX:
        return None
    searches = []
    for start in range(0, len(criteria), SEARCH_KEYS_PER_COMMAND):
        chunk = criteria[start:start + SEARCH_KEYS_PER_COMMAND]
        searches.append(["OR"] * (len(chunk) - 1)
                        + [item for header, value in chunk for item in ("HEADER", header, value)])
    return searches


def connect(config: Config, user: str, password: str) -> PrimaryMailbox:
    """``user``'s mailbox on the primary, logged in with the admin's credentials as
    ``sync.login_method`` says, over TLS as ``primary.tls`` says."""
    endpoint = config.primary.imap
    sync = config.sync
    try:
        client = open_imap(endpoint, TLSPolicy.of(config, "primary"), sync.timeout_seconds)
    except TLSError as exc:
        raise PrimaryError(str(exc)) from None
    except (OSError, IMAPClientError) as exc:
        raise PrimaryError(f"primary IMAP {endpoint}: {exc}; is the primary up"
                           " (mailcontinuity status) and primary.imap right?") from None
    tokens = oauth2_tokens(config, password) if sync.login_method == "xoauth2" else None
    try:
        secret = tokens.token(user) if tokens is not None else password
        login_as(client, user, sync.login_method, sync.admin_login, secret,
                 sync.master_user_separator)
    except TokenError as exc:
        with contextlib.suppress(OSError):
            client.shutdown()
        raise PrimaryError(str(exc)) from None
    except (IMAPClientError, OSError) as exc:
        with contextlib.suppress(OSError):
            client.shutdown()
        if tokens is not None:
            tokens.forget(user, secret)  # revoked or rights changed: the next try asks again
            raise PrimaryError(f"primary IMAP {endpoint}: XOAUTH2 login as {user} with a token"
                               f" for client {sync.oauth2_client_id} failed ({exc}); check the"
                               " app's IMAP permission on the provider (Microsoft 365:"
                               " IMAP.AccessAsApp and a service principal allowed on the"
                               " mailbox) and sync.oauth2_scope") from None
        raise PrimaryError(f"primary IMAP {endpoint}: login as {user} via {sync.admin_login}"
                           f" ({sync.login_method}) failed ({exc}); check sync.login_method,"
                           " sync.admin_login and sync.password_file") from None
    return PrimaryMailbox(client, config.milter.id_header)
