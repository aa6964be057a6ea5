"""sieve-sync's ManageSieve login with an OAuth2 bearer token, against a scripted peer on a
loopback socket (no mail server): a refused token answered with a challenge must not stall,
and the refused token is dropped from the cache."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mailcontinuity.config import Endpoint
from mailcontinuity.mail.managesieve import BearerTokens, SieveError, session
from mailcontinuity.mail.oauth2 import AccessTokens, TokenEndpoint
from mailcontinuity.mail.tls import TLSPolicy

GREETING = b'"IMPLEMENTATION" "scripted"\r\n%b"VERSION" "1.0"\r\nOK "ready"\r\n'


class CountingTokens(AccessTokens):
    """A token endpoint that answers at once with a new token each time."""

    def _fetch(self, user: str) -> dict[str, object]:
        return {"access_token": f"token-{self.fetches + 1}", "expires_in": 3600}


@contextmanager
def scripted_server(sasl: bytes | None, heard: list[bytes]) -> Iterator[Endpoint]:
    """One connection: the greeting (with ``sasl`` as the SASL capability, or none), then to
    AUTHENTICATE a challenge (Dovecot's refusal JSON), then NO once the client answers it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, connection.makefile("rb") as reader:
            capability = b'"SASL" "%b"\r\n' % sasl if sasl is not None else b""
            connection.sendall(GREETING % capability)
            line = reader.readline()
            heard.append(line)
            if line.startswith(b"AUTHENTICATE"):
                connection.sendall(b'"eyJzdGF0dXMiOiI0MDEifQ=="\r\n')
                heard.append(reader.readline())
                connection.sendall(b'NO "Authentication failed."\r\n')
                heard.append(reader.readline())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Endpoint("127.0.0.1", listener.getsockname()[1])
    finally:
        thread.join(10)
        listener.close()


def _tokens() -> CountingTokens:
    return CountingTokens(TokenEndpoint("http://127.0.0.1:1/token", "app", lambda: "s", "", 5))


def test_a_refused_token_answered_by_a_challenge_fails_at_once_and_is_forgotten() -> None:
    tokens = _tokens()
    heard: list[bytes] = []
    started = time.monotonic()
    with scripted_server(b"XOAUTH2 OAUTHBEARER", heard) as endpoint, \
            pytest.raises(SieveError, match="Authentication failed"), \
            session(endpoint, "alice@example.org", BearerTokens(tokens, "app"),
                    TLSPolicy("primary", "none", None, None)):
        pass
    assert time.monotonic() - started < 3  # not sievelib's 5 s read_timeout
    assert heard[0].startswith(b'AUTHENTICATE "XOAUTH2" "'), heard
    assert heard[1] == b'""\r\n', heard  # the empty response that ends the exchange
    assert tokens.token("alice@example.org") == "token-2"  # the refused one was dropped


class SharedTokens(CountingTokens):
    """Client credentials: one token for every user."""

    def _slot(self, user: str) -> str:
        return ""


def test_forgetting_a_refused_shared_token_keeps_a_newer_one() -> None:
    """One mailbox refusing the app's shared token drops that token only if it is still the
    cached one: a fresh token another thread fetched meanwhile stays."""
    tokens = SharedTokens(TokenEndpoint("http://127.0.0.1:1/token", "app", lambda: "s", "", 5))
    old = tokens.token("alice@example.org")
    tokens.forget("alice@example.org", old)
    new = tokens.token("bob@example.org")
    assert new != old and tokens.fetches == 2
    tokens.forget("alice@example.org", old)  # a late refusal of the old token
    assert tokens.token("carol@example.org") == new and tokens.fetches == 2
    tokens.forget("carol@example.org", new)
    assert tokens.token("carol@example.org") != new and tokens.fetches == 3


def test_a_server_without_sasl_is_that_users_failure_not_a_crash() -> None:
    """No SASL capability: sievelib's get_sasl_mechanisms() raised KeyError, which escaped
    session() and ended the whole sieve-sync run; now it is a SieveError naming the cause."""
    heard: list[bytes] = []
    with scripted_server(None, heard) as endpoint, \
            pytest.raises(SieveError, match="no OAuth2 mechanism.*no SASL capability"), \
            session(endpoint, "alice@example.org", BearerTokens(_tokens(), "app"),
                    TLSPolicy("primary", "none", None, None)):
        pass
