"""The trace fields of a journal copy: what the primary's copy shows of the message's way in.

Postfix puts its own ``Received`` at the top of every message it accepts, but does not show it
to milters, so the journal copy would lack it. The milter rebuilds it from what Postfix tells
it (the macros ``main.cf`` asks for in ``milter_mail_macros``, see deploy/settings.py, and the
HELO name), in Postfix's own format with its default ``smtpd_tls_received_header = no`` and
``smtpd_sasl_authenticated_header = no``: from, by, with, id, for (one recipient only), date.

Not byte-identical in two cases a milter cannot see: a client that said HELO rather than EHLO
shows ``with ESMTP`` (Postfix writes ``SMTP``), and the date is taken when the milter hears
DATA (Postfix takes it as DATA starts: the same second, but for a slow client).

``Return-Path`` and ``Delivered-To`` are what the receiving Dovecot adds at delivery: the lmtp
sink's journal listener adds them itself, the maildir sink writes them (``delivery_fields``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

COPY_FIELDS_AT = "copy_fields_at"
"""The envelope's ``extra`` key: where a copy's own fields go in (after the journal stamp,
which stays first so that a reader finds it at once)."""


@dataclass
class TraceFacts:
    """What the milter learnt of one message's way in (empty strings when unknown)."""

    helo: str = ""
    client_name: str = ""
    client_addr: str = ""
    client_macro: str = ""
    """Postfix's ``_`` macro, ``name [addr]``: the fallback for name and address."""
    server: str = ""
    queue_id: str = ""
    smtputf8: bool = False
    tls: bool = False
    authenticated: bool = False
    recipients: tuple[str, ...] = ()
    received_at: float = 0.0


def protocol(facts: TraceFacts) -> str:
    """``with`` as Postfix writes it (RFC 3848, RFC 6531): ESMTP or UTF8SMTP, then S, A."""
    base = "UTF8SMTP" if facts.smtputf8 else "ESMTP"
    return base + ("S" if facts.tls else "") + ("A" if facts.authenticated else "")


def client_part(facts: TraceFacts) -> tuple[str, str]:
    """The client's verified name and address; from ``_`` when the macros were not sent."""
    name, addr = facts.client_name, facts.client_addr
    if (not name or not addr) and facts.client_macro:
        macro = facts.client_macro.removesuffix(" (may be forged)")
        found_name, _, bracketed = macro.partition(" [")
        name = name or found_name
        addr = addr or bracketed.removesuffix("]")
    return name or "unknown", addr


def received_field(facts: TraceFacts) -> bytes:
    """The gateway's ``Received`` field, CRLF-terminated and folded as Postfix folds it."""
    name, addr = client_part(facts)
    origin = f"{facts.helo or name} ({name} [{addr}])" if addr else (facts.helo or name)
    by = f"by {facts.server or 'localhost'} (Postfix) with {protocol(facts)}"
    if facts.queue_id:
        by += f" id {facts.queue_id}"
    when = _date(int(facts.received_at or time.time()))
    lines = [f"Received: from {origin}", f"\t{by}"]
    if len(facts.recipients) == 1:
        lines.append(f"\tfor <{facts.recipients[0]}>; {when}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{when}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """The date as Postfix writes it; messages accepted in the same second share the work."""
    return time.strftime("%a, %d %b %Y %H:%M:%S %z (%Z)", time.localtime(second))


def delivery_fields(sender: str, recipient: str | None) -> bytes:
    """``Return-Path`` and (given a recipient) ``Delivered-To`` as Dovecot's LMTP writes them."""
    fields = f"Return-Path: <{sender}>\r\n"
    if recipient is not None:
        fields += f"Delivered-To: {recipient}\r\n"
    return fields.encode("utf-8", "surrogateescape")
