"""What ``sieve-sync`` last left on the standby for each user: the base its three-way rule
compares both servers with, so that a script the user changed on the standby during an outage
(an out-of-office set in the portal) is told from one the primary changed since."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from mailcontinuity.store.db import StateStore


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SyncedScripts:
    """A user's scripts on the standby after the last sync: name -> digest, the active one,
    and whether an outage began since (only then did users work on the standby)."""

    active: str | None
    digests: dict[str, str]
    outage_since: bool = False


def synced_scripts(store: StateStore, user: str) -> SyncedScripts | None:
    """None when sieve-sync never completed for ``user``: there is no base to compare with."""
    rows = store.query('SELECT active, digests, synced_at FROM sieve_synced WHERE "user" = ?',
                       [user])
    if not rows:
        return None
    active, digests, synced_at = rows[0]
    outage = store.query("SELECT 1 FROM sync_outage WHERE started_at > ? LIMIT 1", [synced_at])
    return SyncedScripts(active, json.loads(digests), bool(outage))


def record_synced(store: StateStore, user: str, active: str | None,
                  texts: dict[str, str]) -> None:
    with store.transaction():
        store.execute('DELETE FROM sieve_synced WHERE "user" = ?', [user])
        store.execute('INSERT INTO sieve_synced ("user", active, digests, synced_at)'
                      " VALUES (?, ?, ?, ?)",
                      [user, active, json.dumps({name: digest(text)
                                                 for name, text in sorted(texts.items())}),
                       time.time()])
