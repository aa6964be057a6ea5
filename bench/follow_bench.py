"""The follow pass's cost on the primary (issue 19): IMAP requests per user per hour.

One lab, ``--users`` users with ``--messages`` journaled messages each (the same message, id
header included, APPENDed to the primary's INBOX and, with the journal header, to the standby's).
Then, with the primary's CONDSTORE and without it (the bounded scan: its capability hidden from
the pass), in one run:

1. the first pass (reads the whole window of every folder);
2. an hour's activity per user on the primary (``--read`` messages read, ``--filed`` moved to
   Archive, one deleted, ``--new`` new messages journaled), then a pass;
3. a pass with nothing new (the idle case: most passes).

Every IMAP command the pass sends (login, LIST, STATUS, SELECT/EXAMINE, SEARCH, FETCH, LOGOUT)
is counted as one request, by the tag imaplib draws for it. Requests per user per hour are the
idle pass and the active pass at ``sync.follow_interval_seconds`` (300 s: 12 passes an hour, one
of them with the hour's activity).

Usage: .venv/bin/python bench/follow_bench.py [--users 10] [--messages 1000]
"""

from __future__ import annotations

import argparse
import imaplib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.mail.imap import Append, imap_login, multiappend
from mailcontinuity.outage.follow import FollowResult, follow_all
from mailcontinuity.outage.primary import PrimaryMailbox

BODY = "body line of a benchmark message\r\n" * 20
REQUESTS = {"count": 0}
_new_tag = getattr(imaplib.IMAP4, "_new_tag")  # noqa: B009 - private, typeshed lacks it


def _counting_tag(self: imaplib.IMAP4) -> Any:
    REQUESTS["count"] += 1
    return _new_tag(self)


setattr(imaplib.IMAP4, "_new_tag", _counting_tag)  # noqa: B010 - as above


def message(address: str, number: int, journal: bool, message_id: str) -> bytes:
    journal_line = "X-Mailcontinuity-Journal: yes\r\n" if journal else ""
    return (f"X-Mailcontinuity-Id: {message_id}\r\n{journal_line}"
            f"From: sender@remote.test\r\nTo: {address}\r\nSubject: follow bench {number}\r\n"
            f"Message-ID: <{message_id}@bench.test>\r\nDate: Sun, 29 Nov 2026 01:00:00 +0000\r\n"
            "\r\n" + BODY).encode()


def journal(lab: Lab, user: LabUser, count: int) -> list[str]:
    """``count`` messages on the primary and as journal copies on the standby; their ids."""
    ids = [uuid.uuid4().hex for _ in range(count)]
    now = datetime.now(UTC)
    for role, journal_copy in (("primary", False), ("standby", True)):
        with imap_login(lab.endpoint(role, "imap"), user.login, user.password) as client:
            for start in range(0, count, 200):
                multiappend(client, "INBOX", [
                    Append(message(user.address, n, journal_copy, ids[n]), (), now)
                    for n in range(start, min(count, start + 200))])
    return ids


def activity(lab: Lab, user: LabUser, ids: list[str], read: int, filed: int,
             new: int) -> list[str]:
    with imap_login(lab.endpoint("primary", "imap"), user.login, user.password) as client:
        if not client.folder_exists("Archive"):
            client.create_folder("Archive")
        client.select_folder("INBOX")
        uids = client.search(["ALL"])
        client.add_flags(uids[:read], ["\\Seen"], silent=True)
        client.move(uids[read:read + filed], "Archive")
        client.delete_messages(uids[read + filed:read + filed + 1])
        client.expunge()
    return ids + journal(lab, user, new)


def measured(lab: Lab, users: list[LabUser]) -> tuple[int, float, list[FollowResult]]:
    REQUESTS["count"] = 0
    started = time.monotonic()
    results = follow_all(lab.config, [u.address for u in users], actor="bench")
    seconds = time.monotonic() - started
    assert all(not r.error for r in results), [r.error for r in results if r.error]
    return REQUESTS["count"], seconds, results


def run(lab: Lab, users: list[LabUser], args: argparse.Namespace,
        hide_condstore: bool) -> dict[str, tuple[int, float, int]]:
    original: Callable[[PrimaryMailbox], set[bytes]] = PrimaryMailbox.capabilities.fget  # type: ignore[attr-defined]
    if hide_condstore:
        PrimaryMailbox.capabilities = property(  # type: ignore[method-assign,assignment]
            lambda self: original(self) - {b"CONDSTORE", b"QRESYNC"})
    try:
        ids = {u.address: journal(lab, u, args.messages) for u in users}
        figures = {}
        requests, seconds, results = measured(lab, users)
        figures["first pass"] = (requests, seconds, sum(len(r.changes) for r in results))
        for user in users:
            ids[user.address] = activity(lab, user, ids[user.address], args.read, args.filed,
                                         args.new)
        requests, seconds, results = measured(lab, users)
        figures["after an hour's activity"] = (requests, seconds,
                                               sum(len(r.changes) for r in results))
        requests, seconds, results = measured(lab, users)
        figures["nothing new"] = (requests, seconds, sum(len(r.changes) for r in results))
        return figures
    finally:
        PrimaryMailbox.capabilities = property(original)  # type: ignore[method-assign,assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--read", type=int, default=20)
    parser.add_argument("--filed", type=int, default=10)
    parser.add_argument("--new", type=int, default=20)
    args = parser.parse_args()
    with Lab.temporary(prefix="mcbench-", user_count=2 * args.users) as lab:
        condstore = run(lab, lab.users[:args.users], args, hide_condstore=False)
        scan = run(lab, lab.users[args.users:2 * args.users], args, hide_condstore=True)
    users = args.users
    print(f"{users} users per variant, {args.messages} journaled messages each; an hour:"
          f" {args.read} read, {args.filed} filed, 1 deleted, {args.new} new")
    print(f"{'pass':<26}{'CONDSTORE req/user':>20}{'s':>7}{'scan req/user':>15}{'s':>7}"
          f"{'standby changes':>17}")
    for name in condstore:
        c, s = condstore[name], scan[name]
        print(f"{name:<26}{c[0] / users:>20.1f}{c[1]:>7.2f}{s[0] / users:>15.1f}{s[1]:>7.2f}"
              f"{c[2]:>9} / {s[2]}")
    passes = 3600 / 300
    for label, figures in (("CONDSTORE", condstore), ("bounded scan", scan)):
        per_hour = (figures["after an hour's activity"][0]
                    + (passes - 1) * figures["nothing new"][0]) / users
        print(f"{label}: {per_hour:.0f} requests per user per hour at 300 s passes"
              f" ({passes:.0f} passes, one with the hour's activity)")


if __name__ == "__main__":
    main()
