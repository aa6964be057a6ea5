"""Failback cost curve: a 4-hour outage of many users into a Dovecot primary (issue 17).

For each user count (default 100 and 300) a lab with that many users; each user has 100
messages in INBOX on both the primary and the standby (the mail before the outage, the
primary's index built untimed, as a live primary's would be). Then, for each
``sync.concurrency`` (default 1, 4, 8), one outage: failover, the baseline rescan, then per user
``--messages`` new messages written into the standby's folders (lab/outagemail.py, small mail:
2-20 kB) and the flags of ``--flags`` baseline messages changed (Maildir renames, as Dovecot
does for a client's STORE); the record brought up to date (untimed, the sync agent's work during
the outage) and ``run_failback`` timed as a whole. Runs of one lab follow each other on the same
primary, so its INBOXes grow by ``--messages`` per user per run (said in the output).

Prints seconds, messages and flag changes per second, by users and concurrency, and the
extrapolation to 10,000 users from the per-user time of the largest run (linear: failback's
work is per user; the primary is the same Dovecot, on the same 2 cores).

    .venv/bin/python bench/failback_scale.py [--users 100,300] [--concurrency 1,4,8]
        [--messages 50] [--flags 100]

Starts its own labs (Postfix, Dovecot x2) on random loopback ports and stops them.
"""

from __future__ import annotations

import argparse
import os
import pwd
import random
import time

from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import MAIL_USER, DovecotInstance
from mailcontinuity.lab.outagemail import folder_dir, write_outage_mail
from mailcontinuity.mail.headers import DEFAULT_ID_HEADER
from mailcontinuity.mail.tools import run_command
from mailcontinuity.outage.merge import run_failback
from mailcontinuity.outage.scan import rescan
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog
from mailcontinuity.transitions import change_state

BASELINE = 100
FLAG_STEPS = ("FS", "FRS", "RS", "S")  # each run changes every chosen message's flags


def seed_baseline(lab: Lab) -> None:
    """BASELINE messages per user in INBOX on both servers (same file), indexed (untimed)."""
    assert isinstance(lab.primary, DovecotInstance), "the bench's primary is Dovecot"
    mail = pwd.getpwnam(MAIL_USER)
    for user in lab.users:
        standby = folder_dir(lab, user.address, "INBOX")
        primary = lab.primary.maildir(user.address)
        for path in (primary.parent.parent, primary.parent, primary,
                     *(primary / sub for sub in ("tmp", "new", "cur"))):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, mail.pw_uid, mail.pw_gid)
        for n in range(BASELINE):
            data = (f"From: old{n}@remote.test\nTo: {user.address}\nSubject: before {n}\n"
                    f"Message-ID: <base{n}.{user.address}>\n{DEFAULT_ID_HEADER}: b{n}"
                    f"{abs(hash(user.address))}\nDate: Sun, 01 Nov 2026 10:00:00 +0000\n\n"
                    + "old mail\n" * 200).encode()
            name = f"1700000000.M{n}P1.base,S={len(data)}:2,S"
            for directory in (standby, primary):
                target = directory / "cur" / name
                target.write_bytes(data)
                os.chown(target, mail.pw_uid, mail.pw_gid)
        for instance in (lab.primary, lab.standby):
            run_command(["doveadm", "-c", str(instance.config_file), "mailbox", "status",
                         "-u", user.address, "messages", "INBOX"], timeout=600)


def change_flags(lab: Lab, count: int, flags: str) -> int:
    """Rename ``count`` baseline messages of each user to ``flags``: flag changes."""
    changed = 0
    for user in lab.users:
        cur = lab.standby.maildir(user.address) / "cur"
        for path in sorted(cur.glob("1700000000.*"))[:count]:
            path.rename(cur / f"{path.name.split(':', 1)[0]}:2,{flags}")
            changed += 1
    return changed


def one_run(lab: Lab, concurrency: int, messages: int, flags: int, step: int
            ) -> tuple[float, int, int, int]:
    """One outage and its timed failback: (seconds, appended, flag changes, passes)."""
    config = lab.config.model_copy(update={
        "sync": lab.config.sync.model_copy(update={"concurrency": concurrency})})
    store = open_store(config)
    try:
        change_state(config, store, "failover", "benchmark", "bench")
        changelog = ChangeLog(store)
        opened = changelog.start_outage()
        assert opened is not None
        outage = rescan(config, changelog, opened)  # the baseline
        write_outage_mail(lab, messages * len(lab.users), random.Random(step),
                          sizes=[(1, 2_000, 20_000)])
        changed = change_flags(lab, flags, FLAG_STEPS[step % len(FLAG_STEPS)])
        rescan(config, changelog, outage)
    finally:
        store.close()
    started = time.monotonic()
    report = run_failback(config, actor="bench")
    seconds = time.monotonic() - started
    assert report.state == "normal", report
    return seconds, report.counts.get("append:done", 0), changed, report.passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="100,300")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--flags", type=int, default=100)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    for users in (int(u) for u in args.users.split(",")):
        started = time.monotonic()
        with Lab.temporary(prefix="mcfbscale-", user_count=users) as lab:
            lab.part("sync-agent").stop()  # the bench records in its place, untimed
            seed_baseline(lab)
            print(f"# {users} users: lab and baseline in {time.monotonic() - started:.0f}s",
                  flush=True)
            for step, concurrency in enumerate(levels):
                seconds, appended, changed, passes = one_run(lab, concurrency, args.messages,
                                                             args.flags, step)
                rows.append((users, concurrency, seconds, appended, changed, passes))
                print(f"# {users} users, concurrency {concurrency}: {seconds:.1f}s", flush=True)
    print(f"\nfailback of a 4-hour outage, {args.messages} new messages and {args.flags} flag"
          f" changes per user (load {os.getloadavg()[0]:.1f}); runs of one lab in order, the"
          f" primary's INBOX grows {args.messages} messages per user per run")
    print(f"{'users':>6} {'conc.':>5} {'seconds':>8} {'appended':>9} {'flag chg':>9}"
          f" {'passes':>6} {'msg/s':>7} {'s/user':>7}")
    for users, concurrency, seconds, appended, changed, passes in rows:
        print(f"{users:>6} {concurrency:>5} {seconds:>8.1f} {appended:>9} {changed:>9}"
              f" {passes:>6} {appended / seconds:>7.0f} {seconds / users:>7.3f}")
    biggest = max(r[0] for r in rows)
    for users, concurrency, seconds, *_ in rows:
        if users == biggest:
            print(f"extrapolated to 10,000 users at concurrency {concurrency}:"
                  f" ~{seconds / users * 10_000 / 60:.0f} min (linear from {users} users)")


if __name__ == "__main__":
    main()
