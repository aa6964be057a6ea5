"""Every address form of a user is that user's one mailbox: ``Alice@`` and ``alice+tag@`` are
journaled into alice's standby INBOX (the Maildir the standby's Dovecot reads), and mail sent
to those forms during an outage is merged into alice's primary mailbox once."""

from __future__ import annotations

import uuid

from mailcontinuity.lab import Lab
from mailcontinuity.mail.smtp import make_message, send_message
from tests.lab.journal_helpers import fetch_by_header, journal_id
from tests.lab.outage_helpers import OUTSIDER, forced_outage, on_primary_once, wait_all
from tests.lab.test_failback import invoke


def forms(address: str) -> list[str]:
    local, _, domain = address.partition("@")
    return [f"{local.capitalize()}@{domain}", f"{local}+tag@{domain}",
            f"{local.upper()}+News@{domain.upper()}"]


def test_alice_and_alice_plus_tag_are_journaled_into_alices_mailbox(lab: Lab) -> None:
    alice = lab.users[0]
    for address in forms(alice.address):
        message = make_message(OUTSIDER, [address], f"address form {uuid.uuid4().hex}")
        send_message(lab.gateway.smtp, message, OUTSIDER, [address])
        [primary] = fetch_by_header(lab, "primary", alice, "Message-ID", message["Message-ID"])
        standby = fetch_by_header(lab, "standby", alice, "Message-ID", message["Message-ID"])
        assert len(standby) == 1, f"{address}: {len(standby)} journal copies in alice's INBOX"
        assert journal_id(standby[0]) == journal_id(primary)
    # No second Maildir that Dovecot never reads.
    users_dir = lab.standby.maildir(alice.address).parent.parent
    assert sorted(p.name for p in users_dir.iterdir() if p.name.lower().startswith(
        alice.address.partition("@")[0])) == [alice.address.partition("@")[0]]


def test_address_forms_during_an_outage_are_merged_into_the_users_mailbox_once(
        lab: Lab) -> None:
    alice = lab.users[0]
    sent = []
    with forced_outage(lab):
        for address in forms(alice.address):
            message = make_message(OUTSIDER, [address], f"outage form {uuid.uuid4().hex}")
            send_message(lab.gateway.smtp, message, OUTSIDER, [address])
            sent.append(message["Message-ID"])
        for message_id in sent:
            wait_all(lab, "standby", [alice], message_id)
        code, report = invoke(lab, "failback", "--yes", "--json")
        assert code == 0 and report["refused"] == [], report
    for message_id in sent:
        assert on_primary_once(lab, alice, message_id) == ["INBOX"], message_id
    code, audit = invoke(lab, "verify", "--json")
    assert code == 0 and audit["ok"], audit
    assert all(user == user.lower() for user in audit["users"]), audit["users"]
