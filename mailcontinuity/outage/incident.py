"""The incident report: what happened in an outage, in order, what it achieved, what went wrong.

The post-incident review an administrator writes after a DR event, from the records the system
kept anyway: the audit trail (the first failed probe the monitor counted, a failover held
because the standby was down too, the transitions, hooks that failed), the outage record (the
first mail the gateway routed to the standby, what users did there, the failback's counts), the
journal index (what the standby lacked when the outage began) and ``verify``'s result.

- **RTO achieved**: from the first failed probe (or an operator's failover) to the first mail
  delivered to the standby; when no mail came during the outage, to the failover.
- **RPO achieved**: how far behind the standby's history was at the failover: the age of the
  oldest message accepted before it whose journal copy reached the standby only after it (0:
  nothing missing), and how far back its history went.

Failback archives it beside the drill reports (``[drill] report_dir``), after running
``verify``; ``mailcontinuity report`` prints it for any outage still in the state store.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mailcontinuity.config import Config
from mailcontinuity.outage.primary import PrimaryError
from mailcontinuity.outage.verify import VerifyError, verify
from mailcontinuity.store.audit import audit_between, first_transition, last_transition
from mailcontinuity.store.db import StateStore, open_store
from mailcontinuity.store.journal import backlog_at, history_from
from mailcontinuity.store.outages import ChangeLog, Outage

log = logging.getLogger(__name__)

# How long before the failover the monitor's first failed probe may be looked for.
LOOKBACK_SECONDS = 24 * 3600


class IncidentError(Exception):
    """No such outage; the message says which ones there are."""


@dataclass(frozen=True)
class Event:
    at: float
    what: str
    detail: str = ""


@dataclass
class Incident:
    outage: int
    status: str
    timeline: list[Event] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    went_wrong: list[str] = field(default_factory=list)
    archived_to: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"outage": self.outage, "status": self.status,
                "timeline": [asdict(event) for event in self.timeline],
                "figures": self.figures, "went_wrong": self.went_wrong,
                "archived_to": self.archived_to}


def incident_report(config: Config, store: StateStore, outage_id: int | None = None,
                    now: float | None = None) -> Incident:
    """The report of outage ``outage_id`` (the last one when None)."""
    now = time.time() if now is None else now
    changelog = ChangeLog(store)
    outage = changelog.last_outage() if outage_id is None else changelog.outage(outage_id)
    if outage is None:
        last = changelog.last_outage()
        raise IncidentError(
            "no outage recorded in the state store" if last is None else
            f"no outage {outage_id} in the state store; outages are numbered 1 to {last.id}")
    return _Builder(config, store, changelog, outage, now).build()


class _Builder:
    def __init__(self, config: Config, store: StateStore, changelog: ChangeLog, outage: Outage,
                 now: float) -> None:
        self.config = config
        self.store = store
        self.changelog = changelog
        self.outage = outage
        self.now = now
        self.incident = Incident(outage.id, outage.status)

    def event(self, at: float | None, what: str, detail: str = "") -> None:
        if at is not None:
            self.incident.timeline.append(Event(at, what, detail))

    def build(self) -> Incident:
        outage, store = self.outage, self.store
        failover = last_transition(store, "failover", outage.started_at + 1)
        start = failover.at if failover is not None else outage.started_at
        back = first_transition(store, "failback", start)
        normal = first_transition(store, "normal", start)
        end = normal.at if normal is not None else self.now
        first_failure = (failover.detail.get("first_failed_probe")
                         if failover is not None else None)
        self.event(first_failure, "first failed probe of the primary")
        entries = audit_between(store, (first_failure or start) - 1, end + 1)
        for entry in entries:
            if entry.event == "failover_held":
                self.event(entry.at, "failover held: the standby failed its checks too",
                           str(entry.detail.get("standby", "")))
            elif entry.event == "failover_hold_ended":
                self.event(entry.at, f"hold ended: {entry.cause}",
                           f"held {entry.detail.get('held_seconds', 0)}s")
        if failover is not None:
            self.event(failover.at, f"failover ({failover.actor})", failover.cause)
        self.event(outage.baseline_at, "sync agent's baseline of the standby (recording)")
        first_mail, messages, deliveries = self.changelog.routed_mail(outage.id)
        self.event(first_mail, "first mail delivered to the standby")
        first_activity, last_activity = self.changelog.activity_span(outage.id)
        activity = self.changelog.activity(outage.id)
        self.event(first_activity, "first user activity on the standby",
                   ", ".join(f"{name} {count}" for name, count in activity.items() if count))
        if last_activity != first_activity:
            self.event(last_activity, "last user activity recorded")
        if back is not None:
            self.event(back.detail.get("healthy_since"), "the primary answers again")
            self.event(back.at, f"failback started ({back.actor})", back.cause)
        if normal is not None:
            self.event(normal.at, f"back to normal ({normal.actor})", normal.cause)
        verified = outage.summary.get("verify")
        if verified:
            self.event(verified.get("at"), "verify: " + ("clean" if verified.get("ok") else
                                                         f"{verified.get('problems')} problems"))
        self.incident.timeline.sort(key=lambda event: event.at)

        detection = None if first_failure is None else start - first_failure
        since = first_failure if first_failure is not None else start
        rto = (first_mail if first_mail is not None else start) - since
        backlog, oldest = backlog_at(store, start)
        history = history_from(store, start)
        summary = outage.summary
        counts = summary.get("counts", {})
        merged = sum(n for name, n in counts.items()
                     if name.startswith("append") and name.endswith(":done"))
        self.incident.figures = {
            "started_at": since,
            "failover_at": start,
            "forced_by_operator": failover is not None and first_failure is None,
            "detection_seconds": _round(detection),
            "rto_seconds": _round(rto),
            "rto_measured_to": "first mail delivered to the standby" if first_mail is not None
            else "the failover (no mail arrived during the outage)",
            "rpo_seconds": _round(0.0 if oldest is None else start - oldest),
            "journal_backlog_at_failover": backlog,
            "history_on_standby_from": history,
            "history_days": _round(None if history is None else (start - history) / 86400),
            "routed_to_standby_messages": messages,
            "routed_to_standby_deliveries": deliveries,
            "activity": activity,
            "failback_seconds": _round(None if back is None or normal is None
                                       else normal.at - back.at),
            "outage_seconds": _round(end - since) if normal is not None else None,
            "merged": merged,
            "merge_counts": counts,
            "refused": len(summary.get("refused", [])),
            "verify": verified,
        }
        self.incident.went_wrong = self.went_wrong(entries, detection, backlog, oldest, start)
        return self.incident

    def went_wrong(self, entries: list[Any], detection: float | None, backlog: int,
                   oldest: float | None, start: float) -> list[str]:
        """What an administrator would want in the review's 'what went wrong' section."""
        health = self.config.health
        found = []
        expected = health.failure_window_seconds + health.failures * health.interval_seconds
        if detection is not None and detection > 2 * expected + health.timeout_seconds:
            found.append(f"detection took {detection:.1f}s, about {expected:g}s expected from"
                         " [health]: was policyd's monitor busy or the primary slow to refuse?")
        held = [e for e in entries if e.event == "failover_held"]
        for entry in held:
            found.append(f"the failover was held: the standby failed its checks too"
                         f" ({entry.detail.get('standby', '')}); mail waited in Postfix's queue")
        for entry in entries:
            if entry.event == "hook" and entry.detail.get("outcome") != "ok":
                found.append(f"hook {entry.cause} ({entry.detail.get('transition')}):"
                             f" {entry.detail.get('outcome')}")
            if (entry.event == "command" and entry.cause in ("failback", "failover")
                    and entry.detail.get("outcome") == "failed"):
                found.append(f"'{entry.cause}' by {entry.actor} failed:"
                             f" {entry.detail.get('reason', '')}")
        if backlog:
            found.append(f"{backlog} journal copies were not on the standby yet at the failover"
                         f" (the oldest accepted {start - (oldest or start):.1f}s before it):"
                         " users missed that mail until the spool drained")
        summary = self.outage.summary
        for item in summary.get("refused", []):
            found.append(f"the primary refused {item.get('message_id')} for {item.get('user')}"
                         f" in {item.get('folder')!r}: {item.get('server_said')} (kept on the"
                         " standby)")
        for item in summary.get("reports", []):
            found.append(f"failback noted {item.get('reason')} for {item.get('user')}:"
                         f" {item.get('message_id')} in {item.get('folder')!r}")
        verified = summary.get("verify")
        if verified and not verified.get("ok"):
            found.append(f"verify found {verified.get('problems')} problems on the primary"
                         f" ({verified.get('error') or 'see mailcontinuity verify'})")
        if self.outage.status != "merged":
            found.append(f"the outage is not merged yet (status {self.outage.status}): run"
                         " 'mailcontinuity failback'")
        return found


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def render_incident(report: dict[str, Any]) -> str:
    """The review as text: timeline, figures, what went wrong."""
    figures = report["figures"]

    def when(at: float | None) -> str:
        return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))

    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} s"

    lines = [f"Incident report: outage {report['outage']} ({report['status']})", "",
             "Timeline"]
    lines += [f"  {when(e['at'])}  {e['what']}" + (f": {e['detail']}" if e["detail"] else "")
              for e in report["timeline"]]
    verified = figures["verify"]
    history = ("unknown" if figures["history_days"] is None else
               f"{figures['history_days']:.1f} days (from"
               f" {when(figures['history_on_standby_from'])})")
    rows = [
        ("detection (first failed probe to failover)", seconds(figures["detection_seconds"])
         + ("  (failover forced by an operator)" if figures["forced_by_operator"] else "")),
        ("RTO achieved", f"{seconds(figures['rto_seconds'])} (to {figures['rto_measured_to']})"),
        ("RPO achieved", f"{seconds(figures['rpo_seconds'])}"
         f" ({figures['journal_backlog_at_failover']} journal copies behind at failover)"),
        ("history on the standby", history),
        ("delivered to the standby", f"{figures['routed_to_standby_messages']} messages"
         f" ({figures['routed_to_standby_deliveries']} deliveries)"),
        ("user activity", ", ".join(f"{k} {v}" for k, v in figures["activity"].items() if v)
         or "none"),
        ("failback (the merge) took", seconds(figures["failback_seconds"])),
        ("merged into the primary", f"{figures['merged']} (refused {figures['refused']})"),
        ("verify", "not run" if not verified else "clean" if verified.get("ok")
         else f"{verified.get('problems')} problems"),
    ]
    width = max(len(label) for label, _ in rows)
    lines += ["", "Figures", *(f"  {label:<{width}}  {value}" for label, value in rows)]
    lines += ["", "What went wrong"]
    lines += [f"  - {item}" for item in report["went_wrong"]] or ["  nothing recorded"]
    if report.get("archived_to"):
        lines += ["", f"archived: {report['archived_to']}"]
    return "\n".join(lines)


def archive_incident(incident: Incident, directory: Path) -> Path:
    """Write the report as JSON and text beside the drill reports, under a timestamped name."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = directory / f"incident-{incident.outage}-{stamp}.json"
    incident.archived_to = str(path)
    report = incident.as_dict()
    # Text first, then JSON, each renamed into place: whoever finds the JSON finds both whole.
    for target, text in ((path.with_suffix(".txt"), render_incident(report)),
                         (path, json.dumps(report, indent=2, sort_keys=True))):
        partial = target.with_name(f".{target.name}.tmp")
        partial.write_text(text + "\n")
        partial.rename(target)
    return path


def finish_outage(config: Config, outage_id: int) -> Incident:
    """After failback: verify the primary, keep the result with the outage, then build and
    archive the incident report. A verify that cannot run is recorded as such (the report
    says so), never fatal: the outage is merged whatever verify finds."""
    try:
        result = verify(config)
        verified = {"at": time.time(), "ok": result["ok"], "problems": result["problems"],
                    "outage": result["outage"]}
    except (PrimaryError, VerifyError, OSError) as exc:
        verified = {"at": time.time(), "ok": False, "problems": None, "error": str(exc)}
    store = open_store(config)
    try:
        ChangeLog(store).add_to_summary(outage_id, verify=verified)
        incident = incident_report(config, store, outage_id)
        path = archive_incident(incident, config.drill.report_dir)
    finally:
        store.close()
    log.info("event=incident_report outage=%d archived=%s verify_ok=%s", outage_id, path,
             verified["ok"])
    return incident
