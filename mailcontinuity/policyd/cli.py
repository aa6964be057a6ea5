"""The operator's commands for routing: ``policyd``, ``failover`` and ``failback``.

``failback`` here only returns routing to the primary (state ``failback``); merging the outage's
activity into the primary comes with the sync agent, and the command says so plainly rather than
pretend the outage is over.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Any

import click

from mailcontinuity.cli import Context, emit, operator_errors, pass_context
from mailcontinuity.policyd.daemon import run_policyd
from mailcontinuity.policyd.server import PolicyServerError
from mailcontinuity.routing import nexthop
from mailcontinuity.transitions import change_state

MERGE_NOT_IMPLEMENTED = (
    "merging outage activity into the primary is not implemented yet: the state stays"
    " 'failback' (mail goes to the primary; the outage is not closed)"
)


def operator_login() -> str:
    """Who ran the command, for the audit log: the sudo user if any, else the login name."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


@click.command()
@pass_context
@operator_errors
def policyd(ctx: Context) -> None:
    """Run the policy daemon and health monitor in the foreground."""
    try:
        run_policyd(ctx.config)
    except PolicyServerError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--reason", required=True, help="Why, for the audit log (e.g. 'planned upgrade').")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@operator_errors
def failover(ctx: Context, reason: str, as_json: bool) -> None:
    """Route protected domains to the standby now; stays until you run failback."""
    store = ctx.store()
    try:
        actor = operator_login()
        changed = change_state(ctx.config, store, "failover", f"operator: {reason}", actor,
                               expect=("normal", "failback"))
        state = store.current_state()
    finally:
        store.close()
    report = {"state": state.name, "changed": changed, "since": state.since,
              "cause": state.cause, "actor": state.actor,
              "route": str(nexthop(ctx.config, "standby"))}
    emit(report, as_json, _render_failover)


def _render_failover(report: dict[str, Any]) -> str:
    if not report["changed"]:
        return (f"already in failover ({report['cause']}, by {report['actor']}); nothing changed")
    return (f"failover: protected domains now go to the standby ({report['route']}); queued mail"
            " was flushed. It stays so until you run 'mailcontinuity failback'.")


@click.command()
@click.option("--dry-run", is_flag=True, help="Say what would happen, change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation on a terminal.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@operator_errors
def failback(ctx: Context, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Route protected domains to the primary again (the merge is not implemented yet)."""
    store = ctx.store()
    try:
        state = store.current_state()
        if state.name == "normal":
            raise click.ClickException("state is normal: there is no outage to fail back from")
        route = str(nexthop(ctx.config, "primary"))
        changed = False
        if state.name == "failover" and not dry_run:
            if not yes and sys.stdin.isatty():
                click.confirm(f"Route protected domains back to the primary ({route})?",
                              abort=True)
            changed = change_state(ctx.config, store, "failback", "operator: failback",
                                   operator_login(), expect=("failover",))
            state = store.current_state()
    finally:
        store.close()
    report = {"state": state.name, "changed": changed, "dry_run": dry_run, "route": route,
              "merge": "not implemented", "note": MERGE_NOT_IMPLEMENTED}
    emit(report, as_json, _render_failback)


def _render_failback(report: dict[str, Any]) -> str:
    if report["dry_run"]:
        action = f"would route protected domains to the primary ({report['route']})"
    elif report["changed"]:
        action = f"protected domains now go to the primary ({report['route']}); queued mail flushed"
    else:
        action = f"routing already goes to the primary ({report['route']})"
    return f"{action}\n{report['note']}"
