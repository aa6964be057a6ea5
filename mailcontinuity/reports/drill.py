"""``mailcontinuity drill``: the continuity test from the administrators' DR checklist, automated.

It runs against the configured deployment (the lab is just one), acting as a user would with a
probe account: reach the standby, log in, send from the standby, receive through the gateway,
check the journal lag, and switch routing for the probe address alone. Each step says what to
check next when it fails, and the report is archived with a timestamp as audit evidence.
"""

from __future__ import annotations

import json
import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from mailcontinuity.config import Config, ConfigError, read_secret
from mailcontinuity.credentials.copy import read_logins
from mailcontinuity.credentials.freshness import copy_status
from mailcontinuity.deploy.routing import nexthop, switch_route
from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.smtp import make_message, offered_extensions, send_message
from mailcontinuity.mail.tls import Side, TLSError, TLSPolicy, require_starttls
from mailcontinuity.outage.preflight import preflight
from mailcontinuity.outage.primary import PrimaryError, connect, read_admin_password
from mailcontinuity.reports.status import collect_status
from mailcontinuity.sieve.replicate import sieve_sync
from mailcontinuity.store.db import StateStore
from mailcontinuity.store.state import current_state
from mailcontinuity.transitions import ROUTE_IN_STATE


@dataclass
class StepResult:
    name: str
    passed: bool
    seconds: float
    detail: str
    advice: str = ""
    skipped: bool = False


@dataclass
class DrillReport:
    started_at: float
    steps: list[StepResult] = field(default_factory=list)
    archived_to: str | None = None

    @property
    def passed(self) -> bool:
        return all(step.passed or step.skipped for step in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "started_at": self.started_at,
                "archived_to": self.archived_to, "steps": [asdict(s) for s in self.steps]}


class StepFailed(Exception):
    """A drill step failed; ``advice`` tells the operator where to look next."""

    def __init__(self, detail: str, advice: str) -> None:
        super().__init__(detail)
        self.advice = advice


class Drill:
    """One drill run; steps run in order and a failed step does not stop the later ones."""

    def __init__(self, config: Config, store: StateStore) -> None:
        self.config = config
        self.store = store
        self.settings = config.drill
        self.probe = self._probe_address()
        self.password = read_secret(config, "drill.probe_password_file")
        self.tls = {"primary": TLSPolicy.of(config, "primary"),
                    "standby": TLSPolicy.of(config, "standby")}
        self.report = DrillReport(started_at=time.time())
        self.sent_ids: list[str] = []

    def _probe_address(self) -> str:
        if not self.settings.probe_address:
            raise ConfigError(f"{self.config.source}: key 'drill.probe_address' is required for"
                              " the drill: a mailbox on the primary and the standby to test with")
        return self.settings.probe_address

    def run(self) -> DrillReport:
        self.step("standby reachable", self.standby_reachable,
                  "check that the standby's Dovecot runs and its ports are open from here")
        self.step("login with production credentials", self.login_on_standby,
                  "check the standby's passdb: it must use the organisation's user directory")
        self.step("send from the standby", self.send_from_standby,
                  "check the standby's submission service and its relay to the gateway"
                  " (submission_relay_host), then the gateway's mail log")
        self.step("receive through the gateway into the standby", self.receive_into_standby,
                  "check that the gateway accepts mail and that the journal milter runs"
                  " (mailcontinuity status: journal)")
        self.step("journal lag", self.journal_lag,
                  "check mailcontinuity status: a growing spool means the standby is not"
                  " accepting journal copies")
        self.step("routing switch for the probe address", self.routing_switch,
                  "check the gateway's transport table and the standby's LMTP listener")
        self.step("failback credentials on the primary", self.failback_preflight,
                  "check [sync] (login_method, admin_login, password_file) against the"
                  " primary's admin or master user setup: docs/primaries.md")
        self.step("international mail (SMTPUTF8)", self.smtputf8_routes,
                  "set primary.smtputf8 / standby.smtputf8 to what each store's listener"
                  " offers (docs/international.md), then restart the milter")
        self.step("sieve scripts in sync", self.sieve_scripts_in_sync,
                  "run mailcontinuity sieve-sync and fix what it names (a script on the"
                  " primary, or the admin login on either ManageSieve server)")
        self.step("credentials copy on the standby", self.credentials_copy,
                  "run 'mailcontinuity credentials-sync' on the standby and check its timer"
                  " (docs/credentials.md)")
        self.clean_up()
        return self.report

    def step(self, name: str, action: Callable[[], str], advice: str) -> None:
        started = time.monotonic()
        try:
            detail = action()
            result = StepResult(name, True, time.monotonic() - started, detail)
        except _Skip as skip:
            result = StepResult(name, False, 0.0, str(skip), skipped=True)
        except StepFailed as failure:
            result = StepResult(name, False, time.monotonic() - started, str(failure),
                                failure.advice or advice)
        except Exception as exc:  # noqa: BLE001 - a drill reports every failure, it never crashes
            result = StepResult(name, False, time.monotonic() - started,
                                f"{type(exc).__name__}: {exc}", advice)
        self.report.steps.append(result)

    # -- the steps -----------------------------------------------------------------------------

    def standby_reachable(self) -> str:
        standby = self.config.standby
        endpoints = {"imap": standby.imap, "lmtp": standby.lmtp,
                     "submission": standby.submission}
        for name, endpoint in endpoints.items():
            if endpoint is None:
                continue
            try:
                with socket.create_connection((endpoint.host, endpoint.port),
                                              timeout=self.settings.step_timeout) as conn:
                    conn.settimeout(self.settings.step_timeout)
                    # Behind implicit TLS the greeting comes only after a handshake.
                    greeting = (b"(TLS)" if self.tls["standby"].implicit and name != "lmtp"
                                else conn.recv(512))
            except OSError as exc:
                raise StepFailed(f"standby {name} {endpoint}: {exc}", "") from None
            if not greeting:
                raise StepFailed(f"standby {name} {endpoint} closed without a greeting", "")
        return ", ".join(f"{name} {ep}" for name, ep in endpoints.items() if ep)

    def login_on_standby(self) -> str:
        with imap_login(self.config.standby.imap, self.probe, self.password,
                        self.tls["standby"]) as client:
            client.select_folder("INBOX", readonly=True)
        return f"{self.probe} logged into the standby's IMAP"

    def send_from_standby(self) -> str:
        submission = self.config.standby.submission
        if submission is None:
            raise _Skip("standby.submission is not configured")
        message = self._message("sent from the standby")
        # As itself: the gateway refuses a sender the login does not own (deploy.senders).
        message.replace_header("From", self.probe)
        tls = self.tls["standby"]
        connect = (partial(smtplib.SMTP_SSL, context=tls.context) if tls.implicit
                   else smtplib.SMTP)
        with connect(submission.host, submission.port, timeout=self.settings.step_timeout) as smtp:
            smtp.ehlo()
            if not tls.implicit:
                require_starttls(smtp, tls, "submission", submission)
            smtp.login(self.probe, self.password)
            smtp.send_message(message, to_addrs=[self.probe])
        route = ROUTE_IN_STATE[current_state(self.store).name]
        seconds = self._wait_for(route, message["Message-ID"], lambda headers: True)
        store = self.config.primary.imap if route == "primary" else self.config.standby.imap
        return f"delivered to the {route} ({store}) after {seconds:.1f}s"

    def receive_into_standby(self) -> str:
        message = self._message("through the gateway")
        send_message(self.config.gateway.smtp, message, "drill@mailcontinuity.invalid",
                     [self.probe])
        seconds = self._wait_for("standby", message["Message-ID"], lambda headers: True)
        return f"in the standby INBOX after {seconds:.1f}s"

    def journal_lag(self) -> str:
        journal = collect_status(self.config, self.store).get("journal")
        if not journal:
            raise StepFailed("the journal reports nothing (milter not running?)", "")
        lag = float(journal.get("lag_seconds", 0.0))
        if lag > self.settings.max_journal_lag_seconds:
            raise StepFailed(f"journal lag {lag:.1f}s exceeds"
                             f" {self.settings.max_journal_lag_seconds:.0f}s"
                             f" ({journal.get('spooled')} copies spooled)", "")
        return f"lag {lag:.1f}s, {journal.get('spooled', 0)} spooled"

    def routing_switch(self) -> str:
        state = current_state(self.store).name
        if state != "normal":
            raise _Skip(f"state is {state}: the probe's route is already the standby's")
        try:
            switch_route(self.config, "primary", overrides={self.probe: "standby"})
            message = self._message("routed to the standby")
            send_message(self.config.gateway.smtp, message, "drill@mailcontinuity.invalid",
                         [self.probe])
            seconds = self._wait_for("standby", message["Message-ID"],
                                     lambda headers: JOURNAL_HEADER.lower().encode()
                                     not in headers.lower())
        finally:
            switch_route(self.config, ROUTE_IN_STATE[current_state(self.store).name])
        return f"probe mail routed to the standby's LMTP after {seconds:.1f}s; others unchanged"

    def smtputf8_routes(self) -> str:
        """What each store's listener offers against what the milter is told it offers.

        Told "yes" where the listener says no, the gateway would accept internationalised mail
        and bounce it: a failure. Told "no" (the safe default) it refuses such mail at SMTP
        time; the detail says so, since that is mail a site does not get during an outage."""
        notes = []
        for side in ("primary", "standby"):
            configured = self.config.primary.smtputf8 if side == "primary" \
                else self.config.standby.smtputf8
            delivery = nexthop(self.config, side)
            try:
                offered = "smtputf8" in offered_extensions(delivery, self.tls[side],
                                                           self.settings.step_timeout)
            except (OSError, smtplib.SMTPException, TLSError) as exc:
                notes.append(f"{side} {delivery}: not asked ({exc})")
                continue
            if configured and not offered:
                raise StepFailed(
                    f"{side}.smtputf8 = true but {delivery} does not offer SMTPUTF8: the gateway"
                    " accepts internationalised mail and then bounces it",
                    f"set {side}.smtputf8 = false in {self.config.source} and restart the milter")
            if offered and not configured:
                notes.append(f"{side} {delivery} offers SMTPUTF8 but {side}.smtputf8 = false:"
                             " internationalised mail is refused needlessly")
            elif not offered:
                when = "during an outage (451 4.6.7, retried after failback)" \
                    if side == "standby" else "(550 5.6.7, at SMTP time)"
                notes.append(f"{side} {delivery} does not offer SMTPUTF8: internationalised"
                             f" mail is refused {when}")
            else:
                notes.append(f"{side} {delivery} offers SMTPUTF8: internationalised mail"
                             " is delivered")
        return "; ".join(notes)

    def failback_preflight(self) -> str:
        """Failback's login and what it will need (CREATE, the folder mapping), checked now
        rather than at the end of an outage."""
        state = current_state(self.store).name
        if state != "normal":
            raise _Skip(f"state is {state}: failback runs its own preflight before it starts")
        checked = preflight(self.config, self.probe)
        if not checked.ok:
            raise StepFailed(checked.failed, "")
        return checked.summary()

    def sieve_scripts_in_sync(self) -> str:
        """Users' filters and out-of-office replies must be on the standby before it is needed."""
        if self.config.primary.managesieve is None or self.config.standby.managesieve is None:
            raise _Skip("primary.managesieve or standby.managesieve is not configured")
        state = current_state(self.store).name
        if state != "normal":
            raise _Skip(f"state is {state}: the primary's scripts are not the ones in use")
        report = sieve_sync(self.config)
        if report.failed:
            raise StepFailed(report.reason(), "")
        copied = sum(len(user.copied) for user in report.users)
        return f"{len(report.users)} user(s) in sync, {copied} script(s) copied now"

    def credentials_copy(self) -> str:
        """The standby can check passwords without the directory: its copy is there, fresh,
        refreshed without error, and holds the probe's login (read here, never its hash)."""
        copy = copy_status(self.config, self.store, time.time())
        if copy is None:
            raise _Skip("no [credentials]: the standby asks the directory alone")
        if copy.written_at is None:
            raise StepFailed(f"no copy at {copy.copy_file}", "")
        if copy.last_refresh_ok is False:
            raise StepFailed(f"the last refresh failed: {copy.last_refresh_detail}", "")
        if copy.too_old:
            raise StepFailed(f"the copy is {copy.age_seconds or 0:.0f}s old (over"
                             f" {copy.max_age_seconds:g}s of credentials.max_age_seconds)", "")
        if not copy.on_this_host:
            return (f"last refresh {copy.age_seconds or 0:.0f}s ago (the copy is on the"
                    " standby's host; run the drill there to check its content)")
        if self.probe not in read_logins(Path(copy.copy_file)):
            raise StepFailed(f"{self.probe} is not in {copy.copy_file}: while the directory is"
                             " away the standby would refuse it (locked, removed, outside"
                             " credentials.filter, or no readable hash?)", "")
        return (f"copy {copy.age_seconds or 0:.0f}s old, {copy.users} users, {self.probe}"
                " included")

    # -- helpers -------------------------------------------------------------------------------

    def _message(self, what: str):
        message = make_message("drill@mailcontinuity.invalid", [self.probe],
                               f"mailcontinuity drill: {what}")
        self.sent_ids.append(message["Message-ID"])
        return message

    @contextmanager
    def _probe_mailbox(self, side: Side) -> Iterator[IMAPClient]:
        """The probe's mailbox on ``side``, logged in with its password; on a primary reached
        by XOAUTH2 (Microsoft 365, Google: no passwords) as failback logs in instead."""
        if side == "primary" and self.config.sync.login_method == "xoauth2":
            try:
                mailbox = connect(self.config, self.probe, read_admin_password(self.config))
            except PrimaryError as exc:
                raise StepFailed(str(exc), "") from None
            try:
                yield mailbox.client
            finally:
                mailbox.close()
            return
        endpoint = self.config.primary.imap if side == "primary" else self.config.standby.imap
        with imap_login(endpoint, self.probe, self.password, self.tls[side]) as client:
            yield client

    def _wait_for(self, side: Side, message_id: str, accept: Callable[[bytes], bool]) -> float:
        """Seconds until a copy of ``message_id`` that ``accept`` likes is in the INBOX."""
        started = time.monotonic()
        endpoint = self.config.primary.imap if side == "primary" else self.config.standby.imap
        with self._probe_mailbox(side) as client:
            while time.monotonic() - started < self.settings.step_timeout:
                client.select_folder("INBOX", readonly=True)
                uids = client.search(["HEADER", "Message-ID", message_id])
                if uids:
                    fetched = client.fetch(uids, ["BODY.PEEK[HEADER]"])
                    if any(accept(data[b"BODY[HEADER]"]) for data in fetched.values()):
                        return time.monotonic() - started
                time.sleep(0.25)
        raise StepFailed(f"{message_id} did not arrive at {endpoint} within"
                         f" {self.settings.step_timeout:.0f}s", "")

    def clean_up(self) -> None:
        """Remove the drill's messages from the probe's mailboxes on both sides."""
        sides: tuple[Side, ...] = ("primary", "standby")
        for side in sides:
            try:
                with self._probe_mailbox(side) as client:
                    client.select_folder("INBOX")
                    for message_id in self.sent_ids:
                        uids = client.search(["HEADER", "Message-ID", message_id])
                        if uids:
                            client.delete_messages(uids)
                    client.expunge()
            except (OSError, IMAPClient.Error, TLSError, StepFailed):
                continue  # a part that is down keeps its probe mail; harmless


class _Skip(Exception):
    """A step that does not apply in the current state."""


def archive(report: DrillReport, directory: Path) -> Path:
    """Write the report as JSON and text under a timestamped name, for the audit trail."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(report.started_at))
    path = directory / f"drill-{stamp}.json"
    report.archived_to = str(path)
    path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    path.with_suffix(".txt").write_text(render_report(report) + "\n")
    return path


def render_report(report: DrillReport) -> str:
    lines = []
    for step in report.steps:
        verdict = "SKIP" if step.skipped else ("PASS" if step.passed else "FAIL")
        lines.append(f"{verdict:<5} {step.name:<48} {step.seconds:6.1f}s  {step.detail}")
        if not step.passed and not step.skipped:
            lines.append(f"      next: {step.advice}")
    lines.append(f"drill {'PASSED' if report.passed else 'FAILED'}"
                 + (f" (report: {report.archived_to})" if report.archived_to else ""))
    return "\n".join(lines)
