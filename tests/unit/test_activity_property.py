"""The outage activity counts kept as the recorder writes (``activity``, migration 15) equal
its definition over every row of the record (``activity_full_read``) after any sequence of what
the recorder writes: a baseline (copies of a message in several folders, with other flags too),
new files, flag-change renames, files gone (a stale MOVED_FROM included), files back, folders,
and mail merged in an earlier outage (whose history retention may have forgotten). One store per
test, a new outage per example (the earlier ones merged), on SQLite and, with ``-m postgres``, on
PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcontinuity.config import Config
from mailcontinuity.mail.maildir import MessageFile
from mailcontinuity.store import connection, migrations
from mailcontinuity.store.db import SQLiteStore, StateStore, open_store
from mailcontinuity.store.migrations import MIGRATIONS
from mailcontinuity.store.outages import ChangeLog

USERS = ["alice@example.test", "bob@example.test"]
FOLDERS = ["INBOX", "Archive", "Sent"]
KEYS = ["id:1", "id:2", "id:3", "mid:<a@x>:10", "mid:<b@x>:20"]
FLAGS = [(), ("S",), ("F",), ("F", "S"), ("S", "T")]


def file_of(folder: str, basename: str, key: str, flags: tuple[str, ...],
            journal: bool) -> MessageFile:
    return MessageFile(folder=folder, basename=basename,
                       filename=f"{basename}:2,{''.join(flags)}",
                       path=Path("/nowhere") / folder / basename, flags=flags, key=key,
                       journal=journal, size=10, mtime=1.0, message_id=f"<{basename}>")


def close_earlier(log: ChangeLog, forget: bool) -> None:
    """Merge the earlier example's outage; with ``forget``, retention then deletes its history
    rows (``forget_merged_before``) and its kept counts follow."""
    earlier = log.open_outage()
    if earlier is not None:
        log.set_outage(earlier.id, status="merged", merged_at=1.0)
        if forget:
            log.forget_merged_before(2.0)
        same_counts(log, earlier.id)


def same_counts(log: ChangeLog, outage: int) -> None:
    assert log.activity(outage) == log.activity_full_read(outage)


def run_events(store: StateStore, data: st.DataObject) -> None:
    log = ChangeLog(store)
    close_earlier(log, data.draw(st.booleans(), label="forget the earlier outage"))
    outage = log.start_outage()
    assert outage is not None
    o = outage.id
    files: list[tuple[str, str, str, str, bool, str]] = []  # user, folder, base, key, journal, name
    names = iter(range(10_000))

    def new_file(baseline: bool) -> None:
        user, folder = data.draw(st.sampled_from(USERS)), data.draw(st.sampled_from(FOLDERS))
        key, flags = data.draw(st.sampled_from(KEYS)), data.draw(st.sampled_from(FLAGS))
        journal = data.draw(st.booleans())
        found = file_of(folder, f"m{o}-{next(names)}", key, flags, journal)
        log.upsert_file(o, user, found, baseline)
        files.append((user, folder, found.basename, key, journal, found.filename))

    for _ in range(data.draw(st.integers(0, 8), label="baseline files")):
        new_file(baseline=True)
    for user in USERS:
        for folder in data.draw(st.sets(st.sampled_from(FOLDERS)), label="baseline folders"):
            log.record_folder(o, user, folder, present=True, baseline=True)
    same_counts(log, o)
    events = data.draw(st.lists(st.sampled_from(["new", "flags", "gone", "stale", "back",
                                                 "folder"]), max_size=25), label="events")
    for event in events:
        if event == "new" or (event != "folder" and not files):
            new_file(baseline=False)
        elif event == "folder":
            log.record_folder(o, data.draw(st.sampled_from(USERS)),
                              data.draw(st.sampled_from([*FOLDERS, "New"])),
                              present=data.draw(st.booleans()), baseline=False)
        else:
            index = data.draw(st.integers(0, len(files) - 1))
            user, folder, basename, key, journal, filename = files[index]
            if event in ("flags", "back"):
                flags = data.draw(st.sampled_from(FLAGS)) if event == "flags" else ()
                found = file_of(folder, basename, key, flags, journal)
                log.upsert_file(o, user, found, baseline=False)
                files[index] = (user, folder, basename, key, journal, found.filename)
            else:  # gone: the file left; stale: a MOVED_FROM naming an older name
                name = filename if event == "gone" else f"{basename}:2,old"
                log.mark_gone(o, user, folder, basename, filename=name)
        same_counts(log, o)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_indexed_activity_equals_the_full_read(store_config: Config,
                                               data: st.DataObject) -> None:
    store = open_store(store_config)
    try:
        run_events(store, data)
    finally:
        store.close()


def test_the_activity_migrations_count_a_store_recorded_before_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store upgraded during an outage: its record, written at the schema before the activity
    migrations (14, 15), gives the same counts kept (filled by migration 15) as read in full (a
    message held twice in the baseline with other flags counts as flagged history either way;
    a folder new during the outage counts)."""
    before = MIGRATIONS.index(migrations._migration_activity_index)
    monkeypatch.setattr(connection, "MIGRATIONS", MIGRATIONS[:before])
    store = SQLiteStore(tmp_path / "state.db")
    assert store.schema_version == before
    log = ChangeLog(store)
    outage = log.start_outage()
    assert outage is not None
    for folder, basename, key, flags in (("INBOX", "a", "id:1", "S"), ("Archive", "b", "id:1", ""),
                                         ("INBOX", "c", "id:2", "S"), ("Sent", "d", "id:2", "S")):
        store.execute(
            'INSERT INTO sync_message (outage_id, "user", folder, basename, filename, path, key,'
            " kind, flags, size, mtime, message_id, present, in_baseline, base_flags,"
            " updated_at, first_flags) VALUES (?, 'alice', ?, ?, ?, '', ?, 'existing', ?, 10,"
            " 1.0, '', 1, 1, ?, 1.0, ?)",
            [outage.id, folder, basename, f"{basename}:2,{flags}", key, flags, flags, flags])
    store.execute('INSERT INTO sync_folder (outage_id, "user", folder, in_baseline, present)'
                  " VALUES (?, 'alice', 'Projects', 0, 1)", [outage.id])
    store.close()
    monkeypatch.setattr(connection, "MIGRATIONS", MIGRATIONS)
    store = SQLiteStore(tmp_path / "state.db")
    try:
        assert store.schema_version == len(MIGRATIONS)
        counts = ChangeLog(store).activity(outage.id)
        assert counts["history_flagged"] == 1
        assert counts["new_folders"] == 1  # migration 15 filled the kept counts
        assert counts == ChangeLog(store).activity_full_read(outage.id)
    finally:
        store.close()
