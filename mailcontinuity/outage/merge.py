"""Failback: route mail back to the primary, merge the outage into it, return to ``normal``.

Safe to interrupt anywhere: each finished action is checkpointed, and a new run plans again from
the primary's current contents, so a message appended just before a kill -9 (but not yet
checkpointed) is found on the primary and not appended twice. Only one process merges at a time
(a lease in the state store), whether it is ``mailcontinuity failback`` or the sync agent.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from mailcontinuity.config import Config
from mailcontinuity.hooks.runner import HookQueue
from mailcontinuity.mail.imap import CONNECTION_LOST, Append, backoff_hint
from mailcontinuity.outage.plan import Action, plan_user
from mailcontinuity.outage.preflight import preflight
from mailcontinuity.outage.primary import (
    PrimaryCopy,
    PrimaryError,
    PrimaryMailbox,
    connect,
    read_admin_password,
)
from mailcontinuity.outage.scan import rescan
from mailcontinuity.outage.verify import outage_index
from mailcontinuity.store.audit import record_command
from mailcontinuity.store.db import StateStore, open_store
from mailcontinuity.store.leases import LEASE_SECONDS, acquire_lease, holding_lease
from mailcontinuity.store.outages import ChangeLog, Outage, RecordedMessage
from mailcontinuity.store.state import State, current_state
from mailcontinuity.transitions import change_state

log = logging.getLogger(__name__)

LEASE = "failback"
# A last pass catches what users did on the standby while the first pass ran; more passes only
# when that one still found work (bounded: a user cannot keep failback open forever).
MAX_PASSES = 3
APPEND_BATCH_MESSAGES = 50
APPEND_BATCH_BYTES = 16 * 1024 * 1024
FINISHED = ("done", "reported")
# A throttled command is tried again this many times (waiting as the server suggests) before
# this run gives up; the next run resumes from the checkpoints.
THROTTLE_RETRIES = 5
# Finished actions are checkpointed together, this many or after this long (Merger._finish).
CHECKPOINT_ACTIONS = 100
CHECKPOINT_SECONDS = 2.0
# Marked on what was merged as read: the primary's clients must not ask for a read receipt
# the user already sent (or declined) on the standby (RFC 3503).
MDN_SENT = "$MDNSent"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class UserRecord:
    """What the outage record says about one user: all a plan depends on besides the primary."""

    messages: list[RecordedMessage]
    folders: dict[str, tuple[bool, bool]]


@dataclass
class UserMerge:
    """What one pass did for one user."""

    user: str
    counts: Counter[str] = field(default_factory=Counter)
    refused: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)
    settled: UserRecord | None = None
    """The record this pass merged completely (every action finished), if it did."""
    skipped: bool = False
    """Nothing to do: the record had not changed since an earlier pass settled it."""


def _summary(action: Action) -> dict[str, Any]:
    return {"action": action.kind, "folder": action.folder, "message_id": action.message_id,
            **({"from_folder": action.from_folder} if action.from_folder else {}),
            **({"add": list(action.add)} if action.add else {}),
            **({"remove": list(action.remove)} if action.remove else {}),
            **({"reason": action.reason} if action.reason else {})}


def read_receipt_flags(flags: tuple[str, ...]) -> tuple[str, ...]:
    """``flags`` plus $MDNSent when they make a message read."""
    if "\\Seen" in flags and MDN_SENT not in flags:
        return (*flags, MDN_SENT)
    return flags


def _append_item(source: Any) -> Append:
    data = Path(source.path).read_bytes()
    # IMAP literals carry CRLF; Dovecot stores LF, so a file read back has bare LFs.
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    data = data.replace(b"\n", b"\r\n")
    return Append(data, read_receipt_flags(tuple(source.flags)),
                  datetime.fromtimestamp(source.mtime, UTC))


class Merger:
    """One merge pass for one user, over its own IMAP session and state-store connection."""

    def __init__(self, config: Config, outage: Outage, user: str, password: str,
                 progress: Progress, lease_holder: str | None,
                 only: set[str] | None = None, repair: set[str] | None = None) -> None:
        self.config = config
        self.outage = outage
        self.user = user
        self.password = password
        self.progress = progress
        self.lease_holder = lease_holder
        self.only = only
        """When set, only actions on these messages (keys) run: retrying refused messages
        after the merge (their APPEND, or the flags a copy appended by hand lacks), or what
        verify found wrong."""
        self.repair = repair or set()
        """Keys verify found duplicated: their extra copies are removed (``plan_user``)."""
        self.result = UserMerge(user)
        self._unwritten: list[tuple[str, str, dict[str, Any]]] = []
        self._written_at = time.monotonic()
        self._renewed_at = -math.inf  # renewed at the first write: a short user's last one

    def plan(self, changelog: ChangeLog, mailbox: PrimaryMailbox, record: UserRecord,
             dry_run: bool) -> list[Action]:
        # Read only what can matter (verify reads the same way).
        index = outage_index(mailbox, record.messages, self.outage.started_at,
                             self.outage.key_scheme)
        actions = plan_user(record.messages, record.folders, index, mailbox.folders,
                            self.config.sync.propagate_deletions, self.repair)
        if not dry_run:
            self._clear_stale_refusals(changelog, actions, index)
        done = changelog.done_actions(self.outage.id, self.user)
        return [action for action in actions if done.get(action.id) not in FINISHED
                and (self.only is None or action.key in self.only
                     or action.kind == "create_folder")]

    def _clear_stale_refusals(self, changelog: ChangeLog, actions: list[Action],
                              index: dict[str, list[PrimaryCopy]]) -> None:
        """A refused APPEND the plan no longer needs, because the primary holds the message
        (the answer to an APPEND was lost, or the operator appended it), is merged: its row
        must not keep saying "refused" (nor keep the alert on it firing)."""
        planned = {action.id for action in actions}
        stale = {action: "found on the primary by a later pass"
                 for (_, action), detail in changelog.refused(self.outage.id, self.user).items()
                 if action not in planned and refused_key(action, detail) in index}
        if stale:
            log.info("event=refusals_cleared user=%s count=%d", self.user, len(stale))
            changelog.clear_refused(self.outage.id, self.user, stale)

    def run(self, dry_run: bool, settled: UserRecord | None = None) -> UserMerge:
        """Plan and (unless ``dry_run``) execute; nothing at all when the record still equals
        ``settled``, the record an earlier pass of this run merged completely: planning it again
        against the primary could only find those same, finished, actions."""
        store = open_store(self.config)
        changelog = ChangeLog(store)
        try:
            record = UserRecord(changelog.messages(self.outage.id, self.user),
                                changelog.folders(self.outage.id, self.user))
            if settled is not None and record == settled:
                self.result.settled, self.result.skipped = record, True
                return self.result
            mailbox = connect(self.config, self.user, self.password)
            try:
                actions = self.plan(changelog, mailbox, record, dry_run)
                if dry_run:
                    self.result.plan = [_summary(action) for action in actions]
                    self.result.counts.update(action.kind for action in actions)
                    return self.result
                try:
                    self._execute(changelog, mailbox, actions)
                finally:
                    self._write_checkpoints(changelog)
            except CONNECTION_LOST as exc:
                # Whatever was in flight may or may not be on the primary: the next run plans
                # from what the primary holds, so it is retried, or found there, never doubled.
                raise PrimaryError(
                    f"primary IMAP {self.config.primary.imap}: the connection was lost while"
                    f" merging {self.user} ({exc}); nothing was refused: run failback again when"
                    " the primary answers (finished steps are kept)") from None
            except IMAPClientError as exc:
                # A refusal outside any one action (SELECT, FETCH of the index): this user's
                # merge fails with the server's words; the other users go on.
                log.error("event=merge_user_failed user=%s reason=%r", self.user, str(exc))
                self.result.refused.append({"action": "merge", "server_said": str(exc),
                                            "kept_on_standby": "every outage message"})
            finally:
                mailbox.close()
            if not self.result.refused:
                self.result.settled = record
        finally:
            store.close()
        return self.result

    def _execute(self, changelog: ChangeLog, mailbox: PrimaryMailbox,
                 actions: list[Action]) -> None:
        appends: dict[str, list[Action]] = {}
        for action in actions:
            if action.kind == "append":
                appends.setdefault(action.folder, []).append(action)
        for action in (a for a in actions if a.kind == "create_folder"):
            try:
                self._patiently(mailbox.ensure_folder, action.folder)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as exc:
                self._refuse(changelog, action, str(exc))
                continue
            self._finish(changelog, [(action, "done", {})])
        for folder, batch in appends.items():
            for chunk in _batches(batch):
                self._append(changelog, mailbox, folder, chunk)
        for action in actions:
            if action.kind in ("flags", "move", "copy", "delete"):
                try:
                    self._patiently(self._change, mailbox, action)
                except IMAPClientAbortError:
                    raise
                except IMAPClientError as exc:
                    self._refuse(changelog, action, str(exc))
                    continue
                self._finish(changelog, [(action, "done", {})])
            elif action.kind == "report":
                log.warning("event=failback_report user=%s reason=%s folder=%r message_id=%s",
                            self.user, action.reason, action.folder, action.message_id)
                self.result.reports.append(_summary(action))
                self._finish(changelog, [(action, "reported", _summary(action))])

    def _append(self, changelog: ChangeLog, mailbox: PrimaryMailbox, folder: str,
                chunk: list[Action]) -> None:
        items = [_append_item(action.source) for action in chunk]
        try:
            self._patiently(mailbox.append, folder, items)
            self._finish(changelog, [(action, "done", {}) for action in chunk])
            return
        except IMAPClientAbortError:
            raise  # the session is gone (see CONNECTION_LOST): not the server's refusal
        except IMAPClientError as exc:
            if len(chunk) == 1:
                self._refuse(changelog, chunk[0], str(exc))
                return
        # MULTIAPPEND is all or nothing: find the message the primary refuses one by one.
        for action, item in zip(chunk, items, strict=False):
            try:
                mailbox.append(folder, [item])
            except IMAPClientAbortError:
                raise
            except IMAPClientError as exc:
                self._refuse(changelog, action, str(exc))
            else:
                self._finish(changelog, [(action, "done", {})])

    def _patiently(self, step: Callable[..., Any], *args: Any) -> Any:
        """Run one IMAP step; when the primary throttles, wait as it suggests and try again,
        up to THROTTLE_RETRIES times, then give this run up (PrimaryError: the sync agent
        tries again later, resuming from the checkpoints; status shows why)."""
        for attempt in range(THROTTLE_RETRIES + 1):
            try:
                return step(*args)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as exc:
                wait = backoff_hint(str(exc), attempt)
                if wait is None:
                    raise
                if attempt == THROTTLE_RETRIES:
                    raise PrimaryError(
                        f"primary IMAP {self.config.primary.imap} throttles {self.user}'s"
                        f" merge ({exc}) after {THROTTLE_RETRIES} waits; failback resumes"
                        " where it stopped when it is run again") from None
                log.warning("event=primary_throttled user=%s attempt=%d wait_seconds=%.1f"
                            " said=%r", self.user, attempt + 1, wait, str(exc))
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _refuse(self, changelog: ChangeLog, action: Action, reason: str) -> None:
        detail = {**_summary(action), "key": action.key, "server_said": reason,
                  "kept_on_standby": action.source.path if action.source else ""}
        log.error("event=primary_refused user=%s action=%s folder=%r message_id=%s reason=%r",
                  self.user, action.kind, action.folder, action.message_id, reason)
        self.result.refused.append(detail)
        self._finish(changelog, [(action, "refused", detail)])

    def _change(self, mailbox: PrimaryMailbox, action: Action) -> None:
        if action.kind == "flags":
            mailbox.set_flags(action.folder, action.uid, read_receipt_flags(action.add),
                              action.remove)
        elif action.kind == "move":
            mailbox.set_flags(action.from_folder, action.uid, read_receipt_flags(action.add),
                              action.remove)
            mailbox.ensure_folder(action.folder)
            mailbox.move(action.from_folder, action.uid, action.folder)
        elif action.kind == "copy":
            mailbox.ensure_folder(action.folder)
            copied = mailbox.copy(action.from_folder, action.uid, action.folder)
            if action.add or action.remove:
                mailbox.set_flags(action.folder, copied, read_receipt_flags(action.add),
                                  action.remove)
        elif action.kind == "delete":
            mailbox.expunge(action.folder, action.uid)

    def _finish(self, changelog: ChangeLog,
                results: list[tuple[Action, str, dict[str, Any]]]) -> None:
        """Count finished actions; their checkpoints are written in batches
        (``CHECKPOINT_ACTIONS``, ``CHECKPOINT_SECONDS``), a refusal at once (status and its
        alert show it). Not one transaction per action: a commit each (and a lease renewal
        each) was most of failback's own time (docs/benchmarks.md). Nothing is lost by the
        wait: a step done on the primary but not yet checkpointed is seen there by the next
        pass's plan (each step's effect is in the primary's index), never done twice."""
        for action, status, detail in results:
            self.result.counts[f"{action.kind}:{status}"] += 1
            self._unwritten.append((action.id, status, detail))
        self.progress(len(results))
        if (len(self._unwritten) >= CHECKPOINT_ACTIONS
                or time.monotonic() - self._written_at >= CHECKPOINT_SECONDS
                or any(status == "refused" for _, status, _ in results)):
            self._write_checkpoints(changelog)

    def _write_checkpoints(self, changelog: ChangeLog) -> None:
        """The checkpoints not yet written, in one transaction; the lease renewed while
        working, at most every quarter of its term."""
        now = time.monotonic()
        if self._unwritten:
            changelog.checkpoint(self.outage.id, self.user, self._unwritten)
            self._unwritten = []
        self._written_at = now
        if self.lease_holder is not None and now - self._renewed_at >= LEASE_SECONDS / 4:
            acquire_lease(changelog.store, LEASE, self.lease_holder)
            self._renewed_at = now


def _batches(actions: list[Action]) -> list[list[Action]]:
    batches: list[list[Action]] = [[]]
    size = 0
    for action in actions:
        length = action.source.size if action.source else 0
        if batches[-1] and (len(batches[-1]) >= APPEND_BATCH_MESSAGES
                            or size + length > APPEND_BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(action)
        size += length
    return [batch for batch in batches if batch]


def merge_pass(config: Config, outage: Outage, users: list[str], dry_run: bool,
               progress: Progress, lease_holder: str | None,
               settled: dict[str, UserRecord] | None = None,
               only: dict[str, set[str]] | None = None,
               repair: dict[str, set[str]] | None = None) -> list[UserMerge]:
    """One pass over every user, ``sync.concurrency`` users at a time; users whose record
    is still one in ``settled`` are skipped (see ``Merger.run``); with ``only``, each user's
    pass acts only on those messages (keys); ``repair``: keys whose extra copies go."""
    settled = settled or {}
    password = read_admin_password(config)
    lock = threading.Lock()

    def locked_progress(count: int) -> None:
        with lock:
            progress(count)

    def one(user: str) -> UserMerge:
        return Merger(config, outage, user, password, locked_progress, lease_holder,
                      None if only is None else only.get(user, set()),
                      (repair or {}).get(user)).run(dry_run, settled.get(user))

    with ThreadPoolExecutor(max_workers=config.sync.concurrency) as pool:
        return list(pool.map(one, users))


def count_planned(config: Config, outage: Outage, users: list[str]) -> int:
    """How many actions the next pass has to do (for a progress bar's length)."""
    results = merge_pass(config, outage, users, True, lambda _: None, None)
    return sum(len(result.plan) for result in results)


@dataclass
class FailbackReport:
    outage: int | None
    state: str
    passes: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    refused: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"outage": self.outage, "state": self.state, "passes": self.passes,
                "counts": dict(sorted(self.counts.items())), "refused": self.refused,
                "reports": self.reports, "plan": self.plan, "note": self.note}


def _add(report: FailbackReport, results: list[UserMerge]) -> int:
    """Fold a pass into the report; returns how many changes it made on the primary."""
    changed = 0
    for result in results:
        report.counts.update(result.counts)
        report.refused += [{"user": result.user, **item} for item in result.refused]
        report.reports += [{"user": result.user, **item} for item in result.reports]
        changed += sum(n for name, n in result.counts.items()
                       if name.endswith(":done") and not name.startswith("create_folder"))
    return changed


def refused_key(action: str, detail: dict[str, Any]) -> str:
    """The message key of a refused APPEND (older rows lack it in their detail: the action id
    ``append|folder|key|`` ends with it)."""
    return str(detail.get("key") or action.rsplit("|", 2)[-2])


def still_refused(changelog: ChangeLog, outage_id: int,
                  this_run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the primary refused and no later pass merged (a message retried and stored, or
    found on the primary, is no longer listed), and the users whose whole merge it refused in
    this run (a SELECT or FETCH refused: no action's row records that, ``this_run`` does)."""
    return [{"user": user, **detail}
            for (user, _), detail in changelog.refused(outage_id).items()] + [
        item for item in this_run if item["action"] == "merge"]


def _merge_again(config: Config, changelog: ChangeLog, outage: Outage, actor: str,
                 progress: Progress, holder: str) -> FailbackReport:
    """After the merge: merge again only what the primary refused (the operator fixed the
    cause) and what the last ``verify`` found wrong (its advice: run failback again), planned
    from the primary's contents like every pass, from the outage's record as it ended (no
    rescan). A refused message that is there by now (appended by hand, say) is cleared rather
    than appended twice and only gets the flags it lacks; a message verify found duplicated
    loses the copies that stand for none of the standby's."""
    refused = changelog.refused(outage.id)
    found = outage.summary.get("to_repair") or {}
    only: dict[str, set[str]] = {}
    repair: dict[str, set[str]] = {}
    for (user, action), detail in refused.items():
        only.setdefault(user, set()).add(refused_key(action, detail))
    for user, keys in found.items():
        only.setdefault(user, set()).update(keys.get("keys", ()))
        repair[user] = set(keys.get("duplicated", ()))
    results = merge_pass(config, outage, sorted(only), False, progress, holder, only=only,
                         repair=repair)
    notes = []
    if refused:
        notes.append(f"retried {len(refused)} message(s) the primary had refused")
    if found:
        notes.append(f"merged again {sum(len(k.get('keys', ())) for k in found.values())}"
                     " message(s) verify found wrong; run mailcontinuity verify")
    report = FailbackReport(outage.id, "normal", passes=1, note="; ".join(notes))
    _add(report, results)
    report.refused = still_refused(changelog, outage.id, report.refused)
    # Verify's findings are acted on: the next verify says what (if anything) is left.
    changelog.add_to_summary(outage.id, refused=report.refused, to_repair={})
    record_command(changelog.store, "failback", actor,
                   {"outage": outage.id, "retried": len(refused),
                    "repaired": sorted(found), "refused": len(report.refused)}, event="merge")
    log.info("event=merged_again outage=%d retried=%d repaired_users=%d still_refused=%d",
             outage.id, len(refused), len(found), len(report.refused))
    return report


def plan_failback(config: Config) -> FailbackReport:
    """``--dry-run``: what failback would do now, changing nothing on the primary."""
    store = open_store(config)
    try:
        changelog = ChangeLog(store)
        state = current_state(store).name
        outage = changelog.open_outage()
        if outage is None:
            return FailbackReport(None, state, note="no outage to merge")
        outage = rescan(config, changelog, outage)
        results = merge_pass(config, outage, changelog.users(outage.id), True,
                             lambda _: None, None)
        report = FailbackReport(outage.id, state)
        for result in results:
            report.counts.update(result.counts)
            report.plan[result.user] = result.plan
        return report
    finally:
        store.close()


def _preflight_or_refuse(config: Config, changelog: ChangeLog) -> None:
    """Before the state switches: log in as one user (the drill's probe user, else one with
    outage mail) the way the merge will; a PrimaryError saying why when that fails."""
    outage = changelog.open_outage()
    users = changelog.users(outage.id) if outage is not None else []
    user = config.drill.probe_address or (users[0] if users else None)
    if user is None:
        return
    checked = preflight(config, user)
    if not checked.ok:
        raise PrimaryError(f"failback not started, the state stays failover (mail keeps going"
                           f" to the standby): preflight as {user} failed: {checked.failed}")
    log.info("event=failback_preflight user=%s result=%r", user, checked.summary())


def finish_failback(config: Config, changelog: ChangeLog, outage: Outage | None,
                    report: FailbackReport, actor: str, hooks: HookQueue | None = None) -> None:
    """Mark ``outage`` merged and return to ``normal`` in one transaction: ``status``, the
    metrics and every other host never see the record merged while the state still says
    ``failback`` (on a shared store, two commits apart, they did). A state already ``normal``
    (an operator's ``set-state``) still gets its record closed."""
    def mark_merged(store: StateStore, old: State) -> dict[str, Any]:
        assert outage is not None
        changelog.update_outage(outage.id, status="merged", merged_at=time.time(),
                                summary=report.as_dict())
        return {}

    moved = change_state(config, changelog.store, "normal", "failback complete", actor,
                         expect=("failback", "failover"), hooks=hooks,
                         guard=mark_merged if outage is not None else None)
    if not moved and outage is not None:
        changelog.set_outage(outage.id, status="merged", merged_at=time.time(),
                             summary=report.as_dict())


def run_failback(config: Config, actor: str, cause: str = "failback requested",
                 progress: Progress = lambda _: None,
                 on_plan: Callable[[int], None] | None = None,
                 hooks: HookQueue | None = None) -> FailbackReport:
    """Merge the open outage into the primary and return to ``normal`` (resumable).

    ``on_plan``, when given, hears how many actions the first pass will take before it starts
    (for a progress bar; it costs one more look at every mailbox). ``hooks``: the daemon's
    queue for the transitions' hooks (see ``change_state``).
    """
    store = open_store(config)
    changelog = ChangeLog(store)
    holder = f"{actor}-{uuid.uuid4().hex[:8]}"
    with closing(store), holding_lease(store, LEASE, holder):
        state = current_state(store).name
        if state == "failover":
            _preflight_or_refuse(config, changelog)
            # Routing first: new mail goes to the primary before the merge starts.
            change_state(config, store, "failback", cause, actor, expect=("failover",),
                         hooks=hooks)
        # Read after the transition: the recorder opens no record once the state has left
        # failover, so none can appear after this.
        outage = changelog.open_outage()
        if state == "normal" and outage is None:
            last = changelog.last_outage()
            if last is not None and (changelog.refused(last.id)
                                     or last.summary.get("to_repair")):
                return _merge_again(config, changelog, last, actor, progress, holder)
            return FailbackReport(None, state, note="no outage to merge")
        if outage is None and changelog.last_outage() is None:
            log.warning("event=no_outage_record note=%r", "the sync agent recorded nothing;"
                        " merging what the standby holds now (flag changes and moves of older"
                        " mail cannot be known)")
            outage = changelog.start_outage()
        report = FailbackReport(outage.id if outage else None, "failback")
        if outage is not None:
            changelog.set_outage(outage.id, status="merging")
            settled: dict[str, UserRecord] = {}
            for number in range(1, MAX_PASSES + 1):
                outage = rescan(config, changelog, outage)
                users = changelog.users(outage.id)
                if number == 1 and on_plan is not None:
                    on_plan(count_planned(config, outage, users))
                results = merge_pass(config, outage, users, False, progress, holder, settled)
                unchanged = sum(1 for result in results if result.skipped)
                settled = {r.user: r.settled for r in results if r.settled is not None}
                changed = _add(report, results)
                report.passes = number
                log.info("event=failback_pass outage=%d pass=%d changes=%d users=%d"
                         " users_unchanged=%d", outage.id, number, changed, len(users), unchanged)
                if number > 1 and changed == 0:
                    break
            report.refused = still_refused(changelog, outage.id, report.refused)
        finish_failback(config, changelog, outage, report, actor, hooks)
        record_command(store, "failback", actor, {"outage": report.outage,
                                         "counts": dict(report.counts),
                                         "refused": len(report.refused)}, event="merge")
        report.state = "normal"
        return report

