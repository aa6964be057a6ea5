"""Client-side helpers for the lab's checks: look into a mailbox over IMAP as a user would.

Tests and ``make demo`` act like a user: SMTP in (``mail.smtp.send_message``), IMAP out. Nothing
here peeks at files on disk, so the same calls work against a deployment that is not a lab.
"""

from __future__ import annotations

import imaplib
import socket
import time

from imapclient import IMAPClient

from mailcontinuity.config import Endpoint
from mailcontinuity.lab.eventually import NotInTime, eventually
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.tls import TLSPolicy

INTERNET_CLIENT = "127.0.0.2"
"""Source address for a client outside the gateway's mynetworks, i.e. mail from the internet."""


def find_by_message_id(client: IMAPClient, folder: str, message_id: str) -> list[int]:
    """UIDs in ``folder`` whose Message-ID header contains ``message_id``."""
    client.select_folder(folder, readonly=True)
    return list(client.search(["HEADER", "Message-ID", message_id]))


def wait_for_message(endpoint: Endpoint, login: str, password: str, message_id: str,
                     folder: str = "INBOX", timeout: float = 30.0) -> bytes | None:
    """The raw message once it shows up in ``folder``, or None after ``timeout`` seconds."""

    def fetched() -> bytes | None:
        with imap_login(endpoint, login, password) as client:
            uids = find_by_message_id(client, folder, message_id)
            return client.fetch(uids[:1], ["BODY.PEEK[]"])[uids[0]][b"BODY[]"] if uids else None

    try:
        return eventually(fetched, timeout, f"{message_id} in {login}'s {folder}", interval=0.2)
    except NotInTime:
        return None


def locate(client: IMAPClient, message_id: str) -> dict[str, list[int]]:
    """UIDs of ``message_id`` in every selectable folder of the logged-in mailbox but All Mail
    (``\\All``: Gmail shows every message there again, it is not a copy)."""
    found: dict[str, list[int]] = {}
    for flags, _delimiter, folder in client.list_folders():
        if {b"\\noselect", b"\\nonexistent", b"\\all"} & {flag.lower() for flag in flags}:
            continue
        client.select_folder(folder, readonly=True)
        uids = client.search(["HEADER", "Message-ID", message_id])
        if uids:
            found[folder] = [int(uid) for uid in uids]
    return found


class IMAPFrom(imaplib.IMAP4):
    """imaplib from a chosen source address (IMAPClient cannot bind one): a client on another
    host, as far as Dovecot's per-address login penalty is concerned."""

    def __init__(self, endpoint: Endpoint, source: str) -> None:
        self._source = source
        super().__init__(endpoint.host, endpoint.port, timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))


def timed_login(endpoint: Endpoint, tls: TLSPolicy, source: str, login: str,
                password: str) -> tuple[float, str]:
    """Seconds from LOGIN to the server's answer, and the answer, over STARTTLS from ``source``."""
    client = IMAPFrom(endpoint, source)
    try:
        client.starttls(tls.context)
        started = time.monotonic()
        try:
            answer = str(client.login(login, password)[1][0], "ascii")
        except imaplib.IMAP4.error as exc:
            answer = str(exc)
        return time.monotonic() - started, answer
    finally:
        client.logout()
