"""Sync agent cost curve: N users' Maildirs watched (issue 17).

For each N (default 1,000, 3,000 and 10,000 users, each with INBOX and five folders, Sent,
Drafts, Junk, Trash and Archive, and ``--messages`` messages in INBOX), in a fresh process:

- start-up: ``SyncAgent(config)`` and its first ``discover_users`` (every watch added);
- the resident memory the agent added (VmRSS after minus before);
- inotify watches used, against the kernel's ``fs.inotify.max_user_watches``, and what the
  previous recursive watch (``rec=True``: every directory, ``tmp/`` and the folder directories
  included) would have needed for the same tree;
- the baseline rescan at an outage's start (``follow_state`` in failover), per user;
- the cost of mapping one event to its user: the watch-descriptor dictionary now, the previous
  scan over every user (measured on the same agent, 2,000 events).

The limit counts every watch of one Unix user, across processes: on a shared machine the
measuring process drops to ``--as-user`` (default nobody) before it watches anything, so that
its watches do not eat those of root's daemons and other labs.

    .venv/bin/python bench/sync_agent_bench.py [--users 1000,3000,10000] [--messages 5]

Needs no lab: Maildirs and a state store in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FOLDERS = ("", ".Sent", ".Drafts", ".Junk", ".Trash", ".Archive")
DOMAIN = "example.org"


def build_tree(root: Path, users: int, messages: int) -> None:
    """``users`` Maildirs as Dovecot leaves them, ``messages`` small messages in each INBOX."""
    os.makedirs(root / DOMAIN)
    for n in range(users):
        maildir = root / DOMAIN / f"user{n:05d}"
        os.mkdir(maildir)
        for folder in FOLDERS:
            if folder:
                os.mkdir(maildir / folder)
            for sub in ("new", "cur", "tmp"):
                os.mkdir(maildir / folder / sub)
        for m in range(messages):
            (maildir / "cur" / f"17000{m:05d}.M{m}P{n}.bench:2,S").write_bytes(
                f"From: a@{DOMAIN}\r\nMessage-ID: <{n}.{m}@bench>\r\nSubject: m\r\n\r\nx\r\n"
                .encode())


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(root: Path, users: int, as_user: str, baseline_max: int) -> dict[str, float]:
    """One size, in this process: see the module docstring."""
    from mailcontinuity.config import parse_config
    from mailcontinuity.outage.recorder import SyncAgent, max_user_watches
    from mailcontinuity.store.state import transition

    (root / "spool").mkdir(exist_ok=True)
    if as_user:  # everything is imported: the interpreter's own files need no access now
        account = pwd.getpwnam(as_user)
        for path in (root, root / "spool"):
            os.chown(path, account.pw_uid, account.pw_gid)
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    config = parse_config({
        "state": {"path": str(root / "state.db")},
        "domains": {"protected": [DOMAIN]},
        "primary": {"delivery": "smtp:192.0.2.1:25", "imap": "192.0.2.1:143"},
        "standby": {"imap": "127.0.0.1:143", "lmtp": "127.0.0.1:24",
                    "maildir": str(root / "mail" / "%d" / "%n")},
        "milter": {"spool_dir": str(root / "spool")},
    }, root / "mailcontinuity.toml")
    before = rss_kib()
    started = time.perf_counter()
    agent = SyncAgent(config)
    agent.discover_users()
    startup = time.perf_counter() - started
    rss = rss_kib() - before
    watches = len(agent.watches.watches)
    recursive = sum(1 for _ in (root / "mail").glob(f"{DOMAIN}/*/**/"))  # every dir, rec=True
    assert len(agent.maildirs) == users and not agent.unwatched, "not every user watched"

    class Event:  # what pyinotify hands over: a watch descriptor
        def __init__(self, wd: int) -> None:
            self.wd = wd

    events = [Event(wd) for wd in list(agent.wd_user)[-2000:]]
    started = time.perf_counter()
    for event in events:
        agent._owner(event)
    by_wd = (time.perf_counter() - started) / len(events)
    paths = [Path(agent.watches.watches[e.wd].path) / "1.M1P1.x" for e in events[-100:]]
    started = time.perf_counter()
    for path in paths:  # the previous _owner: every user compared per event
        next((user for user, maildir in agent.maildirs.items()
              if path == maildir or maildir in path.parents), None)
    by_scan = (time.perf_counter() - started) / len(paths)

    baseline = float("nan")
    if users <= baseline_max:
        transition(agent.store, "failover", "bench", "bench")
        started = time.perf_counter()
        agent.follow_state()
        baseline = time.perf_counter() - started
    agent.notifier.stop()
    agent.hooks.close(1)
    agent.store.close()
    return {"users": users, "startup_s": startup, "rss_mib": rss / 1024, "watches": watches,
            "recursive_watches": recursive, "limit": max_user_watches() or 0,
            "lookup_us": by_wd * 1e6, "scan_lookup_us": by_scan * 1e6,
            "baseline_s": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1000,3000,10000")
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--as-user", default="nobody", help="'' to measure as yourself")
    parser.add_argument("--baseline-max", type=int, default=3000,
                        help="rescan (one fsync per user) only up to this many users")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: measure one tree
    args = parser.parse_args()
    if args.one:
        root, users = args.one.rsplit(":", 1)
        print(json.dumps(measure(Path(root), int(users), args.as_user, args.baseline_max)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="mc-syncbench-") as tmp:
        os.chmod(tmp, 0o755)
        for users in [int(n) for n in args.users.split(",")]:
            root = Path(tmp) / f"n{users}"
            started = time.perf_counter()
            build_tree(root / "mail", users, args.messages)
            built = time.perf_counter() - started
            out = subprocess.run([sys.executable, __file__, "--one", f"{root}:{users}",
                                  "--as-user", args.as_user, "--baseline-max",
                                  str(args.baseline_max)],
                                 check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row["build_s"] = built
            rows.append(row)
            print(f"# {users} users: tree built in {built:.1f}s, measured", flush=True)
            shutil.rmtree(root)
    print(f"\nSync agent, {len(FOLDERS)} folders per user, {args.messages} messages in INBOX"
          f" (load: {os.getloadavg()[0]:.1f})")
    print(f"{'users':>7} {'start-up s':>10} {'RSS MiB':>8} {'watches':>8} {'limit':>8}"
          f" {'use%':>5} {'old rec':>8} {'event us':>9} {'old us':>8} {'baseline s':>10}"
          f" {'ms/user':>7}")
    for r in rows:
        print(f"{r['users']:>7} {r['startup_s']:>10.2f} {r['rss_mib']:>8.1f} {r['watches']:>8}"
              f" {r['limit']:>8} {100 * r['watches'] / max(r['limit'], 1):>5.1f}"
              f" {r['recursive_watches']:>8} {r['lookup_us']:>9.2f} {r['scan_lookup_us']:>8.0f}"
              f" {r['baseline_s']:>10.2f} {1000 * r['baseline_s'] / r['users']:>7.2f}")
    first, last = rows[0], rows[-1]
    grow = last["users"] / first["users"]
    print(f"\nx{grow:.0f} users: start-up x{last['startup_s'] / first['startup_s']:.1f},"
          f" RSS x{last['rss_mib'] / max(first['rss_mib'], 0.1):.1f},"
          f" watches x{last['watches'] / first['watches']:.1f},"
          f" per-event look-up x{last['lookup_us'] / first['lookup_us']:.1f}"
          f" (the previous scan x{last['scan_lookup_us'] / first['scan_lookup_us']:.1f}),"
          f" baseline rescan x{last['baseline_s'] / first['baseline_s']:.1f}")
    measured = [r for r in rows if r["baseline_s"] == r["baseline_s"]]
    if measured and measured[-1] is not last:
        per_user = measured[-1]["baseline_s"] / measured[-1]["users"]
        print(f"baseline rescan at {last['users']} users not run (--baseline-max): linear from"
              f" {measured[-1]['users']} users, about {per_user * last['users']:.0f}s")
    users_at_limit = last["limit"] // (1 + 2 * len(FOLDERS))
    print(f"watches per user: {1 + 2 * len(FOLDERS)} (previously {len(FOLDERS) * 4});"
          f" fs.inotify.max_user_watches={last['limit']} fits {users_at_limit} such users"
          f" (previously {last['limit'] // (len(FOLDERS) * 4)})")


if __name__ == "__main__":
    main()
