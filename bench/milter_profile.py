"""Where the journal milter's own CPU goes per message, without Postfix or libmilter.

Feeds the same message through the journal milter's callbacks and through the empty pymilter's
(bench/empty_milter.py), in this process with pymilter's test context standing in for
libmilter, one message after another, the way smtp-source's messages arrive (MAIL, one RCPT,
DATA, the headers, end of header, the body in Postfix's 64 KiB chunks, end of message). Prints
CPU microseconds per message for both and the difference (our callbacks' own work), then the
functions cProfile finds most expensive in ours. The spool is real (a temporary directory on
the disk ``--dir`` names): each message waits for its fdatasync alone, so no group forms here.

    .venv/bin/python bench/milter_profile.py --messages 3000 --size 10240
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import Milter
from empty_milter import EmptyMilter
from Milter.testctx import TestCtx

from mailcontinuity.journal.milter import JournalMilter, JournalPolicy, JournalRuntime
from mailcontinuity.journal.spool import Spool

RECIPIENT = "alice@example.test"
SENDER = "bench@remote.test"
BODY_CHUNK = 65536  # what Postfix's milter client sends per body event


class BenchCtx(TestCtx):
    """libmilter's side: a header change is one message to Postfix, nothing parsed here."""

    def addheader(self, field: str, value: str, idx: int = -1) -> int:
        self._headerschanged = True
        return Milter.CONTINUE

    def chgheader(self, field: str, idx: int, value: str) -> int:
        self._headerschanged = True
        return Milter.CONTINUE


def smtp_source_message(size: int, number: int) -> tuple[list[tuple[str, bytes]], bytes]:
    """Headers and body as smtp-source -l sends them (its own few headers, then size bytes)."""
    headers = [("From", f" <{SENDER}>".encode()), ("To", f" <{RECIPIENT}>".encode()),
               ("Date", b" Sun, 29 Nov 2026 01:00:00 +0000"),
               ("Message-Id", f" <{number}.bench@remote.test>".encode()),
               ("Subject", b" bench")]
    line = b"La de da de da 1 2 3 4 5 6 7 8 9 0 a b c d e f g h i j k l m n o p\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return headers, body


def feed(factory: Callable[[], Milter.Base], messages: int, size: int) -> float:
    """CPU seconds for ``messages`` messages through the callbacks of ``factory``'s milter."""
    Milter.factory = factory
    started = time.process_time()
    for number in range(messages):
        headers, body = smtp_source_message(size, number)
        ctx = BenchCtx()
        ctx._setsymval("i", f"Q{number:08X}")
        ctx._setsymval("j", "gateway.example.test")
        ctx._setsymval("{client_addr}", "127.0.0.1")
        ctx._setsymval("{client_name}", "localhost")
        ctx._connect(helo="client.remote.test", ip="127.0.0.1")
        ctx._envfrom(f"<{SENDER}>")
        assert ctx._envrcpt(f"<{RECIPIENT}>") in (Milter.CONTINUE, Milter.NOREPLY)
        ctx._data()
        for name, value in headers:
            ctx._priv.header_bytes(name, value)
        ctx._eoh()
        for start in range(0, len(body), BODY_CHUNK):
            ctx._priv.body(body[start:start + BODY_CHUNK])
        assert ctx._eom() == Milter.CONTINUE
        ctx._close()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the temporary spool goes (a disk, as in production)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    # Offer every protocol step, as Postfix does; each milter's decorators pick its own.
    TestCtx.default_opts = [Milter.CURR_ACTS, 0x1fffff, 0, 0]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="mcprofile-") as directory:
        spool = Spool(Path(directory) / "spool")
        policy = JournalPolicy(id_header="X-Journal-Id",
                               protected_domains=frozenset({"example.test"}),
                               standby_nexthops=frozenset(), tempfail_on_spool_error=False)
        runtime = JournalRuntime(policy, spool, lambda error: None)
        journal: Callable[[], Milter.Base] = lambda: JournalMilter(runtime)  # noqa: E731
        feed(journal, 200, args.size)  # warm up (imports, first segment)
        feed(EmptyMilter, 200, args.size)
        empty = feed(EmptyMilter, args.messages, args.size)
        ours = feed(journal, args.messages, args.size)
        per = 1e6 / args.messages
        print(f"empty pymilter callbacks  {empty * per:8.1f} us CPU/message")
        print(f"journal milter callbacks  {ours * per:8.1f} us CPU/message")
        print(f"our own work              {(ours - empty) * per:8.1f} us CPU/message"
              f"  ({args.messages} messages, payload {args.size} bytes,"
              f" {spool.log.groups} groups)")
        profile = cProfile.Profile()
        profile.enable()
        feed(journal, args.messages, args.size)
        profile.disable()
        spool.log.close()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
