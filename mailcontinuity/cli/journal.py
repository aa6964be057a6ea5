"""The milter's commands: ``mailcontinuity milter`` (the daemon) and ``mailcontinuity prune``."""

from __future__ import annotations

from mailcontinuity.audit import become_daemon
from mailcontinuity.cli.common import Context, command, emit
from mailcontinuity.journal.daemon import run_milter
from mailcontinuity.journal.prune import prune_journal, render_prune


@command("milter", json_output=False)
def milter_command(ctx: Context) -> None:
    """Run the journal milter in the foreground (systemd runs this)."""
    become_daemon("milter")
    run_milter(ctx.config)


@command("prune", audit=True)
def prune_command(ctx: Context, as_json: bool) -> None:
    """Delete journal copies older than standby.retention_days from the standby."""
    store = ctx.store()
    try:
        emit(prune_journal(ctx.config, store), as_json, render_prune)
    finally:
        store.close()
