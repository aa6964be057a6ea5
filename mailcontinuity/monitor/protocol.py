"""Postfix's SMTP access policy delegation protocol, on the wire (SMTPD_POLICY_README).

A request is ``name=value`` lines ended by an empty line; the reply is one ``action=...`` line
plus an empty line. These are pure functions on bytes, apart from the server's I/O, so that the
framing is tested on its own and the server never has to reason about bytes.
"""

from __future__ import annotations

REQUEST_END = b"\n\n"
"""Postfix ends every request with an empty line; the server reads up to this."""

DUNNO = "DUNNO"
"""Neither accept nor reject: Postfix goes on with its next restriction."""

POLICY_REQUEST = "smtpd_access_policy"

ACTION_KINDS = ("DUNNO", "OK", "REJECT", "DEFER", "other")
"""What a reply amounts to, for counting: few values, whatever text follows the code."""


class ProtocolError(ValueError):
    """A request block that is not ``name=value`` lines; the message says which line."""


def parse_request(block: bytes) -> dict[str, str]:
    """Attributes of one request block (the bytes up to and including the empty line).

    Values are decoded as UTF-8 with ``surrogateescape``: Postfix passes what the SMTP client
    sent, which need not be UTF-8, and an undecodable byte must not cost a reply. Empty lines
    are skipped (a stray extra newline between requests is harmless); unknown names are kept,
    as the protocol asks, and ignored by whoever does not need them.
    """
    attributes: dict[str, str] = {}
    for number, raw in enumerate(block.split(b"\n"), start=1):
        line = raw.removesuffix(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b"=")
        if not sep or not name or not name.isascii() or not name.replace(b"_", b"").isalnum():
            shown = line[:60].decode("ascii", errors="backslashreplace")
            raise ProtocolError(f"line {number} is not name=value: {shown!r}")
        attributes[name.decode("ascii")] = value.decode("utf-8", errors="surrogateescape")
    return attributes


def format_reply(action: str) -> bytes:
    """The reply block for ``action`` (an access(5) action such as ``DUNNO`` or ``550 ...``)."""
    if not action or "\n" in action or "\r" in action:
        raise ValueError(f"a policy action is one non-empty line, got {action!r}")
    return f"action={action}\n\n".encode("utf-8", errors="surrogateescape")


def action_kind(action: str) -> str:
    """``DUNNO``, ``OK``, ``REJECT`` (5xx or REJECT), ``DEFER`` (4xx, DEFER...) or ``other``."""
    word = action.split(maxsplit=1)[0].upper() if action.strip() else ""
    if word.isdigit():
        return {"4": "DEFER", "5": "REJECT"}.get(word[0], "other")
    if word.startswith("DEFER"):
        return "DEFER"
    return word if word in ACTION_KINDS else "other"
