"""The audit trail's operator side: ``@audited`` admin commands and ``mailcontinuity audit``.

Every command that changes the state or reaches into users' mailboxes carries ``@audited``, which
writes one record per invocation (who, from where, the options, ok or failed with the one-line
reason) even when the command fails. State transitions are audited where they happen
(``StateStore.transition``). Read-only commands (``status``, ``audit``, ``check-config``) and
the lab commands are not audited.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, Protocol, TypeVar

import click
from click.core import ParameterSource

from mailcontinuity.auditlog import announce
from mailcontinuity.identity import who
from mailcontinuity.state import AuditEntry, StateStore

F = TypeVar("F", bound=Callable[..., Any])
_DETAIL_KEY = "mailcontinuity.audit.detail"


class HasStore(Protocol):
    """What ``@audited`` needs from the CLI's context object (``cli.Context``)."""

    def store(self) -> StateStore: ...


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
    command = ctx.info_name or ctx.command.name or "?"
    obj: HasStore = ctx.obj
    try:
        store = obj.store()
        try:
            store.record_command(command, actor, detail, origin)
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - never hide the command's own outcome
        announce(AuditEntry(0, time.time(), "command", None, None, command, actor,
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
