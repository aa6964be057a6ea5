"""SMTP and LMTP clients: the steps mailcontinuity takes as a client, and their replies.

Two shapes of one protocol, sharing ``Reply``:

- ``SmtpSession``, on asyncio: greeting, LHLO/EHLO (and STARTTLS), one command and its reply.
  policyd's health probe and its standby recipient check use it, so the policy server stays
  responsive while they wait.
- ``LmtpClient``, on smtplib's primitives: one LMTP transaction with a reply per recipient
  (RFC 2033), streaming the message from the journal spool chunk by chunk, dot-stuffed and with
  CRLF line ends, never held whole in memory. smtplib's own ``sendmail`` reads a single reply
  after DATA, while an LMTP server answers once per accepted recipient.

``send_message`` submits a message as any SMTP client would (the drill's probe mail).
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import ssl
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

from mailcontinuity.config import DeliveryEndpoint, Endpoint
from mailcontinuity.mail.tls import TLSError, TLSPolicy, require_starttls

MAX_REPLY_LINES = 100
CLIENT_NAME = socket.getfqdn() or "localhost"
LMTP_TIMEOUT_SECONDS = 60


class SmtpClientError(Exception):
    """The server answered with something other than what the step expects."""


@dataclass(frozen=True)
class Reply:
    """An SMTP/LMTP reply: the code and the text of all its lines."""

    code: int
    text: str

    @property
    def positive(self) -> bool:
        """2xx or 3xx: the step may go on."""
        return 200 <= self.code < 400

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


class SmtpSession:
    """One asyncio connection to an SMTP or LMTP server, past its greeting and LHLO/EHLO."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.extensions: list[str] = []
        """The words of the last LHLO/EHLO reply (``STARTTLS``, ``AUTH``, ``PLAIN``...)."""

    @classmethod
    async def open(cls, endpoint: Endpoint, protocol: str, tls: TLSPolicy,
                   implicit: bool = False, source: str | None = None) -> SmtpSession:
        """Connect, check the 220 greeting and say LHLO (LMTP) or EHLO (SMTP); with TLS on,
        STARTTLS (required: never on in plaintext) and the hello again, as RFC 3207 says.
        ``implicit``: the port speaks TLS from the start (submissions, 465), when TLS is on.
        ``source``: the local address to connect from (None: the system's choice)."""
        implicit = implicit and tls.context is not None
        try:
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=tls.context if implicit else None,
                server_hostname=endpoint.host if implicit else None,
                local_addr=(source, 0) if source else None)
        except ssl.SSLError as exc:
            raise tls.explain(protocol.upper(), endpoint, exc) from None
        session = cls(reader, writer)
        what = protocol.upper()
        try:
            session.expect(await session.read_reply(), "greeting")
            hello = "LHLO" if protocol == "lmtp" else "EHLO"
            extensions = session.expect(await session.command(f"{hello} {CLIENT_NAME}"), hello)
            session.extensions = extensions.text.upper().split()
            if tls.context is not None and not implicit:
                if "STARTTLS" not in extensions.text.upper().split():
                    raise tls.no_starttls(what, endpoint)
                session.expect(await session.command("STARTTLS"), "STARTTLS")
                await tls.upgrade(writer, what, endpoint)
                extensions = session.expect(await session.command(f"{hello} {CLIENT_NAME}"),
                                            hello)
                session.extensions = extensions.text.upper().split()
        except BaseException:
            session.close()
            raise
        return session

    async def command(self, line: str) -> Reply:
        """Send one command line and read its (possibly multi-line) reply."""
        if "\r" in line or "\n" in line:
            raise ValueError(f"an SMTP command is one line, got {line!r}")
        self.writer.write(line.encode("utf-8", errors="surrogateescape") + b"\r\n")
        await self.writer.drain()
        return await self.read_reply()

    async def read_reply(self) -> Reply:
        lines = []
        for _ in range(MAX_REPLY_LINES):
            raw = await self.reader.readline()
            if not raw.endswith(b"\n"):
                raise SmtpClientError("connection closed in the middle of a reply")
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise SmtpClientError(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(line[:3]), " ".join(lines))
        raise SmtpClientError(f"reply longer than {MAX_REPLY_LINES} lines")

    @staticmethod
    def expect(reply: Reply, step: str) -> Reply:
        if not reply.positive:
            raise SmtpClientError(f"{step} answered {reply.code} {reply.text[:80]}")
        return reply

    async def quit(self) -> None:
        try:
            await self.command("QUIT")
        finally:
            self.close()

    def close(self) -> None:
        self.writer.close()


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
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._connection.quit()
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


def offered_extensions(delivery: DeliveryEndpoint, tls: TLSPolicy,
                       timeout: float = LMTP_TIMEOUT_SECONDS) -> frozenset[str]:
    """The extensions (lower case) a mail store's LMTP or SMTP listener offers, after STARTTLS
    when ``tls`` asks for it: what the gateway's own deliveries there are offered (SMTPUTF8...).

    Raises OSError, smtplib.SMTPException or TLSError when the listener cannot be asked."""
    host, port = delivery.endpoint
    connection: smtplib.SMTP
    if delivery.protocol == "lmtp":
        connection = smtplib.LMTP(host, port, timeout=timeout)
    elif tls.implicit:
        connection = smtplib.SMTP_SSL(host, port, timeout=timeout, context=tls.context)
    else:
        connection = smtplib.SMTP(host, port, timeout=timeout)
    with connection:
        code, text = connection.ehlo()  # LHLO on LMTP
        if code != 250:
            raise smtplib.SMTPHeloError(code, text)
        if not (delivery.protocol == "smtp" and tls.implicit):
            require_starttls(connection, tls, f"{delivery.protocol} listener", delivery.endpoint)
        return frozenset(connection.esmtp_features)


def make_message(sender: str, recipients: Sequence[str], subject: str,
                 body: str = "") -> EmailMessage:
    """A well-formed message with a unique Message-ID, so it can be found again."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = f"<{uuid.uuid4().hex}@mailcontinuity.invalid>"
    message.set_content(body or f"{subject}\n")
    return message


def send_message(gateway: Endpoint, message: EmailMessage, sender: str,
                 recipients: Sequence[str], source: str | None = None) -> None:
    """Submit over SMTP (from ``source`` if given); raises smtplib's errors if the gateway
    refuses any recipient."""
    source_address = (source, 0) if source else None
    with smtplib.SMTP(gateway.host, gateway.port, timeout=30,
                      source_address=source_address) as smtp:
        refused = smtp.send_message(message, from_addr=sender, to_addrs=list(recipients))
    if refused:
        raise smtplib.SMTPRecipientsRefused(refused)
