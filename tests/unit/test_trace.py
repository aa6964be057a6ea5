"""The journal copy's trace fields, built as Postfix and Dovecot write them."""

from __future__ import annotations

import time

from mailcontinuity.journal.sinks import copy_prefix, maildir_name
from mailcontinuity.journal.spool import Envelope, Target
from mailcontinuity.journal.trace import TraceFacts, protocol, received_field


def test_received_field_is_postfixs_for_one_recipient() -> None:
    when = time.mktime((2026, 11, 28, 20, 13, 56, 0, 0, -1))
    field = received_field(TraceFacts(
        helo="client.remote.test", client_name="localhost", client_addr="127.0.0.1",
        server="gw.example.test", queue_id="828B2212182", recipients=("alice@example.test",),
        received_at=when)).decode()
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S %z (%Z)", time.localtime(when))
    assert field == ("Received: from client.remote.test (localhost [127.0.0.1])\r\n"
                     "\tby gw.example.test (Postfix) with ESMTP id 828B2212182\r\n"
                     f"\tfor <alice@example.test>; {stamp}\r\n")


def test_received_field_without_for_and_from_the_underscore_macro() -> None:
    field = received_field(TraceFacts(
        client_macro="mx.remote.test [192.0.2.7] (may be forged)", server="gw",
        queue_id="Q1", tls=True, recipients=("a@x.test", "b@x.test"))).decode()
    assert field.startswith("Received: from mx.remote.test (mx.remote.test [192.0.2.7])\r\n"
                            "\tby gw (Postfix) with ESMTPS id Q1;\r\n\t")
    assert "for <" not in field


def test_protocol_names_follow_rfc_3848_and_6531() -> None:
    assert protocol(TraceFacts()) == "ESMTP"
    assert protocol(TraceFacts(tls=True, authenticated=True)) == "ESMTPSA"
    assert protocol(TraceFacts(smtputf8=True, tls=True)) == "UTF8SMTPS"


def test_delivery_fields_as_dovecot_writes_them_and_sizes_in_the_name() -> None:
    alice, bob = Target("alice@x.test", "INBOX"), Target("bob@x.test", "INBOX")
    sent = Target("carol@x.test", "Sent")
    one = Envelope("id1", 1000.5, "s@r.test", "Q", [alice, sent], size=100, virtual_size=104)
    two = Envelope("id2", 1000.5, "", "Q", [alice, bob], size=100, virtual_size=104)
    assert copy_prefix(one, alice) == b"Return-Path: <s@r.test>\r\nDelivered-To: alice@x.test\r\n"
    assert copy_prefix(one, sent) == b""
    assert copy_prefix(two, bob) == b"Return-Path: <>\r\n"
    prefix = copy_prefix(one, alice)
    assert f",S={100 + len(prefix)},W={104 + len(prefix)}" in maildir_name(one, prefix)
