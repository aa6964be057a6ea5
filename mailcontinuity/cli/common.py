"""What every command shares: the lazily loaded config, one-line operator errors, the report
printer, the audit decorator, and ``command``, the one stanza every command is declared with.

Every failure an operator can cause (a config typo, a missing package, a busy port) leaves as a
one-line message on stderr and a non-zero exit status; tracebacks are for bugs only.

Every command that changes the state or reaches into users' mailboxes is audited: one record per
invocation (who, from where, the options, ok or failed with the one-line reason) even when the
command fails. State transitions are audited where they happen (``store.state.transition``).
Read-only commands (``status``, ``audit``, ``check-config``) and the lab commands are not.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from mailcontinuity.audit import AuditEntry, announce, send_audit_to_syslog, who
from mailcontinuity.config import Config, ConfigError, load_config
from mailcontinuity.mail.tls import TLSError
from mailcontinuity.mail.tools import CommandError
from mailcontinuity.outage.primary import PrimaryError
from mailcontinuity.outage.verify import VerifyError
from mailcontinuity.store.audit import record_command
from mailcontinuity.store.db import StateStore, StateStoreError, open_store
from mailcontinuity.store.leases import LeaseHeld

F = TypeVar("F", bound=Callable[..., Any])
OPERATOR_ERRORS: tuple[type[Exception], ...] = (
    CommandError, ConfigError, StateStoreError, LeaseHeld, PrimaryError, VerifyError, TLSError)
_DETAIL_KEY = "mailcontinuity.audit.detail"


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
    """Lazily loaded config: ``lab up`` and ``--help`` must work before any config exists."""

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
        return open_store(self.config)


pass_context = click.make_pass_decorator(Context)


def emit(report: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str],
         failure: str | None = None) -> None:
    """Print the report; then, if ``failure`` says what went wrong, exit 1 with it on stderr."""
    click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else render(report))
    if failure:
        raise click.ClickException(failure)


def command(name: str | None = None, *, audit: bool = False,
            json_output: bool = True) -> Callable[[Callable[..., Any]], click.Command]:
    """Declare a command the way every command is: the config context passed in, operator
    errors as one line, audited when ``audit``, and ``--json`` when it reports."""

    def decorate(func: Callable[..., Any]) -> click.Command:
        wrapped = operator_errors(func)
        if audit:
            wrapped = audited(wrapped)
        declared = click.command(name)(pass_context(wrapped))
        if json_output:  # last, after the command's own options
            declared.params.append(click.Option(["--json", "as_json"], is_flag=True,
                                                help="Machine-readable output."))
        return declared

    return decorate


def note(**detail: Any) -> None:
    """Add facts (a report path, a count) to the running command's audit record."""
    click.get_current_context().meta.setdefault(_DETAIL_KEY, {}).update(detail)


def audited(func: F) -> F:
    """Audit every invocation of an admin command, its outcome and, if it failed, why.

    Goes between ``pass_context`` and ``operator_errors``, so that it sees the one-line
    ``ClickException`` an operator error has become.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _record(ctx, *_outcome_of(exc))
            raise
        _record(ctx, "ok", None)
        return result

    return wrapper  # type: ignore[return-value]


def _outcome_of(exc: BaseException) -> tuple[str, str | None]:
    """``ok``/``failed`` and the one-line reason for a command that ended by ``exc``."""
    if isinstance(exc, click.exceptions.Exit):
        return ("ok", None) if exc.exit_code == 0 else ("failed", f"exit status {exc.exit_code}")
    if isinstance(exc, (click.Abort, KeyboardInterrupt)):
        return "failed", "aborted by the operator"
    if isinstance(exc, click.ClickException):
        return "failed", exc.format_message()
    return "failed", f"{type(exc).__name__}: {exc}"


def _record(ctx: click.Context, outcome: str, reason: str | None) -> None:
    """Write the command's audit record: to the state store, and as a log line (stderr,
    syslog). If the store cannot be opened (a broken config), the line is all there is."""
    detail: dict[str, Any] = {"outcome": outcome}
    if reason is not None:
        detail["reason"] = " ".join(reason.split())
    options = _options(ctx)
    if options:
        detail["options"] = options
    detail |= ctx.meta.get(_DETAIL_KEY, {})
    actor, origin = who()
    name = ctx.info_name or ctx.command.name or "?"
    obj: Context = ctx.obj
    try:
        store = obj.store()
        try:
            record_command(store, name, actor, detail, origin)
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - never hide the command's own outcome
        announce(AuditEntry(0, time.time(), "command", None, None, name, actor,
                            detail | {"unrecorded": " ".join(str(exc).split())}, origin))


def _options(ctx: click.Context) -> str:
    """The options the operator gave, as they would type them (``--dry-run --yes``)."""
    words: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if (not isinstance(param, click.Option)
                or ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT)):
            continue
        value = ctx.params.get(name)
        flag = max(param.opts, key=len)
        words += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(words)
