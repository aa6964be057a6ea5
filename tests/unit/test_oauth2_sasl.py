"""The SASL responses that carry an OAuth2 token (mail/oauth2.py): what the health probe and
sieve-sync send, byte for byte as the mechanisms' specifications and imapclient have them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailcontinuity.mail.oauth2 import TokenError, sasl_response

NAMES = st.text(st.characters(blacklist_characters="\x00\x01\r\n", blacklist_categories=("Cs",)),
                min_size=1, max_size=40)
TOKENS = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/=",
                 min_size=1, max_size=200)


def test_xoauth2_is_googles_and_microsofts_format() -> None:
    assert sasl_response("XOAUTH2", "alice@example.org", "tok") == \
        b"user=alice@example.org\x01auth=Bearer tok\x01\x01"


def test_oauthbearer_escapes_the_authorization_identity() -> None:
    """RFC 7628 3.1: the GS2 header's a= escapes "," and "=" as =2C and =3D."""
    assert sasl_response("OAUTHBEARER", "a,b=c@example.org", "tok") == \
        b"n,a=a=2Cb=3Dc@example.org,\x01auth=Bearer tok\x01\x01"


@given(NAMES, TOKENS)
def test_the_user_and_token_come_back_out_of_an_xoauth2_response(user: str, token: str) -> None:
    fields = sasl_response("XOAUTH2", user, token).decode().split("\x01")
    assert fields == [f"user={user}", f"auth=Bearer {token}", "", ""]


def test_control_characters_and_other_mechanisms_are_refused() -> None:
    with pytest.raises(TokenError, match="control character"):
        sasl_response("XOAUTH2", "alice\x01@example.org", "tok")
    with pytest.raises(ValueError, match="not a bearer-token mechanism"):
        sasl_response("PLAIN", "alice@example.org", "tok")
