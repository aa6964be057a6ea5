"""The ``mailcontinuity`` command: one entry point for operators, systemd units and the lab.

Every failure an operator can cause (a config typo, a missing package, a busy port) leaves as a
one-line message on stderr and a non-zero exit status; tracebacks are for bugs only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from mailcontinuity.audit import audited, note
from mailcontinuity.auditlog import send_audit_to_syslog
from mailcontinuity.config import Config, ConfigError, default_config_path, load_config
from mailcontinuity.drill import Drill, archive, render_report
from mailcontinuity.lab import Lab, LabError
from mailcontinuity.logsetup import configure_logging
from mailcontinuity.commands import CommandError
from mailcontinuity.required_settings import render_check_config, settings_report
from mailcontinuity.state import StateStore, StateStoreError
from mailcontinuity.status import collect_status, render_status
from mailcontinuity.sync.changelog import LeaseHeld
from mailcontinuity.sync.imap import PrimaryError
from mailcontinuity.sync.verify import VerifyError
from mailcontinuity.tls import TLSError

F = TypeVar("F", bound=Callable[..., Any])
OPERATOR_ERRORS = (CommandError, ConfigError, LabError, StateStoreError, LeaseHeld, PrimaryError,
                   VerifyError, TLSError)


def operator_errors(func: F) -> F:
    """Turn the errors an operator can fix into click's one-line ``Error: ...`` and exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OPERATOR_ERRORS as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


class Context:
    """Lazily loaded config: ``lab up`` must work before any config exists."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
            send_audit_to_syslog(self._config.audit.syslog_socket)
        return self._config

    def store(self) -> StateStore:
        return StateStore(self.config.state.path)


pass_context = click.make_pass_decorator(Context)


def emit(report: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str],
         failure: str | None = None) -> None:
    """Print the report; then, if ``failure`` says what went wrong, exit 1 with it on stderr."""
    click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else render(report))
    if failure:
        raise click.ClickException(failure)


@click.group()
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


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@operator_errors
def status(ctx: Context, as_json: bool) -> None:
    """Show the continuity state, primary health, journal and outage."""
    store = ctx.store()
    try:
        emit(collect_status(ctx.config, store), as_json, render_status)
    finally:
        store.close()


@main.command("check-config")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (for automation).")
@pass_context
@operator_errors
def check_config(ctx: Context, as_json: bool) -> None:
    """Validate the config and print the Postfix and Dovecot settings it needs."""
    if as_json:
        click.echo(json.dumps(settings_report(ctx.config), indent=2, sort_keys=True))
    else:
        click.echo(render_check_config(ctx.config), nl=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@audited
@operator_errors
def drill(ctx: Context, as_json: bool) -> None:
    """Run the continuity drill with the probe account; archive the report."""
    store = ctx.store()
    try:
        report = Drill(ctx.config, store).run()
        archive(report, ctx.config.drill.report_dir)
        note(passed=report.passed, report=report.archived_to)
    finally:
        store.close()
    failed = [step.name for step in report.steps if not step.passed and not step.skipped]
    emit(report.as_dict(), as_json, lambda _: render_report(report),
         failure=f"drill failed at: {', '.join(failed)}" if failed else None)


@main.group()
def lab() -> None:
    """The local lab: private Postfix and Dovecot instances on 127.0.0.1."""


lab_dir_option = click.option(
    "--dir", "directory", required=True, type=click.Path(path_type=Path, file_okay=False),
    help="Directory holding the lab's instances, lab.json and mailcontinuity.toml.",
)


@lab.command("up")
@lab_dir_option
@click.option("--webmail", is_flag=True,
              help="Also start Roundcube on the standby (PHP's built-in server).")
@operator_errors
def lab_up(directory: Path, webmail: bool) -> None:
    """Start the lab (creating it on first use) and write lab.json."""
    started = Lab.up(directory, webmail=webmail)
    click.echo(f"lab is up: {started.dir / 'lab.json'}")
    click.echo(f"config:    {started.config_file}")
    if started.webmail is not None:
        click.echo(f"webmail:   {started.webmail.url}")


@lab.command("down")
@lab_dir_option
@operator_errors
def lab_down(directory: Path) -> None:
    """Stop everything the lab started (safe to run twice)."""
    Lab.down(directory)
    click.echo(f"lab in {directory} is down")


@lab.command("stop")
@click.argument("name")
@lab_dir_option
@operator_errors
def lab_stop(name: str, directory: Path) -> None:
    """Stop one lab part (primary, standby, gateway...)."""
    Lab.load(directory.absolute()).part(name).stop()
    click.echo(f"{name} stopped")


@lab.command("start")
@click.argument("name")
@lab_dir_option
@operator_errors
def lab_start(name: str, directory: Path) -> None:
    """Start one lab part again."""
    Lab.load(directory.absolute()).part(name).start()
    click.echo(f"{name} started")


from mailcontinuity.milter.cli import milter_command, prune_command  # noqa: E402 - needs main

main.add_command(milter_command)
main.add_command(prune_command)

# The sync part's commands live in their own module (it imports the helpers above).
from mailcontinuity.sync.commands import failback, sync_agent, verify_command  # noqa: E402

main.add_command(failback)
main.add_command(verify_command)
main.add_command(sync_agent)

# The routing commands (policyd, failover) live in their own module too.
from mailcontinuity.policyd.cli import failover, policyd  # noqa: E402

main.add_command(policyd)
main.add_command(failover)

from mailcontinuity.sieve.cli import sieve_sync_command  # noqa: E402

main.add_command(sieve_sync_command)

from mailcontinuity.audit_cli import audit_command  # noqa: E402

main.add_command(audit_command)
