"""The state store's schema, as numbered migrations: append only.

A released migration is never edited; a change is a new function at the end of ``MIGRATIONS``.
Each runs inside the transaction that also records the new schema version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailcontinuity.store.db import StateStore


def _migration_1(store: StateStore) -> None:
    """State and audit log: the minimum every other part builds on."""
    store.execute(
        "CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL,"
        " since REAL NOT NULL, cause TEXT NOT NULL, actor TEXT NOT NULL)"
    )
    store.execute(
        "INSERT INTO state (id, name, since, cause, actor) VALUES (1, 'normal', ?, ?, ?)",
        [time.time(), "state store created", "mailcontinuity"],
    )
    store.execute(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
        " event TEXT NOT NULL, from_state TEXT, to_state TEXT, cause TEXT NOT NULL,"
        " actor TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}')"
    )
    store.execute("CREATE INDEX audit_at ON audit (at)")


def _migration_journal(store: StateStore) -> None:
    """Journal index: one row per journal copy (shipped, unknown recipient, failed, pruned),
    and the milter's alarms (spool write failures, shipping errors) for ``status``."""
    store.execute(
        "CREATE TABLE journal (message_id TEXT NOT NULL, address TEXT NOT NULL,"
        " folder TEXT NOT NULL, status TEXT NOT NULL, received REAL NOT NULL,"
        " recorded REAL NOT NULL, location TEXT, detail TEXT NOT NULL DEFAULT '',"
        " PRIMARY KEY (message_id, address, folder))"
    )
    store.execute("CREATE INDEX journal_status ON journal (status, received)")
    store.execute(
        "CREATE TABLE journal_alarm (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
        " kind TEXT NOT NULL, detail TEXT NOT NULL)"
    )
    store.execute("CREATE INDEX journal_alarm_kind ON journal_alarm (kind, at)")


def _migration_sync(store: StateStore) -> None:
    """Outages, the standby mirror, folders, failback checkpoints, the merge lease, heartbeat."""
    store.execute(
        "CREATE TABLE sync_outage (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL,"
        " baseline_at REAL, status TEXT NOT NULL, merged_at REAL, summary TEXT NOT NULL"
        " DEFAULT '{}')"
    )
    store.execute(
        "CREATE TABLE sync_message (outage_id INTEGER NOT NULL, user TEXT NOT NULL,"
        " folder TEXT NOT NULL, basename TEXT NOT NULL, filename TEXT NOT NULL,"
        " path TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, flags TEXT NOT NULL,"
        " size INTEGER NOT NULL, mtime REAL NOT NULL, message_id TEXT NOT NULL,"
        " present INTEGER NOT NULL, in_baseline INTEGER NOT NULL, base_flags TEXT,"
        " updated_at REAL NOT NULL, PRIMARY KEY (outage_id, user, folder, basename))"
    )
    store.execute("CREATE INDEX sync_message_key ON sync_message (user, key, kind)")
    store.execute(
        "CREATE TABLE sync_folder (outage_id INTEGER NOT NULL, user TEXT NOT NULL,"
        " folder TEXT NOT NULL, in_baseline INTEGER NOT NULL, present INTEGER NOT NULL,"
        " PRIMARY KEY (outage_id, user, folder))"
    )
    store.execute(
        "CREATE TABLE sync_progress (outage_id INTEGER NOT NULL, user TEXT NOT NULL,"
        " action TEXT NOT NULL, status TEXT NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL,"
        " PRIMARY KEY (outage_id, user, action))"
    )
    store.execute(
        "CREATE TABLE sync_lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL,"
        " pid INTEGER NOT NULL, host TEXT NOT NULL, expires_at REAL NOT NULL)"
    )
    store.execute(
        "CREATE TABLE sync_agent (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL,"
        " started_at REAL NOT NULL, heartbeat_at REAL NOT NULL)"
    )


def _migration_policyd_health(store: StateStore) -> None:
    """The primary's health probes and policyd's heartbeat, written by policyd, read by status."""
    store.execute(
        "CREATE TABLE health_probes (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
        " probe TEXT NOT NULL, target TEXT NOT NULL, ok INTEGER NOT NULL,"
        " latency_ms REAL NOT NULL, error TEXT NOT NULL)"
    )
    store.execute("CREATE INDEX health_probes_at ON health_probes (at)")
    store.execute(
        "CREATE TABLE policyd_heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1),"
        " pid INTEGER NOT NULL, started_at REAL NOT NULL, beat_at REAL NOT NULL,"
        " stale_after REAL NOT NULL, stopped_at REAL)"
    )


def _migration_audit_origin(store: StateStore) -> None:
    """Where each audited action came from (``ssh:IP``, ``tty:...``, ``daemon:NAME@HOST``);
    records from before this migration have an empty origin."""
    store.execute("ALTER TABLE audit ADD COLUMN origin TEXT NOT NULL DEFAULT ''")


def _migration_retired_counts(store: StateStore) -> None:
    """How many records ``prune`` has forgotten, by kind (``journal:pruned``,
    ``alarm:ship_error``...), so that the counters ``status`` and the metrics show never go
    down when old rows are deleted."""
    store.execute("CREATE TABLE retired_count (name TEXT PRIMARY KEY, count INTEGER NOT NULL)")


def _migration_watch(store: StateStore) -> None:
    """Every watched part's latest check (the standby's listeners, the milter's socket, the
    webmail, the sync agent's process), with since when it has been in its present condition;
    how many messages for protected domains the gateway accepted, by minute, which the journal
    copies must keep pace with; an index for each probe's latest result."""
    store.execute(
        "CREATE TABLE part_check (part TEXT NOT NULL, name TEXT NOT NULL, target TEXT NOT NULL,"
        " ok INTEGER NOT NULL, since REAL NOT NULL, at REAL NOT NULL, latency_ms REAL,"
        " detail TEXT NOT NULL, action TEXT NOT NULL, PRIMARY KEY (part, name))"
    )
    store.execute(
        "CREATE TABLE gateway_accepted (minute INTEGER PRIMARY KEY, messages INTEGER NOT NULL)"
    )
    # status and every scrape read each probe's latest result (a day of rounds is 86,400 rows).
    store.execute("CREATE INDEX health_probes_probe ON health_probes (probe, id)")


def _migration_first_flags(store: StateStore) -> None:
    """The flags a message file had when the outage record first saw it: what a flag change on
    mail that came during the outage is measured against (baseline files have base_flags)."""
    store.execute("ALTER TABLE sync_message ADD COLUMN first_flags TEXT")


def _migration_follow(store: StateStore) -> None:
    """History as the user left it: per user and primary folder, what the last follow pass saw
    there (UIDVALIDITY, HIGHESTMODSEQ with CONDSTORE, and each message of the retention window:
    key -> flags and arrival day), so an unchanged folder is not read again and a message gone
    from every folder is known to be deleted on the primary."""
    store.execute(
        "CREATE TABLE follow_folder (\"user\" TEXT NOT NULL, folder TEXT NOT NULL,"
        " uidvalidity INTEGER NOT NULL, modseq INTEGER, messages TEXT NOT NULL,"
        " checked_at REAL NOT NULL, PRIMARY KEY (\"user\", folder))"
    )


def _migration_journal_counts(store: StateStore) -> None:
    """Copies by status kept as they change (``status`` and every scrape read 4 rows, not the
    whole index: a 10,000-user site holds millions), and an index for ``prune`` to find the
    rows settled before a date without reading every settled row."""
    store.execute("CREATE TABLE journal_count (status TEXT PRIMARY KEY, count INTEGER NOT NULL)")
    store.execute("INSERT INTO journal_count (status, count)"
                  " SELECT status, count(*) FROM journal GROUP BY status")
    store.execute("CREATE INDEX journal_recorded ON journal (status, recorded)")


# Append only: a released migration is never edited, a change is a new entry.
MIGRATIONS: list[Callable[[StateStore], None]] = [
    _migration_1,
    _migration_journal,
    _migration_sync,
    _migration_policyd_health,
    _migration_audit_origin,
    _migration_retired_counts,
    _migration_watch,
    _migration_first_flags,
    _migration_follow,
    _migration_journal_counts,
]
