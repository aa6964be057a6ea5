"""Failback merge throughput against mbsync (isync), on one lab with 20 users.

Outage mail is written straight into the standby's Maildirs (as Dovecot's LMTP would leave it)
after failover, then merged into the empty primary by ``run_failback``; the primary's mail is
then wiped and the same standby set pushed by ``mbsync`` (one channel per user, as many users at
once as failback's concurrency). A second failback plan must append nothing.

Usage: .venv/bin/python bench/failback_bench.py [--messages 2000] [--users 20]
"""

from __future__ import annotations

import argparse
import os
import pwd
import random
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailcontinuity.headers import DEFAULT_ID_HEADER
from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import MAIL_USER
from mailcontinuity.state import StateStore
from mailcontinuity.sync.changelog import ChangeLog
from mailcontinuity.sync.failback import plan_failback, run_failback
from mailcontinuity.sync.scan import rescan
from mailcontinuity.transitions import change_state

# (weight, low, high) in bytes: mostly small text mail, some attachments, a few big ones.
SIZE_MIX = [(70, 2_000, 20_000), (25, 20_000, 200_000), (5, 200_000, 2_000_000)]


def message_size(rng: random.Random) -> int:
    weights = [w for w, _, _ in SIZE_MIX]
    _, low, high = rng.choices(SIZE_MIX, weights)[0]
    return rng.randint(low, high)


def write_outage_mail(lab: Lab, count: int, rng: random.Random) -> int:
    """Drop ``count`` messages into the users' standby INBOXes; returns the bytes written."""
    mail = pwd.getpwnam(MAIL_USER)
    total = 0
    for n in range(count):
        user = lab.users[n % len(lab.users)]
        maildir = lab.standby.maildir(user.address)
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
            os.chown(maildir / sub, mail.pw_uid, mail.pw_gid)
        body_size = message_size(rng)
        line = "bench payload " * 5 + "\n"
        body = (line * (body_size // len(line) + 1))[:body_size]
        data = (f"From: sender{n}@remote.test\nTo: {user.address}\nSubject: bench {n}\n"
                f"Message-ID: <{uuid.uuid4().hex}@bench.test>\n{DEFAULT_ID_HEADER}: "
                f"{uuid.uuid4().hex}\nDate: Mon, 02 Nov 2026 10:00:00 +0000\n\n{body}").encode()
        name = f"{int(time.time())}.M{n}P{os.getpid()}.bench,S={len(data)}"
        tmp = maildir / "tmp" / name
        tmp.write_bytes(data)
        os.chown(tmp, mail.pw_uid, mail.pw_gid)
        tmp.rename(maildir / "cur" / f"{name}:2,{'S' if n % 3 else ''}")
        total += len(data)
    return total


def wipe_primary(lab: Lab) -> None:
    lab.primary.stop()
    for child in lab.primary.mail_root.iterdir():
        shutil.rmtree(child)
    lab.primary.start()


def mbsync_user(lab: Lab, workdir: Path, address: str, admin: str, password: str) -> None:
    conf = workdir / f"{address}.mbsyncrc"
    standby, primary = lab.endpoint("standby", "imap"), lab.endpoint("primary", "imap")
    stores = "".join(
        f"IMAPStore {name}\nHost {ep.host}\nPort {ep.port}\nUser {address}*{admin}\n"
        f"Pass {password}\nSSLType None\nAuthMechs LOGIN\n\n"
        for name, ep in (("standby", standby), ("primary", primary)))
    conf.write_text(
        stores + f"Channel c\nFar :standby:\nNear :primary:\nPatterns INBOX\nCreate Near\n"
        # Far (standby) -> Near (primary) is "Pull" in mbsync's terms.
        f"Sync Pull\nSyncState {workdir}/{address}-state/\nExpunge None\n")
    (workdir / f"{address}-state").mkdir(exist_ok=True)
    done = subprocess.run(["mbsync", "-q", "-c", str(conf), "c"], capture_output=True, text=True,
                          timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mbsync for {address}: {done.stderr.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    if shutil.which("mbsync") is None:
        sys.exit("mbsync not found: apt-get install isync")
    directory = Path(f"/tmp/mcbench-{os.getpid()}")
    directory.mkdir(mode=0o755)
    lab = Lab.up(directory, user_count=args.users)
    try:
        store = StateStore(lab.config.state.path)
        change_state(lab.config, store, "failover", "benchmark", "bench")
        changelog = ChangeLog(store)
        rescan(lab.config, changelog, changelog.start_outage())  # the baseline: empty
        megabytes = write_outage_mail(lab, args.messages, random.Random(1)) / 1e6

        started = time.monotonic()
        report = run_failback(lab.config, actor="bench")
        ours = time.monotonic() - started
        appended = report.counts.get("append:done", 0)
        second = plan_failback(lab.config)
        ChangeLog(store).set_outage(report.outage, status="recording")  # plan against it again
        replan = plan_failback(lab.config).counts.get("append", 0)
        ChangeLog(store).set_outage(report.outage, status="merged")
        store.close()

        wipe_primary(lab)
        password = (directory / "secrets" / "admin-password").read_text().strip()
        work = directory / "mbsync"
        work.mkdir()
        started = time.monotonic()
        with ThreadPoolExecutor(lab.config.sync.concurrency) as pool:
            list(pool.map(lambda u: mbsync_user(lab, work, u.address, "mcadmin", password),
                          lab.users))
        theirs = time.monotonic() - started

        print(f"{args.messages} messages, {megabytes:.1f} MB, {args.users} users,"
              f" concurrency {lab.config.sync.concurrency}")
        print(f"{'tool':<22}{'seconds':>9}{'msg/s':>9}{'MB/s':>8}")
        print(f"{'mailcontinuity':<22}{ours:>9.1f}{appended / ours:>9.0f}{megabytes / ours:>8.1f}")
        print(f"{'mbsync (isync)':<22}{theirs:>9.1f}{args.messages / theirs:>9.0f}"
              f"{megabytes / theirs:>8.1f}")
        print(f"appended {appended}; second failback: {second.note or second.counts};"
              f" re-planned appends against the merged primary: {replan}")
    finally:
        Lab.down(directory)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
