"""The policy protocol's framing: what Postfix sends parses, anything else is a clear error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailcontinuity.monitor.protocol import ProtocolError, format_reply, parse_request

# A request as Postfix 3.7 sends it at RCPT time (29 attributes, empty ones included).
POSTFIX_RCPT = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"helo_name=mx.remote.test\nqueue_id=\nsender=a@remote.test\nrecipient=alice@example.test\n"
    b"recipient_count=0\nclient_address=192.0.2.7\nclient_name=unknown\n"
    b"reverse_client_name=unknown\nclient_port=40000\nserver_address=127.0.0.1\n"
    b"server_port=25\ninstance=1a2b.5f3c.1\nsize=0\netrn_domain=\nstress=\nsasl_method=\n"
    b"sasl_username=\nsasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n"
    b"ccert_pubkey_fingerprint=\nencryption_protocol=\nencryption_cipher=\n"
    b"encryption_keysize=0\npolicy_context=\n\n"
)


def test_postfix_request_parses_with_every_attribute() -> None:
    request = parse_request(POSTFIX_RCPT)
    assert len(request) == 29
    assert request["request"] == "smtpd_access_policy"
    assert request["recipient"] == "alice@example.test"
    assert request["queue_id"] == ""


def test_value_may_contain_equals_signs_and_undecodable_bytes() -> None:
    request = parse_request(b"ccert_subject=CN=x=y\nhelo_name=\xff\xfe\n\n")
    assert request["ccert_subject"] == "CN=x=y"
    assert request["helo_name"].encode("utf-8", errors="surrogateescape") == b"\xff\xfe"


def test_crlf_and_stray_empty_lines_are_tolerated() -> None:
    assert parse_request(b"\nrequest=smtpd_access_policy\r\nrecipient=a@b.test\r\n\n") == {
        "request": "smtpd_access_policy", "recipient": "a@b.test"}


@pytest.mark.parametrize("block", [b"no equals sign\n\n", b"=value\n\n", b"na me=x\n\n",
                                   b"n\xc3\xa4me=x\n\n"])
def test_lines_that_are_not_name_value_are_refused(block: bytes) -> None:
    with pytest.raises(ProtocolError, match="is not name=value"):
        parse_request(block)


def test_reply_is_one_action_line_and_an_empty_line() -> None:
    assert format_reply("DUNNO") == b"action=DUNNO\n\n"
    assert format_reply("550 5.1.1 no such user") == b"action=550 5.1.1 no such user\n\n"
    for bad in ("", "DUNNO\nOK", "DUNNO\r"):
        with pytest.raises(ValueError):
            format_reply(bad)


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=30)
values = st.binary(max_size=200).filter(lambda b: b"\n" not in b and not b.endswith(b"\r"))


@given(st.dictionaries(names.filter(lambda n: n.strip("_")), values, max_size=40))
def test_any_attribute_block_round_trips(attributes: dict[str, bytes]) -> None:
    block = b"".join(name.encode() + b"=" + value + b"\n" for name, value in attributes.items())
    parsed = parse_request(block + b"\n")
    assert {name: value.encode("utf-8", errors="surrogateescape")
            for name, value in parsed.items()} == attributes


@given(st.binary(max_size=500))
def test_arbitrary_bytes_parse_or_raise_protocol_error(block: bytes) -> None:
    try:
        parsed = parse_request(block)
    except ProtocolError:
        return
    assert all(name and "=" not in name and "\n" not in value for name, value in parsed.items())
