"""``mailcontinuity credentials-sync``: the command the role's timer and the operator run."""

from __future__ import annotations

from typing import Any

from mailcontinuity.cli.common import Context, command, emit
from mailcontinuity.credentials.sync import refresh_credentials


def render_refresh(report: dict[str, Any]) -> str:
    if not report["ok"]:
        return f"FAIL  {report['copy_file']}: {report['error']}"
    lines = [f"ok    {report['copy_file']}: {report['users']} users"
             f" ({len(report['added'])} added, {len(report['removed'])} removed)"]
    lines += [f"      removed {login}" for login in report["removed"]]
    lines += [f"      skipped {item['login']}: {item['reason']}" for item in report["skipped"]]
    return "\n".join(lines)


@command("credentials-sync", audit=False)
def credentials_sync_command(ctx: Context, as_json: bool) -> None:
    """Refresh the standby's copy of the directory's password hashes ([credentials])."""
    report = refresh_credentials(ctx.config)
    emit(report.as_dict(), as_json, render_refresh,
         failure=report.reason() if report.failed else None)
