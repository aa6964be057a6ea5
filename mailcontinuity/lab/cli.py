"""``mailcontinuity lab``: start, stop and take down the local lab from the command line.

The root command loads this group only when ``lab`` is asked for, so the product never imports
the lab (nor the lab's dependencies, such as the CA it makes with cryptography).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from mailcontinuity.cli.common import operator_errors
from mailcontinuity.lab.directory import DIRECTORY_KINDS
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.lab import PRIMARY_KINDS, STATE_BACKENDS, Lab
from mailcontinuity.lab.netcut import heal, isolate, table_name
from mailcontinuity.lab.profiles import PROFILES

F = TypeVar("F", bound=Callable[..., Any])


def lab_errors(func: F) -> F:
    """A lab that cannot do what was asked says so in one line, like any operator error."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return operator_errors(func)(*args, **kwargs)
        except LabError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


@click.group()
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
@click.option("--primary", "primary", type=click.Choice(PRIMARY_KINDS), default=None,
              help="The primary's mail store when the lab is created (default dovecot; cyrus is"
              " Debian's Cyrus IMAP unpacked into a cache, never installed).")
@click.option("--primary-profile", "primary_profile", type=click.Choice(PROFILES),
              default=None, help="The Dovecot primary restricted to a hosted service's IMAP"
              " capabilities and folder layout (when the lab is created).")
@click.option("--gateways", type=click.IntRange(min=2), default=None,
              help="A multi-host lab: N gateways gw1..gwN, the standby and the primary as hosts"
              " of their own, sharing a PostgreSQL store (at creation).")
@click.option("--directory", "directory_kind", type=click.Choice(DIRECTORY_KINDS), default=None,
              help="The users in a directory (a private slapd, part 'directory') that both"
              " Dovecots ask; the standby keeps a copy for when it is away (when the lab is"
              " created).")
@click.option("--state", "state", type=click.Choice(STATE_BACKENDS), default=None,
              help="The state store when the lab is created: sqlite (default, one file) or"
              " postgresql (a private PostgreSQL server, part 'state'; a multi-host lab always"
              " has one).")
@lab_errors
def lab_up(directory: Path, webmail: bool, primary: str | None,
           primary_profile: str | None, gateways: int | None,
           directory_kind: str | None, state: str | None) -> None:
    """Start the lab (creating it on first use) and write lab.json."""
    started = Lab.up(directory, webmail=webmail, primary=primary,
                     primary_profile=primary_profile, gateways=gateways,
                     directory_kind=directory_kind, state=state)
    click.echo(f"lab is up: {started.dir / 'lab.json'}")
    click.echo(f"config:    {started.config_file}")
    if started.webmail is not None:
        click.echo(f"webmail:   {started.webmail.url}")


@lab.command("down")
@lab_dir_option
@lab_errors
def lab_down(directory: Path) -> None:
    """Stop everything the lab started (safe to run twice)."""
    Lab.down(directory)
    click.echo(f"lab in {directory} is down")


@lab.command("stop")
@click.argument("name")
@lab_dir_option
@lab_errors
def lab_stop(name: str, directory: Path) -> None:
    """Stop one lab part (primary, standby, gateway..., or HOST/PART: gw2/policyd)."""
    Lab.load(directory.absolute()).part(name).stop()
    click.echo(f"{name} stopped")


@lab.command("start")
@click.argument("name")
@lab_dir_option
@lab_errors
def lab_start(name: str, directory: Path) -> None:
    """Start one lab part again."""
    Lab.load(directory.absolute()).part(name).start()
    click.echo(f"{name} started")


@lab.command("isolate")
@click.argument("host")
@click.option("--from", "other", required=True, metavar="OTHER",
              help="The host to cut HOST off from (gw1..gwN, standby, primary, state).")
@lab_dir_option
@lab_errors
def lab_isolate(host: str, other: str, directory: Path) -> None:
    """Cut all traffic between two hosts of a multi-host lab, both ways, keeping earlier cuts.

    Hosts: gw1..gwN, standby (with its sync agent and webmail), primary, state (the shared
    store). Every TCP packet from one host's processes to the other's is dropped, whoever
    opened the connection: each host runs in a cgroup of the lab's own and the rules match
    the sockets' cgroups. Not cut: unix sockets and the shared file system (docs/lab.md).

    The cut is an nftables table of the lab's own (inet mailcontinuity_lab_<id>) in the
    network namespace this command runs in: run by hand, that is this machine's ruleset.
    'lab heal' or 'lab down' deletes the table."""
    cuts = isolate(Lab.load(directory.absolute()), host, other)
    click.echo(f"{host} cut from {other} (table inet {table_name(directory)});"
               f" cuts in force: {', '.join(f'{a}|{b}' for a, b in cuts)}")


@lab.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@lab_dir_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
@lab_errors
def lab_run(host: str, directory: Path, args: tuple[str, ...]) -> None:
    """Run 'mailcontinuity ARGS' as HOST of a multi-host lab: with that host's configuration,
    in its cgroup, so that the lab's cuts apply to it (e.g. 'lab run standby --dir DIR --
    failback --yes'). Exits with the command's status, its output passed through."""
    lab = Lab.load(directory.absolute())
    if lab.hosts is None:
        raise LabError(f"the lab in {directory} has one host; 'lab run' is for a multi-host"
                       " lab (lab up --gateways N)")
    result = lab.hosts.run(host, *args, capture_output=False, timeout=None)
    raise SystemExit(result.returncode)


@lab.command("heal")
@lab_dir_option
@lab_errors
def lab_heal(directory: Path) -> None:
    """Restore every cut 'lab isolate' made (deletes the lab's nftables table)."""
    healed = heal(directory.absolute())
    click.echo(f"healed: {', '.join(f'{a}|{b}' for a, b in healed)}" if healed
               else f"no cuts in the lab in {directory}")
