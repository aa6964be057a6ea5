"""Failback's cost against a primary without SAVEDATE (Exchange Online, Gmail) and with it
(Dovecot), as the primary mailbox grows (issue 15).

For each history size H, two labs are built the same way: alice has H messages in her primary
INBOX (``doveadm import``), and an outage of ``--outage`` messages is written into the users'
standby folders (lab/outagemail.py) and recorded. Dovecot's Maildir takes a message's save date
from its file's ctime, which no clock trick moves back; so the recorded outage is moved forward
instead: it "began" ``OUTAGE_AHEAD`` from now, and the history imported now is older than that
for SAVEDATE as it would be on a real primary. In one lab the primary announces Dovecot's full
capability list; in the other the same list without SAVEDATE. Failback is timed in both, and
must append every outage message without a refusal.

With SAVEDATE failback reads only what was saved on the primary since the outage began; without
it, what arrived there (INTERNALDATE, SEARCH SINCE) since then: the outage mail is dated after
the moved-forward start, the history keeps its import date. The figure to read is how the time
without SAVEDATE grows with H.

Usage: .venv/bin/python bench/savedate_bench.py [--history 10000,100000] [--outage 1000]
"""

from __future__ import annotations

import argparse
import os
import pwd
import random
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import MAIL_USER, DovecotInstance
from mailcontinuity.lab.outagemail import record_outage
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.tools import run_command
from mailcontinuity.outage.merge import run_failback
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog

OUTAGE_AHEAD = timedelta(days=3)


def history_maildir(count: int, directory: Path) -> Path:
    """``count`` small messages (2-6 KB) in a Maildir of their own, owned by the mail user."""
    mail = pwd.getpwnam(MAIL_USER)
    rng = random.Random(count)
    for sub in ("tmp", "new", "cur"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    line = "history payload " * 5 + "\n"
    for n in range(count):
        body = line * rng.randint(25, 75)
        data = (f"From: old{n}@remote.test\nSubject: history {n}\n"
                f"Message-ID: <{uuid.uuid4().hex}@history.test>\n"
                f"Date: Mon, 05 Oct 2026 10:00:00 +0000\n\n{body}").encode()
        (directory / "cur" / f"{n}.history:2,S").write_bytes(data)
    for path in directory.rglob("*"):
        os.chown(path, mail.pw_uid, mail.pw_gid)
    os.chown(directory, mail.pw_uid, mail.pw_gid)
    return directory


def import_history(lab: Lab, source: Path, count: int) -> None:
    """Into alice's primary INBOX (doveadm exits 0 even when it imported nothing: counted)."""
    alice = lab.users[0]
    run_command(["doveadm", "-c", str(lab.primary.config_file), "import", "-u", alice.address,
                 f"maildir:{source}", "", "all"], timeout=3600)
    with imap_login(lab.endpoint("primary", "imap"), alice.login, alice.password) as client:
        found = client.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"]
    assert found == count, f"alice's primary INBOX holds {found} messages, not {count}"


def without_savedate(lab: Lab) -> None:
    """The primary announces its own capabilities less SAVEDATE: a server without RFC 8514."""
    primary = lab.primary
    assert isinstance(primary, DovecotInstance), "the benchmark's primary is Dovecot"
    alice = lab.users[0]
    with imap_login(lab.endpoint("primary", "imap"), alice.login, alice.password) as client:
        announced = [cap.decode() for cap in client.capabilities()]
    primary.stop()
    primary.settings["imap_capability"] = " ".join(
        cap for cap in announced if cap.upper() != "SAVEDATE" and not cap.startswith("AUTH="))
    primary.write_config()
    primary.start()


def failback_seconds(lab: Lab, outage_messages: int) -> tuple[float, int, int]:
    """(seconds, appended, refused) for one recorded outage merged by failback."""
    lab.part("sync-agent").stop()
    outage, _ = record_outage(lab, outage_messages, random.Random(1), actor="bench")
    store = open_store(lab.config)
    try:
        began = time.time() + OUTAGE_AHEAD.total_seconds()
        arrived_during_outage(lab, began)
        ChangeLog(store).set_outage(outage.id, started_at=began)
    finally:
        store.close()
    started = time.monotonic()
    report = run_failback(lab.config, actor="bench")
    seconds = time.monotonic() - started
    return seconds, report.counts.get("append:done", 0), len(report.refused)


def arrived_during_outage(lab: Lab, began: float) -> None:
    """Date the outage mail (file mtime, Dovecot's INTERNALDATE, which failback's APPEND
    keeps) after the moved-forward start, as mail that arrived during the outage is."""
    for path in lab.standby.mail_root.rglob("cur/*"):
        os.utime(path, (began + 60, began + 60))


def primary_has_savedate(lab: Lab) -> bool:
    alice = lab.users[0]
    with imap_login(lab.endpoint("primary", "imap"), alice.login, alice.password) as client:
        return b"SAVEDATE" in client.capabilities()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", default="10000,100000",
                        help="history sizes in alice's primary INBOX, comma separated")
    parser.add_argument("--outage", type=int, default=1000)
    args = parser.parse_args()
    sizes = [int(size) for size in args.history.split(",")]
    rows = []
    users = 0
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="mcbench-history-") as scratch:
            os.chmod(scratch, 0o755)  # doveadm reads it as the mail user
            source = history_maildir(size, Path(scratch) / "Maildir")
            for savedate in (True, False):
                with Lab.temporary(prefix="mcbench-savedate-") as lab:
                    if not savedate:
                        without_savedate(lab)
                    assert primary_has_savedate(lab) == savedate
                    started = time.monotonic()
                    import_history(lab, source, size)
                    imported = time.monotonic() - started
                    seconds, appended, refused = failback_seconds(lab, args.outage)
                    users = len(lab.users)
                    assert (appended, refused) == (args.outage, 0), (appended, refused)
                    rows.append((size, savedate, imported, seconds, appended, refused))
                    print(f"history {size}: SAVEDATE {'yes' if savedate else 'no '}"
                          f" import {imported:.0f}s failback {seconds:.1f}s"
                          f" appended {appended} refused {refused}", flush=True)
    print(f"\n{args.outage} outage messages for {users} users; alice's primary INBOX holds"
          " the history; failback seconds:")
    print(f"{'history':>9}{'SAVEDATE':>10}{'no SAVEDATE':>13}{'ratio':>7}")
    for size in sizes:
        with_it, without = (next(row[3] for row in rows if row[0] == size and row[1] == flag)
                            for flag in (True, False))
        print(f"{size:>9}{with_it:>9.1f}s{without:>12.1f}s{without / with_it:>7.2f}")


if __name__ == "__main__":
    main()
