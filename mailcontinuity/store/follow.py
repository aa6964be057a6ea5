"""What the follow pass last saw on the primary, per user and folder (``follow_folder``).

One row per folder: its UIDVALIDITY, its HIGHESTMODSEQ (CONDSTORE; None without it) and the
messages of the retention window there, by UID: key, flags and arrival day. The standby's
journal copies are made to look like this; a folder whose HIGHESTMODSEQ has not moved is not
read again, and only UIDs new in a folder have their headers read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from mailcontinuity.store.db import StateStore

Entry = tuple[str, tuple[str, ...], str]
"""(key, flags, arrival day as YYYY-MM-DD)."""


@dataclass(frozen=True)
class FolderSeen:
    """A primary folder as the last pass saw it."""

    uidvalidity: int
    modseq: int | None
    uids: dict[int, Entry]

    @classmethod
    def from_uids(cls, uidvalidity: int, modseq: int | None,
                  uids: dict[int, Entry]) -> FolderSeen:
        return cls(uidvalidity, modseq, dict(sorted(uids.items())))

    @property
    def messages(self) -> dict[str, tuple[tuple[str, ...], str]]:
        """key -> (flags, arrival day); of several copies in the folder, the lowest UID's."""
        found: dict[str, tuple[tuple[str, ...], str]] = {}
        for _, (key, flags, day) in sorted(self.uids.items()):
            found.setdefault(key, (flags, day))
        return found


def seen_folders(store: StateStore, user: str) -> dict[str, FolderSeen]:
    rows = store.query('SELECT folder, uidvalidity, modseq, messages FROM follow_folder'
                       ' WHERE "user" = ?', [user])
    return {row[0]: FolderSeen(int(row[1]), None if row[2] is None else int(row[2]),
                               {int(uid): (key, tuple(flags), day) for uid, (key, flags, day)
                                in json.loads(row[3]).items()})
            for row in rows}


def save_folders(store: StateStore, user: str, folders: dict[str, FolderSeen]) -> None:
    """Replace the user's rows with ``folders`` (a folder gone from the primary goes too)."""
    now = time.time()
    with store.transaction():
        store.execute('DELETE FROM follow_folder WHERE "user" = ?', [user])
        for folder, seen in sorted(folders.items()):
            store.execute(
                'INSERT INTO follow_folder ("user", folder, uidvalidity, modseq, messages,'
                ' checked_at) VALUES (?, ?, ?, ?, ?, ?)',
                [user, folder, seen.uidvalidity, seen.modseq,
                 json.dumps({str(uid): [key, list(flags), day] for uid, (key, flags, day)
                             in sorted(seen.uids.items())}), now])

