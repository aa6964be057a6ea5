"""OAuth2 access tokens for logging in to the primary with XOAUTH2 (Microsoft 365, Google).

Microsoft 365 and Google Workspace no longer take passwords over IMAP. Microsoft 365's app-only
access is the OAuth2 client-credentials grant (RFC 6749 section 4.4) at a standard token
endpoint (``https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token``, scope
``https://outlook.office365.com/.default``, the app granted ``IMAP.AccessAsApp``): one token
opens every mailbox the app may reach, named by XOAUTH2's ``user=``. We use Authlib's OAuth2
client (a kept, widely used, provider-neutral library) rather than a vendor SDK: the grant is
standard, and any other provider with a token endpoint works the same way. Google Workspace's
service accounts with domain-wide delegation use the JWT-bearer grant (RFC 7523): a token per
user, asked with an assertion signed by the account's key; Authlib makes that one too.

A token is cached until shortly before it expires (Microsoft's live about an hour), so a
failback over thousands of users asks the endpoint once an hour, not once per user. The client
secret is read from its file at each login (a rotated secret counts without a restart).

Every login to the primary takes its token from one cache per process (``oauth2_tokens``):
failback and verify (IMAP, through imapclient's XOAUTH2), the health monitor's login probe and
sieve-sync (ManageSieve), whose SASL responses are built here (``sasl_response``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import AssertionSession, OAuth2Session
from authlib.oauth2.base import OAuth2Error
from joserfc.jwk import RSAKey
from requests import RequestException

from mailcontinuity.config import Config

log = logging.getLogger(__name__)

# A token is renewed this long before it expires: a login started with it must not outlive it.
EXPIRY_MARGIN_SECONDS = 60.0
# When the endpoint gives no lifetime (expires_in is optional in RFC 6749), assume this much.
DEFAULT_LIFETIME_SECONDS = 300.0


class TokenError(Exception):
    """The token endpoint refused or could not be reached; the text names it and what to check."""


@dataclass(frozen=True)
class TokenEndpoint:
    """Where and as whom tokens are asked for; ``secret`` is called at each fetch."""

    url: str
    client_id: str
    secret: Callable[[], str]
    scope: str
    timeout: float
    verify: bool | str = True
    """``requests``' TLS check: True (the CA bundle), or a CA file for a private CA."""


class AccessTokens:
    """``token(user)``: a valid access token for logging in as ``user``, cached until
    ``EXPIRY_MARGIN_SECONDS`` before it expires; one fetch at a time for all threads."""

    def __init__(self, endpoint: TokenEndpoint,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    def token(self, user: str) -> str:
        slot = self._slot(user)
        with self._lock:
            cached = self._tokens.get(slot)
            if cached is not None and self.clock() < cached[1]:
                return cached[0]
            access, lifetime = self._checked(self._fetch(user))
            renew_at = self.clock() + max(lifetime - EXPIRY_MARGIN_SECONDS, lifetime / 2)
            self._tokens[slot] = (access, renew_at)
            return access

    def forget(self, user: str, token: str) -> None:
        """Drop ``token``, which the server refused for ``user`` (revoked, or the app's rights
        changed), if it is still the cached one. With client credentials every user shares one
        token: a mailbox the app may not open (an access policy) must not cost everyone a
        fetch, and a fresh token another thread fetched meanwhile is kept."""
        with self._lock:
            slot = self._slot(user)
            cached = self._tokens.get(slot)
            if cached is not None and cached[0] == token:
                del self._tokens[slot]

    def _slot(self, user: str) -> str:
        return user

    def _fetch(self, user: str) -> dict[str, object]:
        raise NotImplementedError

    def _checked(self, token: dict[str, object]) -> tuple[str, float]:
        endpoint = self.endpoint
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise TokenError(f"OAuth2 token endpoint {endpoint.url} answered without an"
                             " access_token; check sync.oauth2_token_url")
        self.fetches += 1
        lifetime = token.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float | str) \
            and str(lifetime).replace(".", "", 1).isdigit() else DEFAULT_LIFETIME_SECONDS
        log.info("event=oauth2_token_fetched endpoint=%s client=%s lifetime=%s", endpoint.url,
                 endpoint.client_id, seconds)
        return access, seconds

    def _refused(self, exc: OAuthError | OAuth2Error) -> TokenError:
        endpoint = self.endpoint
        return TokenError(f"OAuth2 token endpoint {endpoint.url} refused client"
                          f" {endpoint.client_id!r}: {exc.error}"
                          f"{': ' + exc.description if exc.description else ''}; check"
                          " sync.oauth2_client_id, the secret in sync.password_file and the"
                          " app's permission on the provider")

    def _unreachable(self, exc: Exception) -> TokenError:
        return TokenError(f"OAuth2 token endpoint {self.endpoint.url}: {exc}; check"
                          " sync.oauth2_token_url and that this host reaches it")


class ClientCredentialsTokens(AccessTokens):
    """The client-credentials grant (Microsoft 365 app-only): one token for every mailbox."""

    def _slot(self, user: str) -> str:
        return ""

    def _fetch(self, user: str) -> dict[str, object]:
        endpoint = self.endpoint
        session = OAuth2Session(endpoint.client_id, endpoint.secret(), scope=endpoint.scope or None,
                                token_endpoint_auth_method="client_secret_post")
        try:
            return dict(session.fetch_token(endpoint.url, grant_type="client_credentials",
                                            timeout=endpoint.timeout, verify=endpoint.verify))
        except OAuthError as exc:
            raise self._refused(exc) from None
        except (RequestException, OSError, ValueError) as exc:
            raise self._unreachable(exc) from None
        finally:
            session.close()


class JwtBearerTokens(AccessTokens):
    """The JWT-bearer grant (RFC 7523) of a service account with domain-wide delegation (Google
    Workspace): a token per user, asked with an assertion signed by the account's key (the JSON
    key file Google gives, in ``sync.password_file``) whose subject is the user."""

    def _fetch(self, user: str) -> dict[str, object]:
        endpoint = self.endpoint
        private_key = self._private_key()
        session = AssertionSession(endpoint.url, issuer=endpoint.client_id, subject=user,
                                   audience=endpoint.url, claims={"scope": endpoint.scope},
                                   key=private_key, header={"alg": "RS256"},
                                   default_timeout=endpoint.timeout)
        session.verify = endpoint.verify
        try:
            return dict(session.refresh_token())
        except (OAuthError, OAuth2Error) as exc:
            raise self._refused(exc) from None
        except (RequestException, OSError, ValueError) as exc:
            raise self._unreachable(exc) from None
        finally:
            session.close()

    def _private_key(self) -> RSAKey:
        try:
            return RSAKey.import_key(json.loads(self.endpoint.secret())["private_key"])
        except (ValueError, KeyError, TypeError):
            raise TokenError("sync.password_file: not a service account's JSON key (no RSA"
                             " private_key); put the key file the provider gave there, mode"
                             " 0600") from None


_TOKENS: dict[tuple[str, ...], AccessTokens] = {}
_TOKENS_LOCK = threading.Lock()


def oauth2_tokens(config: Config, secret: str) -> AccessTokens:
    """The process's token cache for ``[sync]``'s OAuth2 client (client credentials: one token
    for every user and thread; JWT bearer: one per user), each kept until it nears expiry;
    ``secret`` is the client secret (or the service account's key) as just read from
    ``sync.password_file``. A changed secret gets a cache of its own, so a rotated or mistyped
    secret is tried at the next login, not when the old token expires. Failback, verify, the
    login probe and sieve-sync share it."""
    sync = config.sync
    if sync.oauth2_token_url is None or sync.oauth2_client_id is None:
        raise TokenError('login_method = "xoauth2" needs sync.oauth2_token_url and'
                         " sync.oauth2_client_id")
    key = (sync.oauth2_grant, sync.oauth2_token_url, sync.oauth2_client_id, sync.oauth2_scope,
           hashlib.sha256(secret.encode()).hexdigest())
    kind = ClientCredentialsTokens if sync.oauth2_grant == "client_credentials" \
        else JwtBearerTokens
    with _TOKENS_LOCK:
        tokens = _TOKENS.get(key)
        if tokens is None:
            tokens = _TOKENS[key] = kind(TokenEndpoint(
                sync.oauth2_token_url, sync.oauth2_client_id, lambda: secret,
                sync.oauth2_scope, sync.timeout_seconds))
    return tokens


# SASL mechanisms that carry an OAuth2 bearer token, in the order we prefer them: XOAUTH2 is
# what Microsoft 365 and Google take (and what ``sync.login_method`` names); OAUTHBEARER
# (RFC 7628) is the standard one, for servers that offer only it (Dovecot offers both).
BEARER_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")


def sasl_response(mechanism: str, user: str, token: str) -> bytes:
    """The client's SASL response (before base64) that logs in as ``user`` with ``token``:
    XOAUTH2's ``user=...^Aauth=Bearer ...^A^A`` or OAUTHBEARER's GS2 header with the user as
    authorization identity (RFC 7628 section 3.1, ``,`` and ``=`` escaped)."""
    if any(char in user + token for char in "\x00\x01\r\n"):
        raise TokenError(f"the user {user!r} or its token holds a control character")
    if mechanism == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    if mechanism == "OAUTHBEARER":
        authzid = user.replace("=", "=3D").replace(",", "=2C")
        return f"n,a={authzid},\x01auth=Bearer {token}\x01\x01".encode()
    raise ValueError(f"not a bearer-token mechanism: {mechanism!r}; one of"
                     f" {', '.join(BEARER_MECHANISMS)}")
