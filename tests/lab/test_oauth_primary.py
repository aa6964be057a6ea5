"""OAuth2 tokens for XOAUTH2 logins to the primary (issue 15), against a token service run in
this process (``running_token_service``, the same code as the lab's part ``oauth2``): tokens
are cached until they near expiry, one client-credentials token serves every user, a service
account gets one token per user, and failures name the keys to check.

The logins themselves (failback, verify, the drill, the health probe, sieve-sync, each by
XOAUTH2 against a primary that validates the tokens) are tested end to end in
tests/lab/test_primaries.py on the lab's ``exchange`` and ``gmail`` profiles."""

from __future__ import annotations

import pytest

from mailcontinuity.lab.oauth2 import LAB_OAUTH2_CLIENT_ID, running_token_service
from mailcontinuity.mail.oauth2 import (
    EXPIRY_MARGIN_SECONDS,
    ClientCredentialsTokens,
    JwtBearerTokens,
    TokenEndpoint,
    TokenError,
)

SECRET = "lab-client-secret-0123456789"


def test_tokens_are_cached_until_near_expiry_and_failures_name_the_keys() -> None:
    now = [1000.0]
    with running_token_service(SECRET, "example.test", lifetime=120) as (service, url):
        tokens = ClientCredentialsTokens(
            TokenEndpoint(f"{url}/token", LAB_OAUTH2_CLIENT_ID, lambda: SECRET, "s", 5),
            clock=lambda: now[0])
        first = tokens.token("alice@example.test")
        assert tokens.token("alice@example.test") == first and service.issued == 1
        # An app-only token opens every mailbox: one for all users.
        assert tokens.token("bob@example.test") == first and service.issued == 1
        now[0] += 120 - EXPIRY_MARGIN_SECONDS  # renewed a margin before it expires
        assert tokens.token("alice@example.test") != first and service.issued == 2
        second = tokens.token("alice@example.test")
        tokens.forget("bob@example.test", first)  # an older token: the cached one stays
        assert tokens.token("alice@example.test") == second and service.issued == 2
        tokens.forget("alice@example.test", second)  # refused: the next login asks again
        tokens.token("alice@example.test")
        assert service.issued == 3
        wrong = ClientCredentialsTokens(
            TokenEndpoint(f"{url}/token", LAB_OAUTH2_CLIENT_ID, lambda: "wrong", "s", 5))
        with pytest.raises(TokenError, match="invalid_client.*sync.oauth2_client_id"):
            wrong.token("alice@example.test")
    gone = ClientCredentialsTokens(TokenEndpoint(f"{url}/token", "app", lambda: "x", "s", 5))
    with pytest.raises(TokenError, match="sync.oauth2_token_url"):
        gone.token("alice@example.test")


def test_a_service_account_gets_a_token_per_user_google_style() -> None:
    with running_token_service(SECRET, "example.test") as (service, url):
        account = service.service_account
        assert account is not None
        tokens = JwtBearerTokens(TokenEndpoint(f"{url}/token", account.email,
                                               lambda: account.key_json,
                                               "https://mail.google.com/", 5))
        alice = tokens.token("alice@example.test")
        assert tokens.token("alice@example.test") == alice  # the second login reuses it
        assert tokens.token("bob@example.test") != alice
        assert service.subjects == {"alice@example.test": 1, "bob@example.test": 1}
        with pytest.raises(TokenError, match="invalid_grant"):  # a subject outside the domain
            tokens.token("mallory@elsewhere.test")
        not_a_key = JwtBearerTokens(TokenEndpoint(f"{url}/token", account.email,
                                                  lambda: '{"client_email": "x"}', "s", 5))
        with pytest.raises(TokenError, match="sync.password_file: not a service account"):
            not_a_key.token("carol@example.test")
