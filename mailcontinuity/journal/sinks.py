"""Where the shipper puts journal copies: the standby's Maildirs, or its sieve-free LMTP.

A sink answers the same three ways for each copy of a message: stored (``shipped``), refused
for good (``unknown`` user or ``failed``), or ``TemporaryFailure`` (standby down, disk full
there): the shipper keeps the spool entry and retries that copy with backoff. A copy shipped
twice is stored once. The maildir sink derives the file name from the message id and looks
before it writes. The lmtp sink cannot look before it delivers; the journal index (written by
the shipper after each batch) says which copies are done, and for an entry seen before (a
restart, a retry) it asks the standby's doveadm, when it has one, whether the copy arrived before
the index was written. Without doveadm, a crash in that window delivers the copy again.
"""

from __future__ import annotations

import smtplib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mailcontinuity.config import Config, ConfigError, MilterSection
from mailcontinuity.journal.spool import Envelope, Target, iter_chunks
from mailcontinuity.journal.trace import COPY_FIELDS_AT, delivery_fields
from mailcontinuity.mail.doveadm import Doveadm, StandbyUnreachable, without_detail
from mailcontinuity.mail.maildir import (
    INBOX,
    MaildirError,
    MailOwner,
    deliver,
    ensure_folder,
    expand_template,
    find_delivered,
    folder_path,
    message_name,
    sync_file_system,
)
from mailcontinuity.mail.smtp import LmtpClient, Reply
from mailcontinuity.mail.tls import TLSError, TLSPolicy
from mailcontinuity.store.journal import CopyStatus

LMTP_LOCATION_PREFIX = "lmtp:"
FOLDER_CACHE_LIMIT = 100_000
DOVECOT_DELIMITER = "+"  # Dovecot's default recipient_delimiter


class TemporaryFailure(Exception):
    """The standby cannot take the copy now; retry later."""


@dataclass(frozen=True)
class Outcome:
    """The final fate of one journal copy."""

    status: CopyStatus
    location: str | None = None
    detail: str = ""


Result = Outcome | TemporaryFailure


class Sink(Protocol):
    def ship(self, source: int, offset: int, envelope: Envelope, targets: list[Target],
             recovered: bool) -> dict[Target, Result]:
        """Store copies; ``source`` holds the message in ``envelope.size`` bytes from ``offset``.

        ``recovered``: the entry was seen before (restart, retry), so a copy may already be
        stored. Raises TemporaryFailure when no copy could be tried at all.
        """
        ...

    def flush(self) -> None:
        """Make every copy stored since the last flush durable; the shipper calls it once per
        batch, before it records the copies. Raises TemporaryFailure if it cannot."""
        ...


def maildir_name(envelope: Envelope, prefix: bytes = b"") -> str:
    """The same name every time for one message: what makes a second shipping a no-op.
    ``prefix`` (CRLF lines written before the spooled bytes) counts in both sizes."""
    seconds = int(envelope.received)
    micros = int((envelope.received - seconds) * 1_000_000)
    return message_name(f"{seconds}.M{micros}Q{envelope.id}", envelope.size + len(prefix),
                        envelope.virtual_size + len(prefix))


def copy_prefix(envelope: Envelope, target: Target) -> bytes:
    """What Dovecot's LMTP adds when it delivers into an INBOX (the primary's copy has them):
    ``Return-Path`` always, ``Delivered-To`` only when the transaction had one recipient (it
    names nobody else's address then; Postfix delivers a message's recipients on one route in
    one transaction). None on a Sent copy: the primary gets that from the user's client."""
    if target.folder.upper() != INBOX:
        return b""
    inboxes = sum(1 for t in envelope.targets if t.folder.upper() == INBOX)
    return delivery_fields(envelope.sender, target.address if inboxes == 1 else None)


class StandbyUsers:
    """Which mailbox the standby delivers an address to (``Alice@``, ``alice+tag@`` and
    ``alice@`` are one user), asked of its own userdb, cached for a while."""

    def __init__(self, doveadm: Doveadm, cache_seconds: float) -> None:
        self._doveadm = doveadm
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[str | None, float]] = {}

    def mailbox_users(self, addresses: list[str]) -> dict[str, str | None]:
        """Address -> user (None: the standby has none), the ones not cached asked together
        (a message's recipients: one doveadm run, not one per recipient)."""
        now = time.monotonic()
        found: dict[str, str | None] = {}
        for address in addresses:
            user, expires = self._cache.get(address, (None, 0.0))
            if now < expires:
                found[address] = user
        unknown = [address for address in addresses if address not in found]
        if unknown:
            asked = self._doveadm.mailbox_users(unknown)
            expires = time.monotonic() + self._cache_seconds
            for address, user in asked.items():
                self._cache[address] = (user, expires)
            found.update(asked)
        return found


class MaildirSink:
    """Writes journal copies as files into the standby's Maildir++ folders.

    Copies are written without an fsync each; ``flush`` makes a whole batch durable with one
    ``syncfs`` per file system written to (2% of the milter's CPU under perf, against 15% for
    creating the copies' files, docs/benchmarks.md). Folders known to exist are remembered, so
    a copy costs no directory checks; a folder removed meanwhile is created again on the first
    failure.
    """

    def __init__(self, template: str, settings: MilterSection) -> None:
        self._template = template
        self._owner = MailOwner.parse(settings.mail_owner)
        self._users = StandbyUsers(Doveadm(settings.doveadm_config),
                                   settings.recipient_cache_seconds)
        self._folders: dict[tuple[str, str], tuple[Path, int]] = {}
        self._unsynced: dict[int, Path] = {}  # file system (st_dev) -> a folder written there

    def ship(self, source: int, offset: int, envelope: Envelope, targets: list[Target],
             recovered: bool) -> dict[Target, Result]:
        try:
            users = self._users.mailbox_users([target.address for target in targets])
        except StandbyUnreachable as exc:
            raise TemporaryFailure(str(exc)) from None
        results: dict[Target, Result] = {}
        for target in targets:
            try:
                results[target] = self._ship_one(source, offset, envelope, target,
                                                 users[target.address], recovered)
            except TemporaryFailure as exc:
                results[target] = exc
        return results

    def flush(self) -> None:
        while self._unsynced:
            device, folder = self._unsynced.popitem()
            try:
                sync_file_system(folder)
            except OSError as exc:
                self._unsynced[device] = folder
                raise TemporaryFailure(f"cannot sync {folder}: {exc}") from None

    def _ship_one(self, source: int, offset: int, envelope: Envelope, target: Target,
                  user: str | None, recovered: bool) -> Outcome:
        if user is None:
            return Outcome("unknown", detail="the standby has no such user")
        # The Maildir Dovecot reads for that user: one per user whatever the address form.
        folder, device = self._folder(user, target.folder)
        prefix = copy_prefix(envelope, target)
        name = maildir_name(envelope, prefix)
        # A record never tried before has no copy yet: its name is new (the id is unique).
        existing = find_delivered(folder, name) if recovered else None
        if existing is None:
            insert_at = int(envelope.extra.get(COPY_FIELDS_AT, 0))
            try:
                try:
                    existing = deliver(folder, name, source, envelope.size, self._owner,
                                       envelope.received, prefix, insert_at, start=offset,
                                       durable=False)
                except FileNotFoundError:  # the folder went since we created it
                    self._folders.pop((user, target.folder), None)
                    folder, device = self._folder(user, target.folder)
                    existing = deliver(folder, name, source, envelope.size, self._owner,
                                       envelope.received, prefix, insert_at, start=offset,
                                       durable=False)
            except OSError as exc:
                raise TemporaryFailure(f"cannot write {folder}: {exc}") from None
            detail = ""
        else:
            detail = "already stored"  # perhaps not durable yet: the next flush covers it
        self._unsynced.setdefault(device, folder)
        return Outcome("shipped", str(existing), detail)

    def _folder(self, user: str, folder_name: str) -> tuple[Path, int]:
        """The user's folder, created if missing, and its file system."""
        key = (user, folder_name)
        known = self._folders.get(key)
        if known is None:
            folder = folder_path(expand_template(self._template, user), folder_name)
            try:
                ensure_folder(folder, self._owner)
                device = folder.stat().st_dev
            except OSError as exc:
                raise TemporaryFailure(f"cannot create {folder}: {exc}") from None
            if len(self._folders) >= FOLDER_CACHE_LIMIT:
                self._folders.clear()
            known = self._folders[key] = (folder, device)
        return known


class LmtpSink:
    """Delivers journal copies to the standby's LMTP listener that runs no sieve.

    All copies of a message go in one transaction: a recipient per copy, ``user+Folder`` for a
    folder other than INBOX (the journal listener saves to the detail mailbox), and each
    recipient's own reply decides its copy: 2xx shipped, 550 5.1.1 unknown, other 5xx failed,
    4xx retried.
    """

    def __init__(self, settings: MilterSection, tls: TLSPolicy) -> None:
        if settings.lmtp is None:
            raise ConfigError(
                'milter.sink = "lmtp" needs milter.lmtp, the standby\'s sieve-free LMTP listener'
                ' (e.g. "127.0.0.2:24"; check-config prints the Dovecot settings for it)'
            )
        self._endpoint = settings.lmtp
        self._client = LmtpClient(settings.lmtp, tls)
        self._id_header = settings.id_header
        self._doveadm = Doveadm(settings.doveadm_config) if settings.doveadm_config else None

    def ship(self, source: int, offset: int, envelope: Envelope, targets: list[Target],
             recovered: bool) -> dict[Target, Result]:
        results: dict[Target, Result] = {}
        if recovered and self._doveadm is not None:
            results = self._already_stored(self._doveadm, envelope, targets)
        pending = {lmtp_recipient(t, self._delimiters()): t for t in targets
                   if t not in results}
        if not pending:
            return results
        try:
            replies = self._client.deliver(envelope.sender, list(pending),
                                           iter_chunks(source, offset, envelope.size))
        except (smtplib.SMTPException, OSError) as exc:
            raise TemporaryFailure(f"standby LMTP {self._endpoint}: {exc}") from None
        except TLSError as exc:  # kept in the spool until the certificate or CA is fixed
            raise TemporaryFailure(str(exc)) from None
        for recipient, reply in replies.items():
            results[pending[recipient]] = self._outcome(reply)
        return results

    def flush(self) -> None:
        """Nothing to do: the standby answered 250 only once it had stored the copy."""

    def _already_stored(self, doveadm: Doveadm, envelope: Envelope,
                        targets: list[Target]) -> dict[Target, Result]:
        found: dict[Target, Result] = {}
        for target in targets:
            try:
                if doveadm.journal_copies(target.address, target.folder, self._id_header,
                                                envelope.id):
                    found[target] = Outcome("shipped", self.location, "already stored")
            except StandbyUnreachable:
                continue  # cannot tell: deliver, a duplicate is better than a gap
        return found

    def _delimiters(self) -> str:
        """The standby's ``recipient_delimiter`` when doveadm can ask it, else Dovecot's
        default (``+``, which the journal listener's ``user+Folder`` relies on anyway)."""
        if self._doveadm is None:
            return DOVECOT_DELIMITER
        try:
            return self._doveadm.recipient_delimiters() or DOVECOT_DELIMITER
        except StandbyUnreachable:
            return DOVECOT_DELIMITER

    @property
    def location(self) -> str:
        return f"{LMTP_LOCATION_PREFIX}{self._endpoint}"

    def _outcome(self, reply: Reply) -> Result:
        if reply.accepted:
            return Outcome("shipped", self.location)
        if reply.temporary:
            return TemporaryFailure(f"standby LMTP {self._endpoint}: {reply}")
        if reply.code == 550 and "5.1.1" in reply.text:
            return Outcome("unknown", detail=str(reply))
        return Outcome("failed", detail=str(reply))


def lmtp_recipient(target: Target, delimiters: str = DOVECOT_DELIMITER) -> str:
    """INBOX is the address without its detail; another folder is ``local+Folder@domain``.

    The journal listener saves to the detail mailbox, so ``alice+tag@``'s copy would land in a
    folder ``tag`` (or ``tag+Sent``): the detail the sender wrote is dropped first (the
    primary's own delivery decides what a detail means; the journal keeps the user's INBOX)."""
    address = without_detail(target.address, delimiters)[-1]
    if target.folder.upper() == INBOX:
        return address
    local, at, domain = address.rpartition("@")
    return f"{local}+{target.folder}{at}{domain}"


def make_sink(config: Config) -> Sink:
    """The sink the configuration names."""
    settings = config.milter
    if settings.sink == "lmtp":
        return LmtpSink(settings, TLSPolicy.of(config, "standby"))
    try:
        return MaildirSink(config.standby.maildir, settings)
    except MaildirError as exc:
        raise ConfigError(f"{config.source}: {exc}") from None
