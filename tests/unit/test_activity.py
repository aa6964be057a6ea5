"""Outage activity counts say what users did: outage mail and history apart, in messages."""

from __future__ import annotations

from pathlib import Path

from mailcontinuity.config import Config
from mailcontinuity.mail.maildir import MessageFile
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ACTIVITY_FIELDS, ChangeLog


def seen(log: ChangeLog, outage: int, folder: str, name: str, key: str,
         flags: tuple[str, ...] = (), baseline: bool = False, journal: bool = False) -> None:
    log.upsert_file(outage, "alice@example.test", MessageFile(
        folder=folder, basename=name, filename=f"{name}:2,{''.join(flags)}",
        path=Path("/nowhere") / folder / name, flags=flags, key=key, journal=journal, size=10,
        mtime=1.0, message_id=f"<{name}>"), baseline)


def gone(log: ChangeLog, outage: int, folder: str, name: str) -> None:
    log.mark_gone(outage, "alice@example.test", folder, name)


def test_counts_follow_what_the_user_did(store_config: Config) -> None:
    store = open_store(store_config)
    log = ChangeLog(store)
    outage = log.start_outage()
    assert outage is not None
    o = outage.id
    # History at the baseline: h1 flagged in place, h2 moved, h3 deleted, h4 untouched,
    # h5 flagged then moved (the recorder saw only the move).
    for name in ("h1", "h2", "h3", "h4", "h5"):
        seen(log, o, "INBOX", name, f"id:{name}", baseline=True, journal=True)
    seen(log, o, "INBOX", "h1", "id:h1", ("F",))
    gone(log, o, "INBOX", "h2")
    seen(log, o, "Archive", "h2b", "id:h2", journal=True)
    seen(log, o, "INBOX", "h3", "id:h3", ("T",))  # \Deleted, just before the expunge
    gone(log, o, "INBOX", "h3")
    gone(log, o, "INBOX", "h5")
    seen(log, o, "Archive", "h5b", "id:h5", ("F",), journal=True)
    # Outage mail: five received; o1 read, o2 flagged then moved, o3 moved, o4 deleted, o5
    # moved and then deleted; a draft and a Sent copy (which arrives \Seen: not a change).
    for name in ("o1", "o2", "o3", "o4", "o5"):
        seen(log, o, "INBOX", name, f"id:{name}")
    seen(log, o, "INBOX", "o1", "id:o1", ("S",))
    seen(log, o, "INBOX", "o2", "id:o2", ("F",))
    for name in ("o2", "o3", "o5"):
        gone(log, o, "INBOX", name)
        seen(log, o, "Moved", f"{name}b", f"id:{name}", ("F",) if name == "o2" else ())
    gone(log, o, "INBOX", "o4")
    gone(log, o, "Moved", "o5b")
    seen(log, o, "Drafts", "d1", "mid:<d1>:10", ("D",))
    seen(log, o, "Sent", "s1", "mid:<s1>:10", ("S",))
    log.record_folder(o, "alice@example.test", "Moved", present=True, baseline=False)

    counts = log.activity(o)
    assert list(counts) == list(ACTIVITY_FIELDS)
    assert log.activity_full_read(o) == counts
    assert counts == {
        "new_messages": 7, "outage_received": 5, "outage_written": 2,
        "outage_moved": 2, "outage_deleted": 2, "outage_flagged": 2,
        "history_moved": 2, "history_deleted": 1, "history_flagged": 2,
        "new_folders": 1,
    }
    store.close()
