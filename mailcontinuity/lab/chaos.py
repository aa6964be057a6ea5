"""The chaos run: steady mail while the lab's parts are killed and restarted at random.

Messages go to the gateway at a steady rate while the primary, the standby, the milter, policyd
and the sync agent are killed (daemons with SIGKILL) and started again, in an order drawn from a
seeded random generator and logged, so a failing run can be replayed. At the end everything is
started again, the outage (if any) fails back, and every message the gateway accepted is looked
for in each recipient's primary mailbox: it must be there exactly once.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import smtplib
import threading
import time
from dataclasses import dataclass, field

from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.lab import Lab
from mailcontinuity.lab.mailbox import INTERNET_CLIENT
from mailcontinuity.lab.scenario import appended_since, audit_deliveries
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.reports.status import collect_status
from mailcontinuity.store.db import open_store

log = logging.getLogger(__name__)

CHAOS_PARTS = ("primary", "standby", "milter", "policyd", "sync-agent")
DAEMONS = ("milter", "policyd", "sync-agent")
SENDER = "chaos@remote.test"


@dataclass
class ChaosReport:
    seed: int
    actions: list[str] = field(default_factory=list)
    sent: int = 0
    accepted: list[tuple[str, list[str]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    journaled: int = 0
    routed_to_standby: int = 0
    merged: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    bounced: int = 0
    longest_wait_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.lost and not self.duplicated and self.bounced == 0

    def rows(self) -> list[tuple[str, str]]:
        deliveries = sum(len(recipients) for _, recipients in self.accepted)
        return [
            ("seed", str(self.seed)),
            ("kills and restarts", str(sum(1 for a in self.actions if " kill " in a))),
            ("messages sent", str(self.sent)),
            ("accepted by the gateway (deliveries)", f"{len(self.accepted)} ({deliveries})"),
            ("refused for now (client retries later)", str(len(self.refused))),
            ("journaled into the standby", str(self.journaled)),
            ("delivered to the standby in outages", str(self.routed_to_standby)),
            ("merged into the primary", str(self.merged)),
            ("bounced (must be 0)", str(self.bounced)),
            ("lost (must be 0)", str(len(self.lost))),
            ("duplicated (must be 0)", str(len(self.duplicated))),
            ("longest time a message waited", f"{self.longest_wait_seconds:.1f} s"),
        ]


class ChaosRun:
    """One bounded chaos run against a lab that is up with all its daemons."""

    def __init__(self, lab: Lab, seed: int, duration: float, rate: float,
                 settle_timeout: float = 180.0) -> None:
        self.lab = lab
        self.random = random.Random(seed)
        self.sender_random = random.Random(seed + 1)
        self.duration = duration
        self.rate = rate
        self.settle_timeout = settle_timeout
        self.report = ChaosReport(seed)
        self.users = [user for user in lab.users if not user.address.startswith("probe@")]
        self.log_offset = lab.gateway.log_file.stat().st_size
        self.started = time.time()

    def run(self) -> ChaosReport:
        stop = threading.Event()
        sender = threading.Thread(target=self._send_steadily, args=(stop,), daemon=True)
        sender.start()
        try:
            self._break_things(time.monotonic() + self.duration)
        finally:
            stop.set()
            sender.join(timeout=60)
            self._start_everything()
        self._settle()
        self._audit()
        return self.report

    def _note(self, action: str) -> None:
        line = f"{time.time() - self.started:6.1f}s {action}"
        self.report.actions.append(line)
        log.info("event=chaos action=%s", action)

    def _send_steadily(self, stop: threading.Event) -> None:
        interval = 1.0 / self.rate
        number = 0
        while not stop.is_set():
            number += 1
            recipients = [u.address for u in self.sender_random.sample(
                self.users, self.sender_random.choice((1, 1, 2)))]
            message = make_message(SENDER, recipients, f"chaos {self.report.seed}/{number}")
            self.report.sent += 1
            try:
                send_message(self.lab.gateway.smtp, message, SENDER, recipients,
                             source=INTERNET_CLIENT)
                self.report.accepted.append((message["Message-ID"], recipients))
            except (smtplib.SMTPException, OSError) as exc:
                # A 4xx or a dropped connection: the sending MTA would retry; not our loss.
                self.report.refused.append(f"{message['Message-ID']}: {exc}")
            stop.wait(interval)

    def _break_things(self, deadline: float) -> None:
        """Kill a random part, leave it down a random while, start it; until ``deadline``."""
        while time.monotonic() < deadline:
            time.sleep(self.random.uniform(1.0, 4.0))
            name = self.random.choice(CHAOS_PARTS)
            self._kill(name)
            time.sleep(self.random.uniform(0.5, 6.0))
            self._note(f"start {name}")
            self.lab.part(name).start()

    def _kill(self, name: str) -> None:
        part = self.lab.part(name)
        pid = part.pid()
        if name in DAEMONS and pid is not None:
            self._note(f"kill -9 {name} (pid {pid})")
            os.kill(pid, signal.SIGKILL)
            eventually(lambda: part.pid() is None, 10, f"{name} gone", interval=0.05)
        else:
            self._note(f"kill {name} (stop)")
            part.stop()

    def _start_everything(self) -> None:
        for name, part in self.lab.parts.items():
            if part.pid() is None:
                self._note(f"start {name} (end of run)")
                part.start()

    def _settle(self) -> None:
        """Wait until the queue is empty, the journal spool shipped and the state normal."""
        store = open_store(self.lab.config)
        deadline = time.monotonic() + self.settle_timeout
        try:
            while True:
                self.lab.gateway.flush()
                status = collect_status(self.lab.config, store)
                queue = self.lab.gateway.queued()
                journal = status.get("journal") or {}
                if status["state"] == "normal" and not queue and not journal.get("spooled"):
                    self._note("settled: state normal, queue empty, journal shipped")
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"chaos run did not settle within {self.settle_timeout:.0f}s:"
                        f" state {status['state']}, queue {len(queue)} messages,"
                        f" journal {journal.get('spooled')} spooled")
                time.sleep(1.0)
            self.report.journaled = int((collect_status(self.lab.config, store)
                                         .get("journal") or {}).get("shipped", 0))
            self.report.merged = appended_since(store, self.started)
        finally:
            store.close()

    def _audit(self) -> None:
        """Each accepted message exactly once per recipient on the primary; nothing bounced."""
        self.report.lost, self.report.duplicated, _ = audit_deliveries(
            self.lab, [(message_id, message_id, recipients)
                       for message_id, recipients in self.report.accepted])
        log_text = self.lab.gateway.log_file.read_text(errors="replace")[self.log_offset:]
        self.report.bounced = len(re.findall(r"status=bounced", log_text))
        self.report.routed_to_standby = len(re.findall(
            rf"relay=[^,]*:{self.lab.endpoint('standby', 'lmtp').port}, .*status=sent", log_text))
        delays = [float(d) for d in re.findall(r" delay=([0-9.]+), .*status=sent", log_text)]
        self.report.longest_wait_seconds = max(delays, default=0.0)
