"""One LMTP transaction with a reply per recipient (RFC 2033), streaming the message.

smtplib's ``LMTP`` speaks the greeting and LHLO, but its ``sendmail`` reads a single reply after
DATA, while an LMTP server answers once per accepted recipient (one mailbox over quota, another
fine). So the transaction is driven here on smtplib's primitives, and the message is streamed
from the spool chunk by chunk, dot-stuffed and with CRLF line ends, never held whole in memory.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mailcontinuity.config import Endpoint
from mailcontinuity.tls import TLSError, TLSPolicy, require_starttls

LMTP_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def _reply(code: int, text: bytes | str) -> Reply:
    return Reply(code, text.decode("utf-8", "replace") if isinstance(text, bytes) else text)


def data_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The DATA payload: CRLF line ends, a leading dot doubled, the final ``.`` line added."""
    at_line_start = True
    previous_ended_cr = False
    for chunk in chunks:
        if not chunk:
            continue
        pieces = chunk.split(b"\n")
        out = bytearray()
        for index, piece in enumerate(pieces):
            if at_line_start and piece.startswith(b"."):
                out += b"."
            out += piece
            if index == len(pieces) - 1:  # no LF after it in this chunk
                at_line_start = at_line_start and not piece if index == 0 else not piece
                break
            ends_cr = piece.endswith(b"\r") or (not piece and index == 0 and previous_ended_cr)
            out += b"\n" if ends_cr else b"\r\n"
            at_line_start = True
        previous_ended_cr = chunk.endswith(b"\r")
        yield bytes(out)
    yield b".\r\n" if at_line_start else b"\r\n.\r\n"


class LmtpClient:
    """A connection to an LMTP server, reused across transactions; encrypted with STARTTLS
    (required) unless ``tls`` is off, as the standby may be across a WAN."""

    def __init__(self, endpoint: Endpoint, tls: TLSPolicy) -> None:
        self._endpoint = endpoint
        self._tls = tls
        self._connection: smtplib.LMTP | None = None

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self._connection = None

    def deliver(self, sender: str, recipients: list[str],
                chunks: Iterable[bytes]) -> dict[str, Reply]:
        """Deliver to ``recipients``; every recipient gets its RCPT or its after-DATA reply.

        Raises OSError, smtplib.SMTPException or TLSError when the transaction as a whole
        failed (nothing is known to be delivered then).
        """
        connection = self._connect()
        try:
            return self._transaction(connection, sender, recipients, chunks)
        except (smtplib.SMTPException, OSError):
            self.close()
            raise

    def _connect(self) -> smtplib.LMTP:
        if self._connection is not None:
            try:  # a connection idle for long may have been closed by the server
                if self._connection.noop()[0] == 250:
                    return self._connection
            except (smtplib.SMTPException, OSError):
                pass
            self.close()
        connection = smtplib.LMTP(self._endpoint.host, self._endpoint.port,
                                  timeout=LMTP_TIMEOUT_SECONDS)
        try:
            code, text = connection.ehlo()  # LMTP's ehlo sends LHLO
            if code != 250:
                raise smtplib.SMTPHeloError(code, text)
            require_starttls(connection, self._tls, "journal LMTP", self._endpoint)
        except (smtplib.SMTPException, OSError, TLSError):
            connection.close()
            raise
        self._connection = connection
        return connection

    @staticmethod
    def _transaction(connection: smtplib.LMTP, sender: str, recipients: list[str],
                     chunks: Iterable[bytes]) -> dict[str, Reply]:
        options = []
        if connection.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if not (sender + "".join(recipients)).isascii() and connection.has_extn("smtputf8"):
            options.append("SMTPUTF8")
        code, text = connection.mail(sender, options)
        if code != 250:
            connection.rset()
            return {recipient: _reply(code, text) for recipient in recipients}
        replies = {recipient: _reply(*connection.rcpt(recipient)) for recipient in recipients}
        accepted = [recipient for recipient, reply in replies.items() if reply.accepted]
        if not accepted:
            connection.rset()
            return replies
        code, text = connection.docmd("DATA")
        if code != 354:
            connection.rset()
            return replies | {recipient: _reply(code, text) for recipient in accepted}
        for data in data_lines(chunks):
            connection.send(data)
        for recipient in accepted:
            replies[recipient] = _reply(*connection.getreply())
        return replies
