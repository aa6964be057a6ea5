"""Issue 20: a logged-in user sends only as their own addresses, on both submissions.

The gateway's submission checks the envelope sender itself; the standby's (Dovecot) relays
with XCLIENT to the gateway's standby relay listener, which checks it the same way; the
journal milter checks the From: header for both.
"""

from __future__ import annotations

import uuid

import pytest

from mailcontinuity.config import Endpoint
from mailcontinuity.lab import Lab
from mailcontinuity.lab.gateway import LAB_SENDER_ALIASES
from mailcontinuity.lab.mailbox import wait_for_message
from tests.lab.test_standby_hardening import credentials, sending, swaks

SUBMISSIONS = ["gateway", "standby"]


def submission(lab: Lab, which: str) -> Endpoint:
    if which == "gateway":
        assert lab.config.gateway.submission is not None
        return lab.config.gateway.submission
    return lab.endpoint("standby", "submission")


def final_reply(replies: list[str]) -> str:
    """The reply to the end of DATA (or the refusal that ended the transaction)."""
    return next(reply for reply in reversed(replies) if not reply.startswith("221"))


@pytest.mark.parametrize("which", SUBMISSIONS)
def test_a_spoofed_envelope_sender_is_refused(lab: Lab, which: str) -> None:
    alice, bob = lab.users[0], lab.users[1]
    replies = swaks(lab, submission(lab, which), *sending(bob.address, bob.address), "--tls",
                    *credentials(alice))
    refused = [reply for reply in replies if reply.startswith("553 5.7.1")]
    assert refused and f"not owned by user {alice.login}" in refused[0], replies
    assert not any(reply.startswith("250 2.0.0") for reply in replies), replies


@pytest.mark.parametrize("which", SUBMISSIONS)
def test_a_spoofed_from_header_is_refused(lab: Lab, which: str) -> None:
    alice, bob = lab.users[0], lab.users[1]
    replies = swaks(lab, submission(lab, which), *sending(alice.address, bob.address), "--tls",
                    *credentials(alice), "--header", "From: CEO <ceo@example.test>")
    last = final_reply(replies)
    assert last.startswith("550 5.7.1") and "ceo@example.test not owned by" in last, replies


@pytest.mark.parametrize("which", SUBMISSIONS)
def test_an_owned_alias_and_the_own_address_are_accepted(lab: Lab, which: str) -> None:
    alice, bob = lab.users[0], lab.users[1]
    alias = next(a for a, owner in LAB_SENDER_ALIASES.items() if owner == alice.address)
    for sender in (alias, alice.address.upper()):
        message_id = f"<{uuid.uuid4().hex}@lab.test>"
        replies = swaks(lab, submission(lab, which), *sending(sender, bob.address), "--tls",
                        *credentials(alice), "--header", f"From: Someone <{sender}>",
                        "--header", f"Message-Id: {message_id}")
        assert final_reply(replies).startswith("250 2.0.0"), replies
        assert wait_for_message(lab.endpoint("primary", "imap"), bob.login, bob.password,
                                message_id) is not None


def test_bob_may_not_send_as_alices_alias(lab: Lab) -> None:
    bob = lab.users[1]
    alias = next(iter(LAB_SENDER_ALIASES))
    replies = swaks(lab, submission(lab, "standby"), *sending(alias, bob.address), "--tls",
                    *credentials(bob))
    assert any(reply.startswith("553 5.7.1") for reply in replies), replies
