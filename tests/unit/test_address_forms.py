"""Address forms resolved as Dovecot resolves them: the detail after ``recipient_delimiter``."""

from __future__ import annotations

from mailcontinuity.journal.sinks import lmtp_recipient
from mailcontinuity.journal.spool import Target
from mailcontinuity.mail.doveadm import read_user_lookups, without_detail


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


# What Dovecot 2.3.19 printed for ``doveadm user -f user`` with these five names (exit 67).
NAMES = ["alice@example.test", "ghost1@example.test", "Bob@example.test",
         "alice+tag@example.test", "carol@example.test"]
STDOUT = "\n\nbob@example.test\n\n\n"
STDERR = ("\nuserdb lookup: user ghost1@example.test doesn't exist\n"
          "\nuserdb lookup: user alice+tag@example.test doesn't exist\n")


def test_one_userdb_run_answers_for_every_recipient_in_order() -> None:
    assert read_user_lookups(NAMES, 67, STDOUT, STDERR) == {
        "alice@example.test": "alice@example.test", "ghost1@example.test": None,
        "Bob@example.test": "bob@example.test", "alice+tag@example.test": None,
        "carol@example.test": "carol@example.test"}
    assert read_user_lookups(["Bob@example.test"], 0, "bob@example.test\n", "") == {
        "Bob@example.test": "bob@example.test"}


def test_a_userdb_answer_that_does_not_match_the_names_is_not_guessed_at() -> None:
    assert read_user_lookups(NAMES, 67, STDOUT + "\n", STDERR) is None  # a line too many
    assert read_user_lookups(NAMES[:2], 67, "\n\n",
                             "userdb lookup: user GHOST1@example.test doesn't exist") is None
    assert read_user_lookups(NAMES, 0, STDOUT, STDERR) is None  # missing names but exit 0
    assert read_user_lookups(NAMES[:1], 67, "\n", "") is None  # exit 67 naming nobody
    assert read_user_lookups(NAMES[:1], 0, "", "") is None
