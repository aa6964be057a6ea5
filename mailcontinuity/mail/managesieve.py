"""One user's ManageSieve session, logged in through an admin (SASL PLAIN with an authzid) or
with the user's OAuth2 bearer token (SASL XOAUTH2, else OAUTHBEARER: RFC 5804 AUTHENTICATE).

A thin layer over sievelib that turns its ``False`` returns and ``errmsg`` bytes into
``SieveError`` with the server's words, and that hides sievelib's quirks the replication must
not trip over (postfix-dovecot-facts.md section 6): ``listscripts()`` leaves the active script
out of its list, and ``getscript()`` returns LF line ends without the final newline.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sievelib.managesieve import Client, Error, Literal, Response

from mailcontinuity.config import Endpoint
from mailcontinuity.mail.oauth2 import BEARER_MECHANISMS, AccessTokens, TokenError, sasl_response
from mailcontinuity.mail.tls import TLSError, TLSPolicy


class VerifiedClient(Client):
    """sievelib's client with our TLS context.

    sievelib wraps its socket with ``ssl.create_default_context()``: the system CAs only, so a
    private CA could not be configured. That one step is replaced; the protocol stays sievelib's.
    """

    sock: Any  # sievelib's socket, plain until STARTTLS

    def __init__(self, endpoint: Endpoint, tls: TLSPolicy) -> None:
        super().__init__(endpoint.host, endpoint.port)
        self.endpoint = endpoint
        self.tls = tls
        self.tls_error: TLSError | None = None
        self.sent_token: str | None = None
        """The bearer token sent to the server: a failure after it may be the token's."""


    def _Client__enable_ssl(self, keyfile: str | None = None,  # noqa: N802 - sievelib's name
                            certfile: str | None = None) -> None:
        assert self.tls.context is not None
        try:
            self.sock = self.tls.context.wrap_socket(self.sock, server_hostname=self.endpoint.host)
        except ssl.SSLError as exc:
            self.tls_error = self.tls.explain("ManageSieve", self.endpoint, exc)
            raise Error(str(self.tls_error)) from None

    def _Client__authenticate(self, login: str, password: str,  # noqa: N802 - sievelib's name
                              authz_id: str = "", authmech: str | None = None) -> bool:
        """sievelib's AUTHENTICATE, except that asking for a bearer mechanism takes the first
        of ``BEARER_MECHANISMS`` the server offers (XOAUTH2, else OAUTHBEARER)."""
        if authmech in BEARER_MECHANISMS:
            try:
                offered = self.get_sasl_mechanisms()
            except KeyError:  # no SASL capability at all (sievelib indexes it unchecked)
                offered = []
            authmech = next((name for name in BEARER_MECHANISMS if name in offered), None)
            if authmech is None:
                listed = " ".join(offered) or "none: no SASL capability"
                self.errmsg = f"the server offers no OAuth2 mechanism (SASL: {listed})".encode()
                return False
        return bool(super()._Client__authenticate(login, password, authz_id, authmech))

    def _bearer(self, mechanism: str, login: bytes, token: bytes) -> bool:
        """AUTHENTICATE with the token as initial response. A server that refuses the token
        may first send its reason as a challenge (Dovecot's oauth2 mechanism: RFC 7628's
        error JSON) and wait for the client's empty response (section 3.2.3); sievelib's
        reader would wait its read_timeout for a final answer instead, so one line is read
        here and a challenge is answered with ``""``, then the NO is read."""
        response = base64.b64encode(sasl_response(mechanism, login.decode(), token.decode()))
        args = self._Client__prepare_args([mechanism.encode(), response])
        self.sent_token = token.decode()
        self.sock.sendall(b"AUTHENTICATE " + b" ".join(args) + b"\r\n")
        while True:
            try:
                if self._Client__read_line():
                    break  # a quoted challenge
            except Response as answer:
                return bool(answer.code == b"OK")
            except Literal as literal:  # a challenge as a literal: skip it and its line end
                self._Client__read_block(literal.value)
                self._Client__read_line()
                break
        self.sock.sendall(b'""\r\n')
        code, _, _ = self._Client__read_response()
        return bool(code == b"OK")

    # sievelib's own XOAUTH2 puts a comma after the user (``user=alice,^A``), which servers
    # read as part of the name; both bearer mechanisms are built by mail.oauth2 instead.
    def _xoauth2_authentication(self, login: bytes, password: bytes,
                                authz_id: bytes = b"") -> bool:
        return self._bearer("XOAUTH2", login, password)

    def _oauthbearer_authentication(self, login: bytes, password: bytes,
                                    authz_id: bytes = b"") -> bool:
        return self._bearer("OAUTHBEARER", login, password)


class SieveError(Exception):
    """A ManageSieve server refused or could not be reached; the message says which and why."""


def normalise(text: str) -> str:
    """Script text as compared and stored: LF line ends, exactly one final newline.

    Two copies that differ only in CRLF or a trailing newline are the same script, and
    sievelib's ``getscript`` already strips both on the way in.
    """
    return "\n".join(text.splitlines()).rstrip("\n") + "\n"


@dataclass(frozen=True)
class Credentials:
    """An admin who may act as any user (a Dovecot master user, a Cyrus admin)."""

    login: str
    password: str


@dataclass(frozen=True)
class BearerTokens:
    """Log in as the user with an OAuth2 access token from ``tokens`` (``sync.login_method =
    "xoauth2"``): the app's token for that user, as failback's IMAP logins use."""

    tokens: AccessTokens
    client_id: str


@dataclass(frozen=True)
class Scripts:
    """A user's scripts by name (normalised text) and which one is active, if any."""

    active: str | None
    texts: dict[str, str]


class SieveSession:
    """Logged in as ``user`` on one server; every method raises SieveError on refusal."""

    def __init__(self, client: Client, where: str) -> None:
        self._client = client
        self.where = where

    def _refused(self, what: str) -> SieveError:
        said = " ".join(self._client.errmsg.decode("utf-8", errors="replace").split())
        return SieveError(f"{self.where}: {what} refused: {said or 'no reason given'}")

    def scripts(self) -> Scripts:
        try:
            listing = self._client.listscripts()
            if listing is None:
                raise self._refused("LISTSCRIPTS")
            active, others = listing
            texts = {}
            for name in [*others, *([active] if active else [])]:
                text = self._client.getscript(name)
                if text is None:
                    raise self._refused(f"GETSCRIPT {name!r}")
                texts[name] = normalise(text)
        except Error as exc:
            raise SieveError(f"{self.where}: {exc}") from None
        return Scripts(active, texts)

    def check(self, text: str) -> None:
        """Whether this server would compile ``text`` (RFC 5804 CHECKSCRIPT)."""
        self._call("CHECKSCRIPT", lambda: self._client.checkscript(text))

    def put(self, name: str, text: str) -> None:
        self._call(f"PUTSCRIPT {name!r}", lambda: self._client.putscript(name, text))

    def activate(self, name: str | None) -> None:
        """Make ``name`` the active script, or deactivate all with None."""
        self._call(f"SETACTIVE {name or '(none)'!r}", lambda: self._client.setactive(name or ""))

    def delete(self, name: str) -> None:
        self._call(f"DELETESCRIPT {name!r}", lambda: self._client.deletescript(name))

    def _call(self, what: str, command: Callable[[], bool]) -> None:
        try:
            done = command()
        except Error as exc:
            raise SieveError(f"{self.where}: {what}: {exc}") from None
        if not done:
            raise self._refused(what)


@contextmanager
def session(endpoint: Endpoint, user: str, admin: Credentials | BearerTokens,
            tls: TLSPolicy) -> Iterator[SieveSession]:
    """A ManageSieve session on ``tls.side`` (primary/standby) acting as ``user``; ManageSieve
    has no implicit-TLS port, so TLS is always STARTTLS, and required unless ``tls = "none"``.

    With ``BearerTokens`` the login is the user's own token by XOAUTH2, or OAUTHBEARER when the
    server offers only that; a token the server refuses is dropped from the cache, so the next
    run asks the endpoint again."""
    where = f"{tls.side} ManageSieve {endpoint} as {user}"
    client = VerifiedClient(endpoint, tls)
    via = f"an OAuth2 token for client {admin.client_id}" if isinstance(admin, BearerTokens) \
        else admin.login
    try:
        with warnings.catch_warnings():
            # sievelib warns on every plaintext login; tls = "none" is the operator's choice.
            warnings.simplefilter("ignore", UserWarning)
            if isinstance(admin, BearerTokens):
                logged_in = _bearer_login(client, user, admin, tls)
            else:
                logged_in = client.connect(admin.login, admin.password, authz_id=user,
                                           starttls=tls.enabled, authmech="PLAIN")
    except TokenError as exc:
        if client.sock is not None:
            client.sock.close()
        raise SieveError(f"{where}: {exc}") from None
    except (Error, OSError) as exc:
        if client.sock is not None:
            client.sock.close()
        if isinstance(admin, BearerTokens) and client.sent_token is not None:
            # Cut off after the token went (a timeout, a server that hung up on it): it may
            # be the token; the next login asks for a fresh one rather than stall every user.
            admin.tokens.forget(user, client.sent_token)
        if client.tls_error is not None:
            raise SieveError(f"{where}: {client.tls_error}") from None
        if "STARTTLS not supported" in str(exc):
            raise SieveError(f"{where}: {tls.no_starttls('ManageSieve', endpoint)}") from None
        raise SieveError(f"{where}: {exc}; is it up, and is the managesieve key right?") from None
    if not logged_in:
        said = client.errmsg.decode("utf-8", errors="replace").strip()
        client.sock.close()
        if isinstance(admin, BearerTokens):
            if client.sent_token is not None:
                admin.tokens.forget(user, client.sent_token)
            raise SieveError(f"{where}: login with {via} failed ({said or 'refused'}); check"
                             " the app's permission on the provider, and that the server"
                             " validates the provider's tokens for ManageSieve")
        raise SieveError(f"{where}: login via {via} failed ({said or 'refused'}); check"
                         " the admin login and password file, and that the user exists there")
    try:
        yield SieveSession(client, where)
    finally:
        with contextlib.suppress(Error, OSError):  # the server may have closed it: nothing lost
            client.logout()
        if client.sock is not None:
            client.sock.close()


def _bearer_login(client: VerifiedClient, user: str, bearer: BearerTokens,
                  tls: TLSPolicy) -> bool:
    """Connect (STARTTLS first) and log in as ``user`` with its token (``VerifiedClient`` picks
    the bearer mechanism the server offers)."""
    token = bearer.tokens.token(user)  # before connecting: a refused fetch opens nothing
    return bool(client.connect(user, token, starttls=tls.enabled, authmech=BEARER_MECHANISMS[0]))
