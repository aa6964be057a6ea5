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
__all__ = ["DEFAULT_ID_HEADER", "FIELD_KEYS", "JOURNAL_HEADER", "SIZED_KEYS", "key_headers",
           "message_key", "message_keys", "parse_headers"]

SIZED_KEYS = 1
"""Key scheme of outages recorded before migration 13: Message-ID with RFC822.SIZE."""
FIELD_KEYS = 2
"""Key scheme of every outage since: Message-ID with a digest of ``DIGEST_FIELDS``, no size."""
# Fields an APPEND stores as they are and a client sets anew on each revision of a draft (the
# date of the save, the recipients): two versions of one Message-ID (a draft, then the copy
# sent) differ in them, and a server's re-encoding of the body cannot change them.
DIGEST_FIELDS = ("date", "from", "to", "cc", "subject")


def key_headers(id_header: str) -> tuple[str, ...]:
    """The headers a message key is computed from, as IMAP's HEADER.FIELDS names them."""
    return (id_header, JOURNAL_HEADER, "Message-ID", "Date", "From", "To", "Cc", "Subject")


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
        "to": value("To"),
        "cc": value("Cc"),
        "subject": value("Subject"),
    }


def _digest(headers: dict[str, str], names: tuple[str, ...], length: int) -> str:
    text = "\n".join(headers.get(name, "") for name in names)
    # 8-bit header bytes come back from the parser as surrogate escapes: hashed as they were.
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def message_key(headers: dict[str, str], size: int, scheme: int = FIELD_KEYS) -> str:
    """The key failback finds a message by on the primary, and the standby's copy of it.

    The id header the gateway puts on every message (``id:``), else, for what did not come
    through the gateway (a draft, a sent copy a client wrote on the standby):

    - ``FIELD_KEYS``: Message-ID with a digest of the ``DIGEST_FIELDS`` (``msg:``), else a
      digest of those fields alone (``fld:``). Never the size: Exchange reports an estimate
      as RFC822.SIZE (its own store's size), so the size the primary reports for a copy
      failback appended is not the size of the file it came from, and a re-run would append
      it again.
    - ``SIZED_KEYS``: Message-ID with ``size`` (``mid:``), else a digest of Date, From and
      Subject with ``size`` (``hdr:``): outages recorded before migration 13 keep the keys
      they were recorded with, on both sides, to the end of their merge.
    """
    if headers.get("id"):
        return f"id:{headers['id']}"
    if scheme == SIZED_KEYS:
        if headers.get("message-id"):
            return f"mid:{headers['message-id']}:{size}"
        return f"hdr:{_digest(headers, ('date', 'from', 'subject'), 32)}:{size}"
    if headers.get("message-id"):
        return f"msg:{headers['message-id']}:{_digest(headers, DIGEST_FIELDS, 16)}"
    return f"fld:{_digest(headers, DIGEST_FIELDS, 32)}"


def message_keys(headers: dict[str, str], size: int) -> tuple[str, ...]:
    """The message's key in every scheme (one for mail with the id header): to recognise it
    in the record of an outage recorded under another scheme."""
    return tuple(dict.fromkeys(message_key(headers, size, scheme)
                               for scheme in (FIELD_KEYS, SIZED_KEYS)))
