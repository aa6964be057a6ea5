"""Credential continuity (issue 18): what a login to the standby costs when the directory
answers, when it is down (connection refused: the copy answers), and when it hangs, with the
directory asked first (the default) and with the copy asked first; and what a refresh costs.

A lab of its own with its users in a real slapd (``--directory ldap``); every login is an IMAP
LOGIN over STARTTLS to the standby from its own loopback address (no login penalty mixes in).

    .venv/bin/python bench/credentials_fallback.py [--users 200] [--logins 5]

Needs root (the lab). Takes about two minutes (the hung case waits 30 s on purpose).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time

from mailcontinuity.credentials.sync import refresh_credentials
from mailcontinuity.lab import Lab
from mailcontinuity.lab.mailbox import timed_login

HUNG_WAIT_SECONDS = 30


def logins(lab: Lab, count: int, subnet: int) -> list[float]:
    imap, tls = lab.endpoint("standby", "imap"), lab.tls("standby")
    seconds = []
    for n, user in enumerate(lab.users[:count]):
        took, answer = timed_login(imap, tls, f"127.0.{subnet}.{n + 1}", user.login,
                                   user.password)
        assert "OK" in answer.upper() or "Logged in" in answer, answer
        seconds.append(took)
    return seconds


def row(what: str, seconds: list[float]) -> None:
    print(f"{what:<46} {len(seconds):>6} {statistics.median(seconds):>10.3f}"
          f" {max(seconds):>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--logins", type=int, default=5)
    args = parser.parse_args()
    with Lab.temporary(prefix="mclab-bench-", user_count=args.users,
                       directory_kind="ldap") as lab:
        assert lab.directory is not None
        refreshes = []
        for _ in range(3):
            started = time.monotonic()
            report = refresh_credentials(lab.config)
            refreshes.append(time.monotonic() - started)
            assert not report.failed, report.reason()
        print(f"credentials-sync of {report.users} users: median"
              f" {statistics.median(refreshes):.3f}s over 3 runs")
        print(f"{'standby IMAP LOGIN':<46} {'logins':>6} {'median s':>10} {'max s':>9}")
        row("directory answers (passdb ldap)", logins(lab, args.logins, 19))
        lab.part("directory").stop()
        row("directory down, refused (the copy answers)", logins(lab, args.logins, 20))
        lab.part("directory").start()
        row("directory back (passdb ldap again)", logins(lab, args.logins, 21))
        pid = lab.directory.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            imap, tls = lab.endpoint("standby", "imap"), lab.tls("standby")
            user = lab.users[0]
            try:
                took, answer = timed_login(imap, tls, "127.0.22.1", user.login, user.password)
                print(f"{'directory hung (SIGSTOP)':<46} {1:>6} {took:>10.3f}  {answer}")
            except OSError:
                print(f"{'directory hung (SIGSTOP)':<46} {1:>6} no answer within"
                      f" {HUNG_WAIT_SECONDS}s (imaplib's timeout)")
        finally:
            os.kill(pid, signal.SIGCONT)
        # check_first = "copy": the standby's passdb rendered again from the configuration.
        text = lab.config_file.read_text()
        lab.config_file.write_text(text.replace("\n[credentials]\n",
                                                '\n[credentials]\ncheck_first = "copy"\n', 1))
        copy_first = Lab.load(lab.dir)
        copy_first.standby.stop()
        copy_first.standby.write_config()
        copy_first.standby.start()
        row('check_first = "copy", directory answers', logins(copy_first, args.logins, 23))
        os.kill(pid, signal.SIGSTOP)
        try:
            row('check_first = "copy", directory hung (SIGSTOP)',
                logins(copy_first, args.logins, 24))
        finally:
            os.kill(pid, signal.SIGCONT)


if __name__ == "__main__":
    main()
