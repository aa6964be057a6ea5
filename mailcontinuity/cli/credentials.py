"""``mailcontinuity credentials-sync``: the command the role's timer and the operator run."""

from __future__ import annotations

import sys
from typing import Any

import click

from mailcontinuity.cli.common import Context, command, emit
from mailcontinuity.credentials.continuity import (
    ContinuityPasswordRefused,
    set_continuity_password,
)
from mailcontinuity.credentials.directory import DirectoryUnavailable
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


@command("continuity-password", audit=True, json_output=False)
@click.option("--login", required=True, help="Your login (credentials.login_attribute).")
def continuity_password_command(ctx: Context, login: str) -> None:
    """Set your continuity password: the one the standby accepts while Active Directory is away.

    Asks for your directory password and the new continuity password (on a terminal; otherwise
    two lines on standard input), never on the command line."""
    if sys.stdin.isatty():
        directory_password = click.prompt("Directory password", hide_input=True)
        new = click.prompt("New continuity password", hide_input=True,
                           confirmation_prompt=True)
    else:
        lines = sys.stdin.read().splitlines()
        if len(lines) < 2:
            raise click.ClickException("standard input: give the directory password and the"
                                       " new continuity password, one per line")
        directory_password, new = lines[0], lines[1]
    try:
        set_continuity_password(ctx.config, login, directory_password, new)
    except (ContinuityPasswordRefused, DirectoryUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"continuity password of {login} set; the standby uses it from the next"
               " credentials-sync on, while the directory is away")
