"""Failback merge throughput against mbsync (isync), on one lab with 20 users (issue 5).

Outage mail is written straight into the standby's Maildirs (as Dovecot leaves it: INBOX, Sent,
Drafts, Junk, Trash and user folders, a non-ASCII one included, with flags) after failover and
recorded as the sync agent would have during the outage. Then, in one run:

1. ``run_failback`` merges it into the empty primary (timed: the whole failback, routing switch,
   rescans and the delta pass included);
2. failback is run a second time on the same outage with its checkpoints erased, so only the
   primary's contents can keep it from appending again (must append nothing);
3. the primary is wiped and the same standby set pushed by ``mbsync`` (all folders, arrival dates
   kept, one channel per user, as many users at once as failback's concurrency).

After each tool the primary is counted over IMAP, per user and folder, messages and RFC822.SIZE
bytes, and compared with what was written to the standby: a tool's figure counts only what it
really put on the primary.

Usage: .venv/bin/python bench/failback_bench.py [--messages 10000] [--users 20]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailcontinuity.config import Endpoint
from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import DovecotInstance
from mailcontinuity.lab.outagemail import Tally, record_outage
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.tools import run_command
from mailcontinuity.outage.merge import run_failback
from mailcontinuity.store.db import StateStore, open_store
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.transitions import change_state

ADMIN = "mcadmin"


def count_primary(lab: Lab, password: str) -> tuple[Tally, Tally]:
    """Messages and RFC822.SIZE bytes per (user, folder) on the primary, over IMAP."""
    messages: Tally = Counter()
    sizes: Tally = Counter()
    for user in lab.users:
        with imap_login(lab.endpoint("primary", "imap"), f"{user.address}*{ADMIN}",
                        password) as client:
            for flags, _, name in client.list_folders():
                if b"\\Noselect" in flags:
                    continue
                client.select_folder(name, readonly=True)
                uids = client.search(["ALL"])
                fetched = client.fetch(uids, ["RFC822.SIZE"]) if uids else {}
                if fetched:
                    messages[user.address, name] += len(fetched)
                    sizes[user.address, name] += sum(d[b"RFC822.SIZE"] for d in fetched.values())
    return messages, sizes


def compare(written: tuple[Tally, Tally], found: tuple[Tally, Tally]) -> str:
    """'complete' when every (user, folder) holds what was written, else what differs.

    Messages must match exactly; bytes are reported as a difference per message (mbsync adds
    an ``X-TUID`` header to every message it appends).
    """
    wrong = [f"{user} {folder!r}: {found[0][user, folder]}/{count} messages"
             for (user, folder), count in sorted(written[0].items())
             if found[0][user, folder] != count]
    extra = sum(found[0].values()) - sum(written[0].values())
    if wrong or extra:
        return (f"{len(wrong)} folder(s) differ, {extra:+d} messages overall; "
                + "; ".join(wrong[:5]))
    grown = sum(found[1].values()) - sum(written[1].values())
    if grown:
        return f"complete, {grown / sum(written[0].values()):+.0f} bytes per message"
    return "complete, byte-identical sizes"


def tuid_header(lab: Lab, password: str) -> str:
    """The X-TUID header mbsync adds, as stored on the primary (first INBOX message)."""
    user = lab.users[0]
    with imap_login(lab.endpoint("primary", "imap"), f"{user.address}*{ADMIN}",
                    password) as client:
        client.select_folder("INBOX", readonly=True)
        first = client.search(["ALL"])[:1]
        fetched = client.fetch(first, ["BODY.PEEK[HEADER.FIELDS (X-TUID)]"])
        found = b"".join(data[b"BODY[HEADER.FIELDS (X-TUID)]"] for data in fetched.values())
        return found.decode().strip()


def index_standby(lab: Lab) -> None:
    """Let the standby's Dovecot index the mail written behind its back (untimed): in an
    outage its users and LMTP keep the index current, and failback's own record is likewise
    built during the outage, so neither tool is timed for it."""
    for user in lab.users:
        run_command(["doveadm", "-c", str(lab.standby.config_file), "mailbox", "status",
                     "-u", user.address, "messages", "*"], timeout=600)


def wipe_primary(lab: Lab) -> None:
    assert isinstance(lab.primary, DovecotInstance), "the benchmark's primary is Dovecot"
    lab.primary.stop()
    for child in lab.primary.mail_root.iterdir():
        shutil.rmtree(child)
    lab.primary.start()


def mbsync_user(standby: Endpoint, primary: Endpoint, workdir: Path, address: str,
                password: str) -> None:
    """Push one user's standby mailbox to the primary with mbsync: every folder, dates kept."""
    conf = workdir / f"{address}.mbsyncrc"
    stores = "".join(
        f"IMAPStore {name}\nHost {ep.host}\nPort {ep.port}\nUser {address}*{ADMIN}\n"
        f"Pass {password}\nSSLType None\nAuthMechs LOGIN\n\n"
        for name, ep in (("standby", standby), ("primary", primary)))
    conf.write_text(
        # Far (standby) -> Near (primary) is "Pull" in mbsync's terms; Create Near makes the
        # folders the primary lacks, CopyArrivalDate keeps INTERNALDATE as failback does.
        stores + "Channel c\nFar :standby:\nNear :primary:\nPatterns *\nCreate Near\n"
        f"Sync Pull\nCopyArrivalDate yes\nSyncState {workdir}/{address}-state/\n"
        "Expunge None\n")
    (workdir / f"{address}-state").mkdir(exist_ok=True)
    done = subprocess.run(["mbsync", "-q", "-c", str(conf), "c"], capture_output=True, text=True,
                          timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mbsync for {address}: {done.stderr.strip()}")


def second_failback(lab: Lab, store: StateStore, outage: int) -> tuple[float, int]:
    """Failback again on the same outage with its checkpoints erased: (seconds, appended)."""
    with store.transaction() as db:
        db.execute("DELETE FROM sync_progress WHERE outage_id = ?", [outage])
    ChangeLog(store).set_outage(outage, status="merging")
    change_state(lab.config, store, "failback", "benchmark: second run", "bench")
    started = time.monotonic()
    report = run_failback(lab.config, actor="bench")
    return time.monotonic() - started, report.counts.get("append:done", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    if shutil.which("mbsync") is None:
        sys.exit("mbsync not found: apt-get install isync")
    with Lab.temporary(prefix="mcbench-", user_count=args.users) as lab:
        password = (lab.dir / "secrets" / "admin-password").read_text().strip()
        # The agent records during the outage; the bench records in its place (untimed) so
        # that it does not race the timed failback for the merge.
        lab.part("sync-agent").stop()
        outage, written = record_outage(lab, args.messages, random.Random(1), actor="bench")
        store = open_store(lab.config)
        total = sum(written[0].values())
        megabytes = sum(written[1].values()) / 1e6

        started = time.monotonic()
        report = run_failback(lab.config, actor="bench")
        ours = time.monotonic() - started
        ours_found = count_primary(lab, password)
        again_seconds, again_appended = second_failback(lab, store, outage.id)
        again_found = count_primary(lab, password)
        store.close()

        wipe_primary(lab)
        index_standby(lab)
        work = lab.dir / "mbsync"
        work.mkdir()
        standby, primary = lab.endpoint("standby", "imap"), lab.endpoint("primary", "imap")
        started = time.monotonic()
        with ThreadPoolExecutor(lab.config.sync.concurrency) as pool:
            list(pool.map(lambda u: mbsync_user(standby, primary, work, u.address, password),
                          lab.users))
        theirs = time.monotonic() - started
        theirs_found = count_primary(lab, password)
        tuid = tuid_header(lab, password)

        folders = len(written[0])
        print(f"{total} messages, {megabytes:.1f} MB (RFC822.SIZE), {args.users} users,"
              f" {folders} user folders, concurrency {lab.config.sync.concurrency}")
        print(f"{'tool':<16}{'seconds':>9}{'msg/s':>9}{'MB/s':>8}  on the primary afterwards")
        for name, seconds, found in (("mailcontinuity", ours, ours_found),
                                     ("mbsync (isync)", theirs, theirs_found)):
            print(f"{name:<16}{seconds:>9.1f}{sum(found[0].values()) / seconds:>9.0f}"
                  f"{sum(found[1].values()) / 1e6 / seconds:>8.1f}  {compare(written, found)}")
        print(f"failback appended {report.counts.get('append:done', 0)} in {report.passes}"
              f" pass(es); second run (checkpoints erased): appended {again_appended} in"
              f" {again_seconds:.1f} s, primary {compare(written, again_found)}")
        print(f"header mbsync added to each message: {tuid!r}")


if __name__ == "__main__":
    main()
