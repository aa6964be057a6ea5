"""``make demo``: bring up the lab, send mail through the gateway, show where it landed.

It prints what it measured and exits non-zero if any message went missing, so the demo doubles
as a smoke test. It grows into the full outage drill as failover and failback land.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mailcontinuity.lab import Lab
from mailcontinuity.lab.mailbox import make_message, send_message, wait_for_message
from mailcontinuity.state import StateStore
from mailcontinuity.status import collect_status, render_status

SENDER = "newsletter@remote.test"


def run_demo(directory: Path) -> int:
    print(f"== lab up in {directory}")
    lab = Lab.up(directory)
    try:
        print(f"   gateway smtp {lab.gateway.smtp}, primary imap {lab.endpoint('primary', 'imap')},"
              f" standby imap {lab.endpoint('standby', 'imap')}")
        print("== mail through the gateway, one message per user")
        sent = []
        for user in lab.users:
            message = make_message(SENDER, [user.address], f"demo message for {user.address}")
            started = time.monotonic()
            send_message(lab.gateway.smtp, message, SENDER, [user.address])
            sent.append((user, message["Message-ID"], started))
        delivered = 0
        for user, message_id, started in sent:
            raw = wait_for_message(lab.endpoint("primary", "imap"), user.login, user.password,
                                   message_id)
            seconds = time.monotonic() - started
            verdict = f"in primary INBOX after {seconds:.2f}s" if raw else "MISSING"
            delivered += raw is not None
            print(f"   {user.address:<22} {message_id}  {verdict}")
        print("== status")
        store = StateStore(lab.config.state.path)
        print(render_status(collect_status(lab.config, store)))
        store.close()
        lost = len(sent) - delivered
        print("== measured")
        print(f"   messages sent {len(sent)}, delivered to primary {delivered}, lost {lost}")
        return 0 if lost == 0 else 1
    finally:
        print("== lab down")
        Lab.down(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, help="lab directory (default: a fresh one in /tmp)")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="mailcontinuity-demo-", dir="/tmp"))
    try:
        code = run_demo(directory)
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
