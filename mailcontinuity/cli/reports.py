"""The reporting commands: ``status``, ``check-config``, ``drill``, ``report`` and ``audit``.

``audit`` is read-only, so not audited itself. Its times are shown in local time in the table
(what the operator reads next to their watch) and in UTC plus the epoch in JSON (what a SIEM
ingests).
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import click

from mailcontinuity.audit import AuditEntry
from mailcontinuity.cli.common import OPERATOR_ERRORS, Context, command, emit, note
from mailcontinuity.deploy.settings import render_check_config, settings_report
from mailcontinuity.outage.incident import IncidentError, incident_report, render_incident
from mailcontinuity.reports.drill import Drill, archive, render_report
from mailcontinuity.reports.problems import EXIT_CODES
from mailcontinuity.reports.status import (
    check_result,
    collect_status,
    render_status,
    unavailable_status,
)
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.db import StateStoreError


@click.option("--check", is_flag=True,
              help="One line and exit 0/1/2/3 (OK/WARNING/CRITICAL/UNKNOWN) with performance"
              " data, as monitoring plugins do (Nagios, Icinga, Zabbix).")
@command()
def status(ctx: Context, check: bool, as_json: bool) -> None:
    """Show whether the site is protected, the state, primary health, journal and outage."""
    try:
        report = _status_report(ctx)
    except Exception as exc:
        if not check:
            raise
        # A plugin that cannot tell says UNKNOWN, never OK (nor a traceback).
        reason = str(exc) if isinstance(exc, OPERATOR_ERRORS) else f"{type(exc).__name__}: {exc}"
        click.echo(f"MAILCONTINUITY UNKNOWN - {' '.join(reason.split())}")
        raise SystemExit(EXIT_CODES["UNKNOWN"]) from None
    if check:
        line, code = check_result(report)
        click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else line)
        raise SystemExit(code)
    emit(report, as_json, render_status)


def _status_report(ctx: Context) -> dict[str, Any]:
    config = ctx.config
    try:
        store = ctx.store()
    except StateStoreError as exc:
        return unavailable_status(config, str(exc))
    try:
        return collect_status(config, store)
    except StateStoreError as exc:  # a shared store that went away mid-way
        return unavailable_status(config, str(exc))
    finally:
        store.close()


@command("check-config")
def check_config(ctx: Context, as_json: bool) -> None:
    """Validate the config and print the Postfix and Dovecot settings it needs."""
    if as_json:
        click.echo(json.dumps(settings_report(ctx.config), indent=2, sort_keys=True))
    else:
        click.echo(render_check_config(ctx.config), nl=False)


@command("migrate", audit=True)
def migrate_command(ctx: Context, as_json: bool) -> None:
    """Create or update the state store's schema now and print its version.

    Every process does this when it first opens the store (one at a time: the migration runs
    under the store's writer lock); a deployment runs it once, from one host, so that a wrong
    URL, password or certificate fails the deployment instead of the daemons."""
    store = ctx.store()
    try:
        version = store.schema_version
    finally:
        store.close()
    report = {"store": ctx.config.state.location, "backend": ctx.config.state.backend,
              "schema_version": version}
    emit(report, as_json, lambda r: f"state store {r['store']}: schema version"
         f" {r['schema_version']}")


@command(audit=True)
def drill(ctx: Context, as_json: bool) -> None:
    """Run the continuity drill with the probe account; archive the report."""
    store = ctx.store()
    try:
        report = Drill(ctx.config, store).run()
        archive(report, ctx.config.drill.report_dir)
        note(passed=report.passed, report=report.archived_to)
    finally:
        store.close()
    failed = [step.name for step in report.steps if not step.passed and not step.skipped]
    emit(report.as_dict(), as_json, lambda _: render_report(report),
         failure=f"drill failed at: {', '.join(failed)}" if failed else None)


@click.option("--outage", "outage_id", type=click.IntRange(min=1),
              help="The outage's number (default: the last one).")
@command("report")
def report_command(ctx: Context, outage_id: int | None, as_json: bool) -> None:
    """The incident report of an outage: timeline, RTO and RPO achieved, what went wrong."""
    store = ctx.store()
    try:
        incident = incident_report(ctx.config, store, outage_id)
    except IncidentError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    emit(incident.as_dict(), as_json, render_incident)


SINCE_FORMS = "an ISO 8601 date or time (2026-05-01, 2026-05-01T08:30, 2026-05-01T08:30Z) or a" \
    " span back from now (30m, 12h, 7d)"
_SPAN_RE = re.compile(r"^(\d+)([smhdw])$")
_SPAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
COLUMNS = ("time", "kind", "what", "actor", "origin", "outcome/cause")


class Since(click.ParamType):
    """``--since``: an ISO 8601 date/time (local time unless it names a zone) or ``30m``,
    ``12h``, ``7d``; converted to an epoch."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        span = _SPAN_RE.match(text)
        if span:
            return time.time() - int(span[1]) * _SPAN_SECONDS[span[2]]
        try:
            return datetime.fromisoformat(text).timestamp()  # naive: local time
        except ValueError:
            self.fail(f"expected {SINCE_FORMS}; got {value!r}", param, ctx)


def entry_as_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": datetime.fromtimestamp(entry.at, UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "epoch": entry.at,
        "kind": entry.event,
        "from": entry.from_state,
        "to": entry.to_state,
        "cause": entry.cause,
        "actor": entry.actor,
        "origin": entry.origin,
        "detail": entry.detail,
    }


def _row(entry: AuditEntry) -> tuple[str, ...]:
    at = datetime.fromtimestamp(entry.at).astimezone().isoformat(timespec="seconds")
    detail = entry.detail
    if entry.event == "transition":
        what, result = f"{entry.from_state} -> {entry.to_state}", entry.cause
    elif entry.event == "command":
        what = " ".join(filter(None, [entry.cause, detail.get("options")]))
        result = detail.get("outcome", "")
        if detail.get("reason"):
            result += f": {detail['reason']}"
    else:
        what, result = entry.cause, json.dumps(detail, sort_keys=True)
    return at, entry.event, what, entry.actor, entry.origin or "-", result


def render_audit(entries: list[AuditEntry]) -> str:
    if not entries:
        return "no audit records in that period"
    rows = [COLUMNS, *(_row(entry) for entry in entries)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)),
                  row[-1]]).rstrip()
        for row in rows
    )


@click.option("--since", type=Since(), help=f"Only records from then on: {SINCE_FORMS}.")
@command("audit")
def audit_command(ctx: Context, since: float | None, as_json: bool) -> None:
    """Print state transitions and admin commands: who, what, when, from where."""
    store = ctx.store()
    try:
        entries = audit_log(store, since=since or 0.0)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([entry_as_dict(entry) for entry in entries], indent=2))
    else:
        click.echo(render_audit(entries))
