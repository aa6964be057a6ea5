"""The milter's commands: ``mailcontinuity milter`` (the daemon) and ``mailcontinuity prune``."""

from __future__ import annotations

from mailcontinuity.audit import become_daemon
from mailcontinuity.cli.common import Context, command, emit
from mailcontinuity.journal.daemon import run_milter
from mailcontinuity.journal.prune import prune_journal, render_prune
from mailcontinuity.store.retention import forget_old_records


@command("milter", json_output=False)
def milter_command(ctx: Context) -> None:
    """Run the journal milter in the foreground (systemd runs this)."""
    become_daemon("milter")
    run_milter(ctx.config)


@command("prune", audit=True)
def prune_command(ctx: Context, as_json: bool) -> None:
    """Delete journal copies older than standby.retention_days from the standby, and records
    the state store no longer needs (state.retention_days, audit.retention_days)."""
    store = ctx.store()
    try:
        report = prune_journal(ctx.config, store)
        report["forgotten"] = forget_old_records(ctx.config, store)
        emit(report, as_json, render_prune)
    finally:
        store.close()
