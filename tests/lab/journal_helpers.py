"""Shared by the milter tests: find a message by header on a lab store, wait for the shipper."""

from __future__ import annotations

from email.parser import BytesHeaderParser
from pathlib import Path

from mailcontinuity.journal.spool import spool_usage
from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.lab.eventually import NotInTime, eventually
from mailcontinuity.mail.headers import DEFAULT_ID_HEADER
from mailcontinuity.mail.imap import imap_login

TRACE_HEADERS = (b"received:", b"return-path:", b"delivered-to:")


def fetch_by_header(lab: Lab, role: str, user: LabUser, header: str, value: str,
                    folder: str = "INBOX", timeout: float = 20.0) -> list[bytes]:
    """Every message in ``folder`` whose ``header`` contains ``value``, waiting for the first;
    empty if none came within ``timeout``."""

    def found() -> list[bytes]:
        with imap_login(lab.endpoint(role, "imap"), user.login, user.password) as client:
            client.select_folder(folder, readonly=True)
            uids = client.search(["HEADER", header, value])
            fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [fetched[uid][b"BODY[]"] for uid in sorted(uids)]

    try:
        return eventually(found, timeout, f"{header}: {value} in {user.address}'s {folder}",
                          interval=0.2)
    except NotInTime:
        return []


def journal_id(raw: bytes) -> str:
    """The id header the milter put on a stored message."""
    value = BytesHeaderParser().parsebytes(raw)[DEFAULT_ID_HEADER]
    assert value, f"no {DEFAULT_ID_HEADER} on the stored message"
    return str(value).strip()


def without_trace(raw: bytes, drop: tuple[bytes, ...] = TRACE_HEADERS) -> bytes:
    """The message minus trace headers (and their folded continuation lines)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(drop)
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


def wait_for_empty_spool(spool_dir: Path, timeout: float = 20.0) -> None:
    eventually(lambda: spool_usage(spool_dir).entries == 0, timeout, f"spool {spool_dir} drained")
