"""``mailcontinuity sieve-sync``: the command the timer and the operator run."""

from __future__ import annotations

from typing import Any

from mailcontinuity.cli.common import Context, command, emit
from mailcontinuity.sieve.replicate import sieve_sync


def render_sieve_sync(report: dict[str, Any]) -> str:
    lines = []
    for user in report["users"]:
        verdict = "FAIL" if user["errors"] else "ok"
        lines.append(f"{verdict:<5} {user['user']}: copied {len(user['copied'])},"
                     f" unchanged {len(user['unchanged'])}, deleted {len(user['deleted'])},"
                     f" active {user['active'] or '(none)'}"
                     + (" (activated)" if user["activated"] else "")
                     + (f", changed on the standby and copied to the primary:"
                        f" {', '.join(user['returned'])}" if user["returned"] else ""))
        lines += [f"      {error}" for error in user["errors"]]
    if not report["users"]:
        lines.append("no protected users with a standby Maildir (and sieve.users is empty)")
    return "\n".join(lines)


@command("sieve-sync", audit=True)
def sieve_sync_command(ctx: Context, as_json: bool) -> None:
    """Copy users' sieve scripts (and which is active) from the primary to the standby, after
    copying to the primary what users changed on the standby during an outage."""
    report = sieve_sync(ctx.config)
    emit(report.as_dict(), as_json, render_sieve_sync,
         failure=report.reason() if report.failed else None)
