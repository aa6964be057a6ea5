"""TLS for every connection mailcontinuity opens to the primary or the standby.

The connections that leave the host carry the master user's password and users' mail, so each is
encrypted and the server's certificate checked against the configured CA (or the system's trust
store) and the host name written in the endpoint. When TLS is configured there is no fallback: a
server that offers no STARTTLS, or a certificate that does not verify, stops the connection with
a reason, and plaintext happens only where the configuration says ``tls = "none"``.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from mailcontinuity.config import Config, Endpoint, client_tls_context

Side = Literal["primary", "standby"]


class TLSError(Exception):
    """A TLS handshake or policy failure, phrased for the operator."""


@dataclass(frozen=True)
class TLSPolicy:
    """How to reach one side: ``starttls``, ``ssl`` (implicit TLS where the protocol has it:
    IMAP on 993, submissions on 465; LMTP and ManageSieve always use STARTTLS) or ``none``."""

    side: Side
    mode: Literal["starttls", "ssl", "none"]
    ca_file: Path | None
    source: Path

    @classmethod
    def of(cls, config: Config, side: Side) -> TLSPolicy:
        section = config.primary if side == "primary" else config.standby
        return cls(side, section.tls, section.tls_ca_file, config.source)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def implicit(self) -> bool:
        """Whether a protocol that has an implicit-TLS port (IMAP, submission) uses it."""
        return self.mode == "ssl"

    @cached_property
    def context(self) -> ssl.SSLContext | None:
        """The client context, built once. ``load_config`` has loaded the CA file already; it
        fails here only if the file was changed or removed since."""
        if not self.enabled:
            return None
        try:
            return client_tls_context(self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(
                f"{self.source}: key '{self.side}.tls_ca_file': cannot load CA certificates"
                f" from {self.ca_file}: {getattr(exc, 'strerror', None) or exc}") from None

    async def upgrade(self, writer: asyncio.StreamWriter, what: str, endpoint: Endpoint) -> None:
        """The handshake after a STARTTLS the server accepted, on an asyncio stream."""
        if self.context is None:
            raise self.no_starttls(what, endpoint)  # only reached with tls = "none": a bug
        try:
            await writer.start_tls(self.context, server_hostname=endpoint.host)
        except ssl.SSLError as exc:
            raise self.explain(what, endpoint, exc) from None

    def no_starttls(self, what: str, endpoint: Endpoint) -> TLSError:
        """The error for a server that does not offer STARTTLS: never continue in plaintext."""
        return TLSError(
            f"{self.side} {what} {endpoint} does not offer STARTTLS; refusing to continue"
            f" without encryption: enable TLS there, or set {self.side}.tls = \"none\""
            f" in {self.source} if this hop never leaves a trusted network")

    def explain(self, what: str, endpoint: Endpoint, exc: ssl.SSLError) -> TLSError:
        """A failed handshake as the operator's next step: usually the CA or the name."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = exc.verify_message or str(exc)
            trusted = (f"the CA in {self.side}.tls_ca_file ({self.ca_file})" if self.ca_file
                       else f"the system's CAs (set {self.side}.tls_ca_file for a private CA)")
            return TLSError(
                f"{self.side} {what} {endpoint}: certificate not accepted ({reason}); it must be"
                f" signed by {trusted} and name {endpoint.host}")
        return TLSError(f"{self.side} {what} {endpoint}: TLS handshake failed ({exc});"
                        f" check that the port speaks {self.mode} TLS")


def require_starttls(connection: smtplib.SMTP, tls: TLSPolicy, what: str,
                     endpoint: Endpoint) -> None:
    """STARTTLS on an smtplib SMTP or LMTP connection past EHLO/LHLO, then the hello again;
    required whenever TLS is configured (no opportunistic plaintext)."""
    if not tls.enabled:
        return
    if not connection.has_extn("starttls"):
        raise tls.no_starttls(what, endpoint)
    try:
        connection.starttls(context=tls.context)
    except ssl.SSLError as exc:
        raise tls.explain(what, endpoint, exc) from None
    connection.ehlo()
