"""What the key=value log format and the audit trail cost (issue 9), side by side.

1. Formatting one typical log line: logging's stock ``Formatter`` (the format before issue 9)
   against ``KeyValueFormatter`` (arguments quoted, newlines folded).
2. One audit record (``store.audit.record_command``: SQLite row + log line): without syslog,
   and with the syslog copy sent to a bound unix datagram socket (drained by a thread, as a
   syslog daemon would).

Usage: .venv/bin/python bench/audit_bench.py [--lines 100000] [--records 2000]
"""

from __future__ import annotations

import argparse
import logging
import socket
import tempfile
import threading
import time
from pathlib import Path

from mailcontinuity.audit import audit_logger, send_audit_to_syslog
from mailcontinuity.logsetup import KeyValueFormatter
from mailcontinuity.store.audit import record_command
from mailcontinuity.store.db import SQLiteStore, StateStore


def per_line_us(formatter: logging.Formatter, count: int) -> float:
    record = logging.LogRecord(
        "mailcontinuity.sync.failback", logging.ERROR, __file__, 1,
        "event=append_refused user=%s folder=%r message_id=%s reason=%r",
        ("alice@example.test", "Projekte/Überblick", "<abc@example.test>",
         "NO [OVERQUOTA] Quota exceeded\n(mailbox full)"), None)
    started = time.perf_counter()
    for _ in range(count):
        formatter.format(record)
    return (time.perf_counter() - started) / count * 1e6


def per_record_us(store: StateStore, count: int) -> float:
    started = time.perf_counter()
    for number in range(count):
        record_command(store, "bench", "root", {"outcome": "ok", "n": number}, "local")
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=2000)
    args = parser.parse_args()
    stock = logging.Formatter("mailcontinuity: %(levelname)s %(name)s %(message)s")
    print(f"log line format ({args.lines} lines), microseconds per line")
    print(f"  stock logging.Formatter   {per_line_us(stock, args.lines):8.2f}")
    print(f"  KeyValueFormatter         {per_line_us(KeyValueFormatter(), args.lines):8.2f}")

    audit_logger.propagate = False  # measure the record, not the terminal
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "state.db")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(Path(tmp) / "log.sock"))
        received = [0]

        def drain() -> None:
            while receiver.recv(65536):
                received[0] += 1

        threading.Thread(target=drain, daemon=True).start()
        try:
            plain = per_record_us(store, args.records)
            send_audit_to_syslog(Path(tmp) / "log.sock")
            with_syslog = per_record_us(store, args.records)
            send_audit_to_syslog(None)
        finally:
            store.close()
        deadline = time.monotonic() + 5
        while received[0] < args.records and time.monotonic() < deadline:
            time.sleep(0.01)
        receiver.close()
    print(f"audit record ({args.records} records, WAL, one transaction each), microseconds")
    print(f"  state store only          {plain:8.1f}")
    print(f"  state store + syslog      {with_syslog:8.1f}   ({received[0]} lines received)")


if __name__ == "__main__":
    main()
