"""The ``mailcontinuity`` command: one entry point for operators, systemd units and the lab.

The root group and the global options live here; each part's commands live in the module named
after the part (``journal``, ``monitor``, ``outage``, ``sieve``, ``reports``). Nothing imports
this module: it is the top of the program. The ``lab`` group is loaded only when asked for, so
that the product never imports the lab.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from mailcontinuity.cli.common import Context
from mailcontinuity.cli.credentials import continuity_password_command, credentials_sync_command
from mailcontinuity.cli.journal import milter_command, prune_command
from mailcontinuity.cli.monitor import failover, policyd
from mailcontinuity.cli.outage import failback, follow_command, sync_agent, verify_command
from mailcontinuity.cli.reports import (
    audit_command,
    check_config,
    drill,
    migrate_command,
    report_command,
    status,
)
from mailcontinuity.cli.sieve import sieve_sync_command
from mailcontinuity.config import default_config_path
from mailcontinuity.logsetup import configure_logging

# Loaded on first use: name -> "module:attribute".
LAZY_COMMANDS = {"lab": "mailcontinuity.lab.cli:lab"}


class MainGroup(click.Group):
    """The root group, which imports a lazy command only when it is invoked or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, _, attribute = LAZY_COMMANDS[cmd_name].partition(":")
            found: click.Command = getattr(importlib.import_module(module), attribute)
            return found
        return super().get_command(ctx, cmd_name)


@click.group(cls=MainGroup)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=default_config_path,
    show_default="$MAILCONTINUITY_CONFIG or /etc/mailcontinuity/mailcontinuity.toml",
    help="Configuration file.",
)
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="mailcontinuity")
@click.pass_context
def main(ctx: click.Context, config_path: Path, log_level: str) -> None:
    """Email continuity for Postfix/Dovecot: journal, fail over, merge back."""
    configure_logging("mailcontinuity", log_level)
    ctx.obj = Context(config_path)


for _command in (milter_command, prune_command, policyd, failover, sync_agent, failback,
                 verify_command, follow_command, sieve_sync_command, status, check_config, drill,
                 report_command, audit_command, credentials_sync_command,
                 continuity_password_command, migrate_command):
    main.add_command(_command)
