"""The milter callbacks: stamp every accepted message with an id, spool its journal copies.

libmilter runs callbacks on a worker pool, one connection's callbacks in sequence, possibly on
different threads: per-message state lives on the instance, shared things (the spool, the
shipper's queue) are thread-safe. An exception escaping a callback would make libmilter tempfail
the mail, so every callback is wrapped (``guarded``) and production mail keeps flowing.

The hot path is kept short on purpose: headers, body chunks and end-of-header are negotiated as
no-reply (Postfix does not wait for them), connect/helo are not called at all, nothing is logged
per chunk, and only end-of-message waits, for the group commit that makes the copy durable
(journal/spool.py: messages finishing together share one fdatasync).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import Milter

from mailcontinuity.deploy.senders import SenderOwners
from mailcontinuity.journal.international import (
    Refusal,
    needs_smtputf8,
    route_refusal,
    strongest,
)
from mailcontinuity.journal.spool import Envelope, Spool, SpoolWriter, Target, new_message_id
from mailcontinuity.journal.trace import COPY_FIELDS_AT, TraceFacts, received_field
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.mail.maildir import INBOX

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
SENT_FOLDER = "Sent"


@dataclass(frozen=True)
class JournalPolicy:
    """What the callbacks need to decide, built once from the config."""

    id_header: str
    protected_domains: frozenset[str]
    standby_nexthops: frozenset[str]
    """``{rcpt_host}`` values meaning "Postfix already routes this recipient to the standby"."""
    tempfail_on_spool_error: bool
    primary_smtputf8: bool = False
    standby_smtputf8: bool = False
    """Whether each route offers SMTPUTF8 (``primary.smtputf8``, ``standby.smtputf8``)."""
    senders: SenderOwners | None = None
    """Who owns which address: a logged-in user's From: must be theirs (None: not checked)."""

    @property
    def stamp_fields(self) -> frozenset[str]:
        """The stamp's field names, lower case: never trusted from the sender."""
        return _stamp_fields(self.id_header)


@functools.cache
def _stamp_fields(id_header: str) -> frozenset[str]:
    return frozenset({id_header.lower(), JOURNAL_HEADER.lower()})


class SpoolErrorCounter:
    """Counts spool failures and reports them to the state store (status shows the alarm)."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self._report = report
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self, error: BaseException) -> None:
        with self._lock:
            self.count += 1
        log.error("event=spool_error error=%r action=see milter.on_spool_error", str(error))
        try:
            self._report(str(error))
        except Exception:
            log.exception("event=spool_error_report_failed")


@dataclass
class JournalRuntime:
    """Process-wide collaborators shared by every connection."""

    policy: JournalPolicy
    spool: Spool
    spool_error: Callable[[BaseException], None]


def guarded(func: F) -> F:
    """Never let an exception reach libmilter (it would tempfail the mail): log and continue."""

    @wraps(func)
    def wrapper(self: JournalMilter, *args: Any) -> Any:
        try:
            return func(self, *args)
        except Exception as exc:
            log.exception("event=callback_error callback=%s queue_id=%s", func.__name__,
                          self.getsymval("i") if self._ctx else "")
            self.abandon_journal(exc)
            return Milter.CONTINUE

    return wrapper  # type: ignore[return-value]


@Milter.header_leading_space
class JournalMilter(Milter.Base):
    """One SMTP connection; attributes never share a name with a callback (``body``...)."""

    def __init__(self, runtime: JournalRuntime) -> None:
        self.runtime = runtime
        self.helo = ""
        self.reset_message()

    def reset_message(self) -> None:
        self.message_id = ""
        self.sender = ""
        self.targets: list[Target] = []
        self.writer: SpoolWriter | None = None
        self.spool_failure: BaseException | None = None
        self.foreign_headers: dict[str, int] = {}
        self.smtputf8 = False
        self.sender_utf8 = False
        self.header_utf8 = False
        self.utf8_refusals: list[Refusal] = []
        """Accepted recipients whose route lacks SMTPUTF8: a UTF-8 header refuses the message."""
        self.trace = TraceFacts()
        self.stamp_length = 0
        self.login = ""
        self.from_values: list[str] = []

    def abandon_journal(self, error: BaseException | None) -> None:
        """Stop journaling this message (the mail itself still goes through)."""
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
        if error is not None and self.spool_failure is None:
            self.spool_failure = error
            self.runtime.spool_error(error)

    @Milter.noreply
    @guarded
    def hello(self, name: str) -> int:
        """Only for the journal copy's Received field (no macro carries the HELO name)."""
        self.helo = name
        return Milter.CONTINUE

    @Milter.noreply
    @guarded
    def data(self) -> int:
        """Where Postfix dates its Received field; its queue id arrives with this event."""
        self.trace.received_at = time.time()
        self.trace.queue_id = self.getsymval("i") or ""
        return Milter.CONTINUE

    @Milter.noreply
    @guarded
    def envfrom(self, sender: str, *params: str) -> int:
        self.abandon_journal(None)
        self.reset_message()
        self.message_id = new_message_id(time.time())
        self.sender = sender.strip("<>")
        self.smtputf8 = any(param.upper() == "SMTPUTF8" for param in params)
        self.sender_utf8 = needs_smtputf8(self.sender)
        self._remember_trace_macros()
        login = self.login = self.getsymval("{auth_authen}") or ""
        # Mail the standby's submission relays with XCLIENT: the user's client saved its Sent
        # copy on the standby already.
        if login and self.getsymval("{auth_type}") != "XCLIENT":
            mailbox = login if "@" in login else self.sender
            if self._is_protected(mailbox):
                self.targets.append(Target(_normalise(mailbox), SENT_FOLDER))
        return Milter.CONTINUE

    @guarded
    def envrcpt(self, recipient: str, *params: str) -> int:
        """The one callback besides eom that answers: mail for this recipient that its route
        cannot carry (SMTPUTF8) is refused now, never accepted and bounced."""
        address = _normalise(recipient.strip("<>"))
        if not self._is_protected(address):
            self.trace.recipients += (recipient.strip("<>"),)
            return Milter.CONTINUE
        to_standby = self._routed_to_standby()
        refusal = route_refusal(to_standby, self.runtime.policy.primary_smtputf8,
                                self.runtime.policy.standby_smtputf8)
        if refusal is not None:
            if self.sender_utf8 or needs_smtputf8(address):
                return self._refuse(refusal, "rcpt", address)
            if self.smtputf8:
                self.utf8_refusals.append(refusal)
        self.trace.recipients += (recipient.strip("<>"),)
        if to_standby:
            return Milter.CONTINUE
        target = Target(address, INBOX)
        if target not in self.targets:
            self.targets.append(target)
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    @guarded
    def header(self, name: str, value: bytes) -> int:
        if self.utf8_refusals and not (name.isascii() and value.isascii()):
            self.header_utf8 = True
        lowered = name.lower()
        if lowered == "from" and self.login:
            self.from_values.append(value.decode("utf-8", "replace"))
        if lowered in self.runtime.policy.stamp_fields:
            # Remembered so that eom() deletes each occurrence: a forged id is never trusted.
            self.foreign_headers[lowered] = self.foreign_headers.get(lowered, 0) + 1
            return Milter.CONTINUE
        writer = self._journal_writer()
        if writer is not None:
            # With P_HDR_LEADSPC the value keeps its exact leading space and folding.
            if b"\n" in value:
                value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            self._write(writer, b"%s:%s\r\n" % (name.encode("utf-8", "surrogateescape"), value))
        return Milter.CONTINUE

    @Milter.noreply
    @guarded
    def eoh(self) -> int:
        writer = self._journal_writer()
        if writer is not None:
            self._write(writer, b"\r\n")
        return Milter.CONTINUE

    @Milter.noreply
    @guarded
    def body(self, chunk: bytes) -> int:
        if self.writer is not None:
            self._write(self.writer, chunk)
        return Milter.CONTINUE

    @guarded
    def eom(self) -> int:
        refusal = strongest(self.utf8_refusals) if self.header_utf8 else None
        if refusal is not None:  # before anything is journaled: no copy of refused mail
            self.abandon_journal(None)
            return self._refuse(refusal, "eom", self.sender)
        senders = self.runtime.policy.senders
        foreign = senders.foreign_from(self.login, self.from_values) if (
            senders is not None and self.login) else []
        if foreign:
            log.warning("event=sender_refused login=%s from=%s queue_id=%s", self.login,
                        ",".join(foreign), self.getsymval("i") or "")
            self.abandon_journal(None)
            self.setreply("550", "5.7.1", f"From: header {', '.join(foreign)} not owned by"
                          f" {self.login}")
            return Milter.REJECT
        for name, count in self.foreign_headers.items():
            for index in range(count, 0, -1):  # last first: earlier indexes stay valid
                self.chgheader(name, index, "")
        # At the top (index 0), not after a header block that may run to megabytes: whoever
        # reads the primary's copy finds the id in its first lines.
        self.addheader(self.runtime.policy.id_header, f" {self.message_id}", 0)
        if self.writer is not None:
            writer, self.writer = self.writer, None
            envelope = Envelope(self.message_id, time.time(), self.sender,
                                self.getsymval("i") or "", self.targets,
                                extra={COPY_FIELDS_AT: str(self.stamp_length)})
            try:
                writer.commit(envelope)  # returns once durable; the spool tells the shipper
            except OSError as exc:
                writer.discard()
                self.abandon_journal(exc)
        if self.spool_failure is not None and self.runtime.policy.tempfail_on_spool_error:
            self.setreply("451", "4.3.0", "Journal spool unavailable, try again later")
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    @guarded
    def abort(self) -> int:
        self.abandon_journal(None)
        self.reset_message()
        return Milter.CONTINUE

    @guarded
    def close(self) -> int:
        self.abandon_journal(None)
        return Milter.CONTINUE

    def _refuse(self, refusal: Refusal, stage: str, address: str) -> int:
        log.info("event=smtputf8_refused stage=%s address=%r sender=%r reply=%r", stage,
                 address, self.sender, str(refusal))
        self.setreply(refusal.code, refusal.status, refusal.text)
        return Milter.TEMPFAIL if refusal.temporary else Milter.REJECT

    def _journal_writer(self) -> SpoolWriter | None:
        """The spool file of this message, opened at its first header with the stamp (id and
        journal headers) written first, so that a reader finds them whatever the size of the
        header block that follows; None when not journaled."""
        if self.writer is None and self.targets and self.spool_failure is None:
            try:
                self.writer = self.runtime.spool.open_message(self.message_id)
            except OSError as exc:
                self.abandon_journal(exc)
                return None
            self._write(self.writer, (f"{self.runtime.policy.id_header}: {self.message_id}\r\n"
                                      f"{JOURNAL_HEADER}: yes\r\n").encode("ascii"))
            if self.writer is not None:  # the copy's own fields go after the stamp
                self.stamp_length = self.writer.size
                self._write(self.writer, received_field(self._trace_facts()))
        return self.writer

    def _remember_trace_macros(self) -> None:
        """Postfix's macros for the Received field (``milter_mail_macros``), read at MAIL."""
        facts, symbol = self.trace, self.getsymval
        facts.smtputf8 = self.smtputf8
        facts.client_name = symbol("{client_name}") or ""
        facts.client_addr = symbol("{client_addr}") or ""
        facts.client_macro = symbol("_") or ""
        facts.server = symbol("j") or ""
        facts.tls = bool(symbol("{tls_version}"))
        facts.authenticated = bool(symbol("{auth_type}"))

    def _trace_facts(self) -> TraceFacts:
        self.trace.helo = self.helo
        return self.trace

    def _write(self, writer: SpoolWriter, data: bytes) -> None:
        try:
            writer.write(data)
        except OSError as exc:
            self.abandon_journal(exc)

    def _is_protected(self, address: str) -> bool:
        return address.rpartition("@")[2].lower() in self.runtime.policy.protected_domains

    def _routed_to_standby(self) -> bool:
        """During failover Postfix already delivers this recipient to the standby."""
        nexthop = (self.getsymval("{rcpt_host}") or "").removeprefix("inet:")
        return nexthop in self.runtime.policy.standby_nexthops


def _normalise(address: str) -> str:
    """Domains are case-insensitive; the local part is kept as the sender wrote it."""
    local, at, domain = address.rpartition("@")
    return f"{local}{at}{domain.lower()}" if at else address

