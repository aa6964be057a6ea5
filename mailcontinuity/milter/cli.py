"""The milter's commands: ``mailcontinuity milter`` (the daemon) and ``mailcontinuity prune``."""

from __future__ import annotations

import click

from mailcontinuity.audit import audited
from mailcontinuity.cli import Context, emit, operator_errors, pass_context
from mailcontinuity.identity import become_daemon
from mailcontinuity.milter.daemon import run_milter
from mailcontinuity.milter.prune import prune_journal, render_prune


@click.command("milter")
@pass_context
@operator_errors
def milter_command(ctx: Context) -> None:
    """Run the journal milter in the foreground (systemd runs this)."""
    become_daemon("milter")
    run_milter(ctx.config)


@click.command("prune")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@audited
@operator_errors
def prune_command(ctx: Context, as_json: bool) -> None:
    """Delete journal copies older than standby.retention_days from the standby."""
    store = ctx.store()
    try:
        emit(prune_journal(ctx.config, store), as_json, render_prune)
    finally:
        store.close()
