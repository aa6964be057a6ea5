"""The headers mailcontinuity puts on mail and reads back, and the key a message is known by.

- The id header (``milter.id_header``, ``X-Mailcontinuity-Id`` unless configured otherwise) goes
  on every message the gateway accepts and travels with it to the primary and the standby alike:
  failback recognises copies of one message by it. One that arrives from outside is removed and
  replaced, never trusted. Every reader takes the configured name: with another header
  configured, an ``X-Mailcontinuity-Id`` any sender can set means nothing.
- The journal header goes only on journal copies in the standby (the history kept in normal
  times); such copies are never recorded as outage activity and never merged back.

The standby's files and the primary's IMAP index are keyed by the same ``message_key``, so a
copy found on either side is recognised on the other.
"""

from __future__ import annotations

import hashlib
from email.parser import BytesHeaderParser
from email.policy import compat32

from mailcontinuity.config import DEFAULT_ID_HEADER

JOURNAL_HEADER = "X-Mailcontinuity-Journal"
__all__ = ["DEFAULT_ID_HEADER", "JOURNAL_HEADER", "key_headers", "message_key", "parse_headers"]


def key_headers(id_header: str) -> tuple[str, ...]:
    """The headers a message key is computed from, as IMAP's HEADER.FIELDS names them."""
    return (id_header, JOURNAL_HEADER, "Message-ID", "Date", "From", "Subject")


def parse_headers(block: bytes, id_header: str) -> dict[str, str]:
    """The identity headers of a message header block (unfolded, stripped); ``id_header`` is
    the configured ``milter.id_header``."""
    message = BytesHeaderParser(policy=compat32).parsebytes(block)

    def value(name: str) -> str:
        raw = message.get(name)
        return " ".join(str(raw).split()) if raw is not None else ""

    return {
        "id": value(id_header),
        "is_journal": "1" if JOURNAL_HEADER in message else "",
        "message-id": value("Message-ID"),
        "date": value("Date"),
        "from": value("From"),
        "subject": value("Subject"),
    }


def message_key(headers: dict[str, str], size: int) -> str:
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
