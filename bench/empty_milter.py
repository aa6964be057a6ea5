"""The floor for the journal milter benchmark: a pymilter that does nothing.

It negotiates the same protocol steps as the journal milter (no connect/helo/data callbacks,
no-reply envelope, header and body callbacks) and adds one header at end of message, so the
difference to it is what our own work costs; the difference to no milter is what pymilter,
libmilter and Postfix's milter client cost.

    .venv/bin/python bench/empty_milter.py unix:/path/to/socket [--journal-steps]

``--journal-steps``: the protocol steps the journal milter negotiates since issue 21 (HELO and
DATA as no-reply callbacks for the copy's Received field, RCPT answered, for SMTPUTF8 refusals),
still doing nothing: what those steps cost any milter, apart from our own work.
"""

from __future__ import annotations

import os
import sys

import Milter


class EmptyMilter(Milter.Base):
    @Milter.noreply
    def envfrom(self, sender: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, recipient: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        self.addheader("X-Bench", "1")
        return Milter.CONTINUE


class EmptyJournalStepsMilter(EmptyMilter):
    @Milter.noreply
    def hello(self, name: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def data(self) -> int:
        return Milter.CONTINUE

    def envrcpt(self, recipient: str, *params: str) -> int:
        return Milter.CONTINUE


def main() -> None:
    os.umask(0o000)  # the socket must be writable by Postfix's smtpd
    Milter.factory = EmptyJournalStepsMilter if "--journal-steps" in sys.argv else EmptyMilter
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("empty", sys.argv[1], timeout=240)


if __name__ == "__main__":
    main()
