"""Internationalised mail (RFC 6531 SMTPUTF8): refused at SMTP time when its route cannot take it.

Postfix accepts SMTPUTF8 mail whatever the next hop offers, then bounces it with ``5.6.7
SMTPUTF8 is required, but was not offered`` when the next hop (Dovecot 2.3's LMTP, the lab's
primary and standby alike) lacks the extension: backscatter, and for the sender a bounce from a
server that said 250. Postfix never downgrades (SMTPUTF8_README) and no standard in use allows
an in-transit downgrade, so the only honest answers are "deliver" or "refuse while the client is
still connected". The milter asks these functions at RCPT (and, for header-only UTF-8, at end
of message) with the route Postfix resolved for the recipient.

What needs the extension (Postfix's own rule, verified in /work/research/smtputf8-security.md):
a non-ASCII envelope address, whether or not the client declared SMTPUTF8 (a UTF-8 local part
is refused by Dovecot's RCPT; an undeclared UTF-8 sender reaches the mailbox as ``<>``); and a
non-ASCII header when the client declared SMTPUTF8 (an undeclared 8-bit header is legacy mail
that Postfix delivers as before).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """An SMTP answer for mail its route cannot take."""

    code: str
    status: str
    text: str

    @property
    def temporary(self) -> bool:
        return self.code.startswith("4")

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


OUTAGE_REFUSAL = Refusal(
    "451", "4.6.7",
    "SMTPUTF8 mail cannot be delivered at the moment, please try again later")
"""During an outage (the recipient is routed to a standby without SMTPUTF8): temporary, the
sender's server keeps it and retries after failback. The text tells outsiders nothing about an
outage or a standby."""

PRIMARY_REFUSAL = Refusal(
    "550", "5.6.7",
    "SMTPUTF8 mail is not supported by the recipient's mail system")
"""In normal state, when the primary lacks SMTPUTF8: the answer the primary would give, now
rather than as a bounce after 250 (a retry could never succeed)."""


def needs_smtputf8(address: str) -> bool:
    """A non-ASCII address cannot cross a route without SMTPUTF8 unchanged."""
    return not address.isascii()


def route_refusal(to_standby: bool, primary_smtputf8: bool,
                  standby_smtputf8: bool) -> Refusal | None:
    """None when the recipient's route takes SMTPUTF8, else what to answer."""
    if to_standby:
        return None if standby_smtputf8 else OUTAGE_REFUSAL
    return None if primary_smtputf8 else PRIMARY_REFUSAL


def strongest(refusals: list[Refusal]) -> Refusal | None:
    """One answer for a whole message: temporary if any of its routes may take it later."""
    if not refusals:
        return None
    return next((r for r in refusals if r.temporary), refusals[0])
