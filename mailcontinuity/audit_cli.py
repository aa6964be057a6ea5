"""``mailcontinuity audit [--since WHEN] [--json]``: print the audit trail.

Read-only, so not audited itself. Times are shown in local time in the table (what the operator
reads next to their watch) and in UTC plus the epoch in JSON (what a SIEM ingests).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from typing import Any

import click

from mailcontinuity.cli import Context, operator_errors, pass_context
from mailcontinuity.state import AuditEntry

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
        "at": datetime.fromtimestamp(entry.at, timezone.utc).isoformat(timespec="milliseconds")
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
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip()
        for row in rows
    )


@click.command("audit")
@click.option("--since", type=Since(), help=f"Only records from then on: {SINCE_FORMS}.")
@click.option("--json", "as_json", is_flag=True,
              help="A JSON list; 'at' in ISO 8601 UTC, 'epoch' in seconds.")
@pass_context
@operator_errors
def audit_command(ctx: Context, since: float | None, as_json: bool) -> None:
    """Print state transitions and admin commands: who, what, when, from where."""
    store = ctx.store()
    try:
        entries = store.audit_log(since=since or 0.0)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([entry_as_dict(entry) for entry in entries], indent=2))
    else:
        click.echo(render_audit(entries))
