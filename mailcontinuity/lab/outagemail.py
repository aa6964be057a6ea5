"""Outage mail written straight into the standby's Maildirs, as Dovecot leaves it (INBOX, Sent,
Drafts, Junk, Trash and user folders, a non-ASCII one included, with flags): for the failback
benchmark and the tests that need an outage of thousands of messages in seconds (delivering
them through Postfix would take minutes)."""

from __future__ import annotations

import os
import pwd
import random
import time
import uuid
from collections import Counter
from pathlib import Path

from mailcontinuity.lab.dovecot import MAIL_USER
from mailcontinuity.lab.lab import Lab
from mailcontinuity.mail.headers import DEFAULT_ID_HEADER
from mailcontinuity.mail.maildir import folder_dirname
from mailcontinuity.outage.scan import rescan
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog, Outage
from mailcontinuity.transitions import change_state

# (weight, low, high) in bytes: mostly small text mail, some attachments, a few big ones.
SIZE_MIX = [(70, 2_000, 20_000), (25, 20_000, 200_000), (5, 200_000, 2_000_000)]
# (weight, folder, Maildir info flags): where outage mail ends up and how it is marked.
FOLDER_MIX = [(55, "INBOX", "S"), (10, "INBOX", ""), (4, "INBOX", "FS"), (3, "INBOX", "RS"),
              (12, "Sent", "S"), (2, "Drafts", "DS"), (4, "Junk", ""), (2, "Trash", "S"),
              (5, "Archive/2026", "S"), (3, "Projekte/Übersicht", "S")]

Tally = Counter[tuple[str, str]]


def message_size(rng: random.Random, mix: list[tuple[int, int, int]] = SIZE_MIX) -> int:
    _, low, high = rng.choices(mix, [w for w, _, _ in mix])[0]
    return rng.randint(low, high)


def folder_dir(lab: Lab, address: str, folder: str) -> Path:
    """The standby directory of ``folder``, created as Dovecot would (owned by the mail user)."""
    mail = pwd.getpwnam(MAIL_USER)
    maildir = lab.standby.maildir(address)
    directory = maildir / folder_dirname(folder) if folder != "INBOX" else maildir
    for path in (maildir.parent.parent, maildir.parent, maildir, directory,
                 *(directory / sub for sub in ("tmp", "new", "cur"))):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, mail.pw_uid, mail.pw_gid)
    if folder != "INBOX":
        (directory / "maildirfolder").touch()
    return directory


def write_outage_mail(lab: Lab, count: int, rng: random.Random,
                      sizes: list[tuple[int, int, int]] = SIZE_MIX) -> tuple[Tally, Tally]:
    """Drop ``count`` messages into the users' standby folders, each with its own id header;
    (messages, RFC822.SIZE bytes) per (user, folder)."""
    mail = pwd.getpwnam(MAIL_USER)
    messages: Tally = Counter()
    octets: Tally = Counter()
    line = "bench payload " * 5 + "\n"
    for n in range(count):
        user = lab.users[n % len(lab.users)]
        _, folder, info = rng.choices(FOLDER_MIX, [w for w, _, _ in FOLDER_MIX])[0]
        directory = folder_dir(lab, user.address, folder)
        body_size = message_size(rng, sizes)
        body = (line * (body_size // len(line) + 1))[:body_size]
        data = (f"From: sender{n}@remote.test\nTo: {user.address}\nSubject: bench {n}\n"
                f"Message-ID: <{uuid.uuid4().hex}@bench.test>\n{DEFAULT_ID_HEADER}: "
                f"{uuid.uuid4().hex}\nDate: Mon, 02 Nov 2026 10:00:00 +0000\n\n{body}").encode()
        name = f"{int(time.time())}.M{n}P{os.getpid()}R{rng.getrandbits(32):x}.bench,S={len(data)}"
        tmp = directory / "tmp" / name
        tmp.write_bytes(data)
        os.chown(tmp, mail.pw_uid, mail.pw_gid)
        received = time.time() - rng.randint(0, 86400)
        os.utime(tmp, (received, received))
        tmp.rename(directory / "cur" / f"{name}:2,{info}")
        messages[user.address, folder] += 1
        octets[user.address, folder] += len(data) + data.count(b"\n")  # RFC822.SIZE: CRLF
    return messages, octets


def record_outage(lab: Lab, count: int, rng: random.Random,
                  sizes: list[tuple[int, int, int]] = SIZE_MIX,
                  actor: str = "lab") -> tuple[Outage, tuple[Tally, Tally]]:
    """An outage recorded as the sync agent would, with ``count`` messages of outage mail
    written straight into the standby's Maildirs: failover, the record opened, the baseline
    (the standby before any outage mail), the mail written, the record rescanned. Returns the
    recorded outage and ``write_outage_mail``'s tallies. The caller stops the lab's sync agent
    first where it must not race this recording (a benchmark's timed failback)."""
    store = open_store(lab.config)
    try:
        change_state(lab.config, store, "failover", f"{actor}: outage mail written", actor)
        changelog = ChangeLog(store)
        opened = changelog.start_outage()
        assert opened is not None, "the state is failover: the record opens"
        baseline = rescan(lab.config, changelog, opened)
        written = write_outage_mail(lab, count, rng, sizes)
        return rescan(lab.config, changelog, baseline), written
    finally:
        store.close()
