"""OAuth2 access tokens for logging in to the primary with XOAUTH2 (Microsoft 365 app-only).

Microsoft 365 and Google Workspace no longer take passwords over IMAP. Microsoft 365's app-only
access is the OAuth2 client-credentials grant (RFC 6749 section 4.4) at a standard token
endpoint (``https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token``, scope
``https://outlook.office365.com/.default``, the app granted ``IMAP.AccessAsApp``): one token
opens every mailbox the app may reach, named by XOAUTH2's ``user=``. We use Authlib's OAuth2
client (a kept, widely used, provider-neutral library) rather than a vendor SDK: the grant is
standard, and any other provider with a token endpoint works the same way.

A token is cached until shortly before it expires (Microsoft's live about an hour), so a
failback over thousands of users asks the endpoint once an hour, not once per user. The client
secret is read from its file at each fetch (a rotated secret counts without a restart).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from requests import RequestException

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


class ClientCredentialsTokens:
    """``token()``: a valid access token from the client-credentials grant, cached until
    ``EXPIRY_MARGIN_SECONDS`` before it expires; one fetch at a time for all threads."""

    def __init__(self, endpoint: TokenEndpoint,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = threading.Lock()
        self.fetches = 0

    def token(self) -> str:
        with self._lock:
            if self._token is None or self.clock() >= self._renew_at:
                self._token, lifetime = self._fetch()
                self._renew_at = self.clock() + max(lifetime - EXPIRY_MARGIN_SECONDS,
                                                    lifetime / 2)
            return self._token

    def forget(self) -> None:
        """Drop the cached token (the server refused it: revoked, or the app's rights changed)."""
        with self._lock:
            self._token = None

    def _fetch(self) -> tuple[str, float]:
        endpoint = self.endpoint
        session = OAuth2Session(endpoint.client_id, endpoint.secret(), scope=endpoint.scope or None,
                                token_endpoint_auth_method="client_secret_post")
        try:
            token = session.fetch_token(endpoint.url, grant_type="client_credentials",
                                        timeout=endpoint.timeout, verify=endpoint.verify)
        except OAuthError as exc:
            raise TokenError(f"OAuth2 token endpoint {endpoint.url} refused client"
                             f" {endpoint.client_id!r}: {exc.error}"
                             f"{': ' + exc.description if exc.description else ''}; check"
                             " sync.oauth2_client_id, the secret in sync.password_file and the"
                             " app's permission on the provider") from None
        except (RequestException, OSError, ValueError) as exc:
            raise TokenError(f"OAuth2 token endpoint {endpoint.url}: {exc}; check"
                             " sync.oauth2_token_url and that this host reaches it") from None
        finally:
            session.close()
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
