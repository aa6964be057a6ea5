"""The operator's commands for routing: ``policyd`` and ``failover``.

``failback`` belongs to the sync part (mailcontinuity/sync/commands.py): it routes back to the
primary through the same ``change_state`` and then merges the outage.
"""

from __future__ import annotations

from typing import Any

import click

from mailcontinuity.audit import audited
from mailcontinuity.cli import Context, emit, operator_errors, pass_context
from mailcontinuity.identity import become_daemon, operator
from mailcontinuity.policyd.daemon import run_policyd
from mailcontinuity.policyd.server import PolicyServerError
from mailcontinuity.routing import nexthop
from mailcontinuity.transitions import change_state


@click.command()
@pass_context
@operator_errors
def policyd(ctx: Context) -> None:
    """Run the policy daemon and health monitor in the foreground."""
    become_daemon("policyd")
    try:
        run_policyd(ctx.config)
    except PolicyServerError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--reason", required=True, help="Why, for the audit log (e.g. 'planned upgrade').")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@audited
@operator_errors
def failover(ctx: Context, reason: str, as_json: bool) -> None:
    """Route protected domains to the standby now; stays until you run failback."""
    store = ctx.store()
    try:
        actor = operator()
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
