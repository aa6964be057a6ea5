"""The operator's commands for routing: ``policyd`` and ``failover``.

``failback`` belongs to the outage's commands (cli/outage.py): it routes back to the primary
through the same ``change_state`` and then merges the outage.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from mailcontinuity.audit import become_daemon, operator
from mailcontinuity.cli.common import Context, command, emit, note
from mailcontinuity.deploy.routing import nexthop
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.monitor.daemon import run_policyd
from mailcontinuity.monitor.server import PolicyServerError
from mailcontinuity.monitor.watch import check_standby, standby_ready
from mailcontinuity.reports.metrics import MetricsEndpoint
from mailcontinuity.store.state import current_state
from mailcontinuity.transitions import change_state


@command(json_output=False)
def policyd(ctx: Context) -> None:
    """Run the policy daemon and health monitor in the foreground."""
    become_daemon("policyd")
    config = ctx.config
    # policyd is the one long-running monitor, so it serves every part's metrics.
    metrics = ((lambda registry: MetricsEndpoint(config, registry))
               if config.metrics.enabled else None)
    try:
        run_policyd(config, metrics)
    except PolicyServerError as exc:
        raise click.ClickException(str(exc)) from None


@command(audit=True)
@click.option("--reason", required=True, help="Why, for the audit log (e.g. 'planned upgrade').")
@click.option("--force", is_flag=True,
              help="Fail over even when the standby fails its checks (LMTP, IMAP).")
def failover(ctx: Context, reason: str, force: bool, as_json: bool) -> None:
    """Route protected domains to the standby now; stays until you run failback."""
    config = ctx.config
    ready, why = standby_ready(asyncio.run(check_standby(config, TLSPolicy.of(config,
                                                                              "standby"))))
    if not ready:
        if not force:
            raise click.ClickException(
                f"the standby fails its checks ({why}): failing over would send mail where it"
                " cannot be delivered or read (Postfix would queue it for the standby instead"
                " of the primary); bring the standby back, or pass --force to fail over anyway")
        click.echo(f"warning: the standby fails its checks ({why}); failing over anyway"
                   " (--force)", err=True)
        note(standby_failing=why)
    store = ctx.store()
    try:
        actor = operator()
        changed = change_state(ctx.config, store, "failover", f"operator: {reason}", actor,
                               expect=("normal", "failback"))
        state = current_state(store)
    finally:
        store.close()
    report = {"state": state.name, "changed": changed, "since": state.since,
              "cause": state.cause, "actor": state.actor,
              "route": str(nexthop(ctx.config, "standby")), "standby_ready": ready}
    emit(report, as_json, _render_failover)


def _render_failover(report: dict[str, Any]) -> str:
    if not report["changed"]:
        return (f"already in failover ({report['cause']}, by {report['actor']}); nothing changed")
    return (f"failover: protected domains now go to the standby ({report['route']}); queued mail"
            " was flushed. It stays so until you run 'mailcontinuity failback'.")
