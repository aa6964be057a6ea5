"""Where the shipper puts journal copies: straight into the standby's Maildirs.

(An LMTP sink to the standby's sieve-free journal listener is planned, not built yet.) A sink
answers the same three ways for one copy: stored (``shipped``), refused for good
(``unknown`` user or ``failed``), or ``TemporaryFailure`` (standby down, disk full there): the
shipper keeps the spool entry and retries with backoff. A copy stored twice is stored once:
the maildir sink derives the file name from the message id and looks before it writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mailcontinuity.commands import CommandError, run_command
from mailcontinuity.config import ConfigError, MilterSection
from mailcontinuity.maildir import (
    MaildirError,
    MailOwner,
    deliver,
    expand_template,
    find_delivered,
    folder_dir,
    message_name,
)
from mailcontinuity.milter.index import CopyStatus
from mailcontinuity.milter.spool import Envelope, Target

DOVEADM_NO_SUCH_USER = 67  # EX_NOUSER; 75 (EX_TEMPFAIL) means auth could not be asked


class TemporaryFailure(Exception):
    """The standby cannot take the copy now; retry later."""


@dataclass(frozen=True)
class Outcome:
    """The final fate of one journal copy."""

    status: CopyStatus
    location: str | None = None
    detail: str = ""


class Sink(Protocol):
    def ship(self, source: int, envelope: Envelope, target: Target, recovered: bool) -> Outcome:
        """Store one copy; ``source`` holds the message in its first ``envelope.size`` bytes.

        ``recovered``: the entry was seen before (restart, retry), so this copy may already be
        stored.
        """
        ...


class StandbyUsers:
    """Whether the standby knows a mailbox, asked of its own userdb (``doveadm user``), cached."""

    def __init__(self, doveadm_config: Path | None, cache_seconds: float) -> None:
        self._config = ["-c", str(doveadm_config)] if doveadm_config else []
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[bool, float]] = {}

    def knows(self, address: str) -> bool:
        known, expires = self._cache.get(address, (False, 0.0))
        if time.monotonic() < expires:
            return known
        try:
            run_command(["doveadm", *self._config, "user", "-f", "uid", address], timeout=30,
                        missing_hint="install dovecot-core on the milter host")
            known = True
        except CommandError as exc:
            if exc.returncode != DOVEADM_NO_SUCH_USER:
                raise TemporaryFailure(f"standby userdb lookup failed: {exc}") from None
            known = False
        self._cache[address] = (known, time.monotonic() + self._cache_seconds)
        return known


def maildir_name(envelope: Envelope) -> str:
    """The same name every time for one message: what makes a second shipping a no-op."""
    seconds = int(envelope.received)
    micros = int((envelope.received - seconds) * 1_000_000)
    return message_name(f"{seconds}.M{micros}Q{envelope.id}", envelope.size,
                        envelope.virtual_size)


class MaildirSink:
    """Writes journal copies as files into the standby's Maildir++ folders."""

    def __init__(self, settings: MilterSection) -> None:
        self._template = settings.maildir
        self._owner = MailOwner.parse(settings.mail_owner)
        self._users = StandbyUsers(settings.doveadm_config, settings.recipient_cache_seconds)

    def ship(self, source: int, envelope: Envelope, target: Target, recovered: bool) -> Outcome:
        if not self._users.knows(target.address):
            return Outcome("unknown", detail="the standby has no such user")
        folder = folder_dir(expand_template(self._template, target.address), target.folder)
        name = maildir_name(envelope)
        existing = (find_delivered(folder, name) if recovered
                    else _existing(folder / "new" / name))
        if existing is not None:
            return Outcome("shipped", str(existing), "already stored")
        try:
            path = deliver(folder, name, source, envelope.size, self._owner, envelope.received)
        except OSError as exc:
            raise TemporaryFailure(f"cannot write {folder}: {exc}") from None
        return Outcome("shipped", str(path))


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def make_sink(settings: MilterSection) -> Sink:
    """The sink the configuration names."""
    if settings.sink != "maildir":
        raise ConfigError(
            f"milter.sink = {settings.sink!r} is not available in this version; use \"maildir\""
            " (the standby's Maildirs must then be reachable from the milter host)"
        )
    try:
        return MaildirSink(settings)
    except MaildirError as exc:
        raise ConfigError(f"[milter]: {exc}") from None
