"""The click commands of the sync part: ``failback``, ``verify``, ``follow`` and
``sync-agent``."""

from __future__ import annotations

import sys
from typing import Any

import click

from mailcontinuity.audit import become_daemon, operator
from mailcontinuity.cli.common import Context, command, emit, note
from mailcontinuity.outage.follow import follow_all
from mailcontinuity.outage.incident import finish_outage
from mailcontinuity.outage.merge import FailbackReport, plan_failback, run_failback
from mailcontinuity.outage.recorder import SyncAgent
from mailcontinuity.outage.verify import verify
from mailcontinuity.store.state import current_state
from mailcontinuity.transitions import change_state


def render_failback(report: dict[str, Any]) -> str:
    lines = [f"outage:   {report['outage'] if report['outage'] is not None else 'none'}",
             f"state:    {report['state']}"]
    if report["note"]:
        lines.append(f"note:     {report['note']}")
    if report.get("incident_report"):
        lines.append(f"incident: {report['incident_report']} (mailcontinuity report)")
    for name, count in report["counts"].items():
        lines.append(f"  {name:<24} {count}")
    for user, actions in report["plan"].items():
        lines.append(f"{user}: {len(actions)} action(s)")
        lines += [f"  {a['action']:<13} {a['folder']!r} {a.get('from_folder', '')}"
                  f" {a['message_id']} {' '.join(a.get('add', []))}" for a in actions]
    for item in report["refused"]:
        lines.append(f"REFUSED {item['user']} {item['folder']!r} {item['message_id']}:"
                     f" {item['server_said']} (kept: {item['kept_on_standby']})")
    for item in report["reports"]:
        lines.append(f"note {item['user']} {item['reason']} {item['folder']!r}"
                     f" {item['message_id']}")
    return "\n".join(lines)


@command(audit=True)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def failback(ctx: Context, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Merge the outage into the primary and return to normal; resumable."""
    config = ctx.config
    cluster = config.cluster
    if cluster is not None and not cluster.has_standby_maildirs:
        _failback_elsewhere(ctx, dry_run, yes, as_json)
        return
    if dry_run:
        emit(plan_failback(config).as_dict(), as_json, render_failback)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException("failback reroutes mail and writes to the primary;"
                                       " pass --yes to confirm without a terminal")
        click.confirm("Route mail back to the primary and merge the outage into it?",
                      abort=True)
    if sys.stdout.isatty() and not as_json:
        report = _with_progress_bar(config)
    else:
        report = run_failback(config, actor=operator())
    result = report.as_dict()
    if report.state == "normal" and report.outage is not None:
        incident = finish_outage(config, report.outage)
        result["incident_report"] = incident.archived_to
        note(incident_report=incident.archived_to)
    emit(result, as_json, render_failback,
         failure=f"{len(report.refused)} message(s) refused by the primary and kept on the"
         " standby; see the list above" if report.refused else None)


def _failback_elsewhere(ctx: Context, dry_run: bool, yes: bool, as_json: bool) -> None:
    """On a host without the standby's Maildirs (a gateway of a site with several hosts): the
    merge must run where they are, so this records the transition to ``failback`` in the shared
    store, and the sync agent on ``cluster.standby_host`` runs the merge (as it does when the
    monitor decides the failback); ``status`` on any host follows it."""
    config = ctx.config
    assert config.cluster is not None
    where = config.cluster.standby_host
    if dry_run:
        raise click.ClickException(
            f"the plan is made from the standby's Maildirs, which are on {where}"
            f" (cluster.standby_host): run 'mailcontinuity failback --dry-run' there")
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException("failback reroutes mail and writes to the primary;"
                                       " pass --yes to confirm without a terminal")
        click.confirm(f"Route mail back to the primary and have {where} merge the outage?",
                      abort=True)
    store = ctx.store()
    try:
        moved = change_state(config, store, "failback", "failback requested", operator(),
                             expect=("failover",))
        state = current_state(store).name
    finally:
        store.close()
    note_text = (f"the merge runs on {where} (its sync agent); follow it with"
                 " 'mailcontinuity status'" if moved or state == "failback"
                 else f"nothing to fail back: the state is {state}")
    emit({"outage": None, "state": state, "note": note_text, "counts": {}, "plan": {},
          "refused": [], "reports": [], "merge_host": where}, as_json, render_failback)


def _with_progress_bar(config: Any) -> FailbackReport:
    bars: list[Any] = []

    def on_plan(total: int) -> None:
        bars.append(click.progressbar(length=max(total, 1), label="merging").__enter__())

    def progress(count: int) -> None:
        if bars:
            bars[0].update(count)

    try:
        return run_failback(config, actor=operator(), progress=progress, on_plan=on_plan)
    finally:
        if bars:
            bars[0].__exit__(None, None, None)


def render_verify(report: dict[str, Any]) -> str:
    lines = [f"outage {report['outage']} ({report['outage_status']}):"
             f" {'clean' if report['ok'] else str(report['problems']) + ' problem(s)'}"]
    for user, found in report["users"].items():
        counts = ", ".join(f"{len(items)} {name.replace('_', ' ')}" for name, items in
                           found.items())
        lines.append(f"  {user}: {counts}")
        for name, items in found.items():
            lines += [f"    {name.replace('_', ' ')}: {_verify_item(item)}" for item in items]
    return "\n".join(lines)


def _verify_item(item: dict[str, Any]) -> str:
    """One message verify is unhappy about, as an operator finds it, then the particulars."""
    named = (f"{item.get('subject') or '(no subject)'!r} {item.get('message_id') or ''}"
             f" id {item.get('id') or '-'} (standby file {item.get('file') or '-'})")
    rest = {key: value for key, value in item.items()
            if key not in ("subject", "message_id", "id", "file", "key")}
    return f"{named} {' '.join(f'{key}={value}' for key, value in rest.items())}"


@command("verify", audit=True)
def verify_command(ctx: Context, as_json: bool) -> None:
    """Audit the primary against the last outage: missing, duplicated, flags."""
    report = verify(ctx.config)
    emit(report, as_json, render_verify,
         failure=None if report["ok"] else f"{report['problems']} problem(s) on the primary for"
         " the last outage; run 'mailcontinuity failback --yes' again, then verify")


@command("follow", audit=True)
@click.option("--user", "users", multiple=True, metavar="ADDRESS",
              help="Only this user (repeatable); default: every protected user.")
def follow_command(ctx: Context, users: tuple[str, ...], as_json: bool) -> None:
    """Make the standby's journal copies follow the primary now: folder, flags, deletion."""
    results = follow_all(ctx.config, list(users) or None, actor=operator())
    report = {"users": {r.user: {"folders_read": r.folders_read,
                                 "folders_unchanged": r.folders_unchanged,
                                 "standby_changes": [
                                     {"kind": c.kind, "folder": c.folder, "messages": len(c.uids),
                                      **({"to": c.to} if c.to else {}),
                                      **({"add": list(c.add)} if c.add else {}),
                                      **({"remove": list(c.remove)} if c.remove else {})}
                                     for c in r.changes],
                                 **({"error": r.error} if r.error else {})} for r in results}}
    failed = [r.user for r in results if r.error]
    emit(report, as_json, render_follow,
         failure=f"the follow pass failed for {', '.join(failed)}: see the errors above;"
         " the next pass tries again" if failed else None)


def render_follow(report: dict[str, Any]) -> str:
    lines = []
    for user, found in report["users"].items():
        if "error" in found:
            lines.append(f"{user}: FAILED {found['error']}")
            continue
        changes = found["standby_changes"]
        lines.append(f"{user}: {found['folders_read']} folder(s) read,"
                     f" {found['folders_unchanged']} unchanged, {len(changes)} change(s)"
                     " on the standby")
        lines += [f"  {c['kind']:<8} {c['folder']!r} {c['messages']} message(s)"
                  f"{' to ' + repr(c['to']) if 'to' in c else ''}"
                  f"{' +' + ' '.join(c['add']) if 'add' in c else ''}"
                  f"{' -' + ' '.join(c['remove']) if 'remove' in c else ''}" for c in changes]
    return "\n".join(lines) or "no protected users"


@command("sync-agent", json_output=False)
def sync_agent(ctx: Context) -> None:
    """Run the sync agent in the foreground (record outage activity, merge on failback)."""
    become_daemon("sync-agent")
    SyncAgent(ctx.config).run()
