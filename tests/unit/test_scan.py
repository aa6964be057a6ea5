"""The outage record of the standby's Maildir: a keyword set on the standby is not lost when
the recorder reads the renamed file before Dovecot has written the keyword's letter down."""

from __future__ import annotations

from pathlib import Path

from mailcontinuity.mail.maildir import keywords_known
from mailcontinuity.outage.scan import record_file, rescan_user
from mailcontinuity.store.db import SQLiteStore
from mailcontinuity.store.outages import ChangeLog

USER = "bob@example.test"
BASE = "1795928697.M91136Q1.vm,S=60,W=62"


def recorded(log: ChangeLog, outage: int) -> tuple[str, str]:
    row = log.store.one('SELECT filename, flags FROM sync_message WHERE outage_id = ?'
                        ' AND "user" = ?', [outage, USER])
    assert row is not None
    return row[0], row[1]


def test_a_letter_dovecot_has_not_written_down_yet_is_left_for_the_rescan(
        tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    message = maildir / "cur" / f"{BASE}:2,S"
    message.write_bytes(b"Message-ID: <m1@remote.test>\nSubject: s\n\nbody\n")
    log = ChangeLog(SQLiteStore(tmp_path / "state.db"))
    outage = log.start_outage()
    assert outage is not None
    rescan_user(log, outage.id, USER, maildir, True, "X-Mailcontinuity-Id", outage.key_scheme)
    assert recorded(log, outage.id) == (f"{BASE}:2,S", "\\Seen")

    # STORE +FLAGS ($Important): Dovecot renames the file first, then writes the letter's
    # meaning into dovecot-keywords; the recorder's event comes in between.
    renamed = message.rename(maildir / "cur" / f"{BASE}:2,Sa")
    assert not keywords_known(renamed.name, {})
    record_file(log, outage.id, USER, maildir, renamed, "X-Mailcontinuity-Id", outage.key_scheme)
    assert recorded(log, outage.id) == (f"{BASE}:2,S", "\\Seen")  # not "\\Seen" under the new name

    (maildir / "dovecot-keywords").write_text("0 $Important\n")
    assert keywords_known(renamed.name, {"a": "$Important"})
    # Before a merge:
    rescan_user(log, outage.id, USER, maildir, False, "X-Mailcontinuity-Id", outage.key_scheme)
    assert recorded(log, outage.id) == (f"{BASE}:2,Sa", "$Important \\Seen")
    # Once written down, the event path records it at once.
    again = renamed.rename(maildir / "cur" / f"{BASE}:2,FSa")
    record_file(log, outage.id, USER, maildir, again, "X-Mailcontinuity-Id", outage.key_scheme)
    assert recorded(log, outage.id) == (f"{BASE}:2,FSa", "$Important \\Flagged \\Seen")
    log.store.close()
