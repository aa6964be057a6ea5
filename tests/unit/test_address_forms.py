"""Address forms resolved as Dovecot resolves them: the detail after ``recipient_delimiter``."""

from __future__ import annotations

from mailcontinuity.journal.sinks import lmtp_recipient
from mailcontinuity.journal.spool import Target
from mailcontinuity.mail.doveadm import without_detail


def test_an_address_with_a_detail_is_tried_whole_then_without_it() -> None:
    assert without_detail("alice+tag@example.test", "+") == ["alice+tag@example.test",
                                                           "alice@example.test"]
    assert without_detail("alice-x+y@example.test", "+-") == ["alice-x+y@example.test",
                                                            "alice@example.test"]
    assert without_detail("alice@example.test", "+") == ["alice@example.test"]
    # A leading delimiter is not a detail (Dovecot needs a user before it); none configured.
    assert without_detail("+tag@example.test", "+") == ["+tag@example.test"]
    assert without_detail("alice+tag@example.test", "") == ["alice+tag@example.test"]


def test_journal_copies_over_lmtp_go_to_the_users_inbox_or_folder_never_the_detail() -> None:
    assert lmtp_recipient(Target("alice+tag@example.test", "INBOX")) == "alice@example.test"
    assert lmtp_recipient(Target("alice+tag@example.test", "Sent")) == "alice+Sent@example.test"
    assert lmtp_recipient(Target("Alice@example.test", "INBOX")) == "Alice@example.test"
