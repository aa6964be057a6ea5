"""How the standby slows password guessing: Dovecot's auth_failure_delay and its per-address
penalty, measured on a lab standby hardened as check-config prints it.

Prints, for one client address, the seconds each LOGIN with a new wrong password took, then the
same wrong password again (a client with a stale saved password), then the right password from
another address at once (the penalty is per address: the user is not locked out).

    .venv/bin/python bench/login_penalty.py [--guesses 4]

Needs root (the lab). Takes about a minute.
"""

from __future__ import annotations

import argparse
import uuid

from mailcontinuity.lab import Lab
from mailcontinuity.lab.mailbox import timed_login

GUESSER, STALE, LEGITIMATE = "127.0.0.5", "127.0.0.6", "127.0.0.3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guesses", type=int, default=4)
    args = parser.parse_args()
    with Lab.temporary(prefix="mclab-bench-") as lab:
        imap, tls = lab.endpoint("standby", "imap"), lab.tls("standby")
        user = lab.users[1]
        print(f"{'client':<10} {'attempt':<28} {'seconds':>8}  answer")
        for n in range(args.guesses):
            seconds, answer = timed_login(imap, tls, GUESSER, user.login, uuid.uuid4().hex)
            print(f"{GUESSER:<10} {f'new wrong password {n + 1}':<28} {seconds:8.2f}  {answer}")
        stale = uuid.uuid4().hex
        for n in range(3):
            seconds, answer = timed_login(imap, tls, STALE, user.login, stale)
            print(f"{STALE:<10} {f'same wrong password {n + 1}':<28} {seconds:8.2f}  {answer}")
        seconds, answer = timed_login(imap, tls, LEGITIMATE, user.login, user.password)
        print(f"{LEGITIMATE:<10} {'right password':<28} {seconds:8.2f}  {answer}")

if __name__ == "__main__":
    main()
