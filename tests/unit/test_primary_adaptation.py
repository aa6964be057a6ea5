"""How failback adapts to what the primary says: throttling answered with the wait it suggests,
read receipts not asked twice, APPENDLIMIT read from the capabilities."""

from __future__ import annotations

from mailcontinuity.mail.imap import backoff_hint
from mailcontinuity.outage.merge import MDN_SENT, read_receipt_flags


def test_throttling_is_told_apart_from_a_refusal() -> None:
    exchange = ("APPEND failed: NO Request is throttled. Suggested Backoff Time: 2500"
                " milliseconds")
    assert backoff_hint(exchange, 0) == 2.5
    assert backoff_hint("NO [THROTTLED] Account exceeded command or bandwidth limits", 0) == 1
    assert backoff_hint("NO [THROTTLED] Account exceeded command or bandwidth limits", 3) == 8
    assert backoff_hint("NO [UNAVAILABLE] try again later", 10) == 60
    assert backoff_hint("NO [OVERQUOTA] Quota exceeded (mailbox for user is full)", 0) is None
    assert backoff_hint("NO Permission denied", 0) is None
    assert backoff_hint("NO Suggested Backoff Time: 999999 milliseconds", 0) == 60


def test_what_is_merged_as_read_gets_mdnsent_once() -> None:
    assert read_receipt_flags(("\\Seen",)) == ("\\Seen", MDN_SENT)
    assert read_receipt_flags(("\\Seen", MDN_SENT)) == ("\\Seen", MDN_SENT)
    assert read_receipt_flags(("\\Flagged",)) == ("\\Flagged",)
    assert read_receipt_flags(()) == ()
