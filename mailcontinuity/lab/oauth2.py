"""A loopback OAuth2 token service for the lab: the XOAUTH2 login path exercised end to end.

It plays what Microsoft's identity platform does for an app with ``IMAP.AccessAsApp``, and what
Google's does for a service account with domain-wide delegation (the JWT-bearer grant: an
assertion signed with the account's key gets a token for its subject). For Microsoft the
client-credentials grant at ``/token`` (RFC 6749 section 4.4, ``client_secret_post``) issues an
access token for the whole domain, and ``/introspect`` (RFC 7662, ``token=`` in a POST, the way
Dovecot's oauth2 passdb asks) says whether a token is active. Dovecot's oauth2 passdb checks the
``username`` the introspection returns against the login with ``username_format = %d``: an
app-only token is good for every mailbox of its domain, as an Exchange app-only token is for
every mailbox the app may reach.

Loopback only; tokens live in memory; ``issued`` and ``introspected`` count requests (tests
check that tokens are cached).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

LAB_OAUTH2_CLIENT_ID = "mailcontinuity-lab-app"
LAB_SERVICE_ACCOUNT = "mailcontinuity@lab-project.iam.gserviceaccount.test"


@dataclass
class TokenService:
    """The service's state: the one client it knows, the tokens it issued."""

    client_id: str
    client_secret: str
    domain: str
    lifetime: int = 3600
    service_account: ServiceAccount | None = None
    """Google's way: a service account whose signed assertions (JWT-bearer grant) get a token
    for their subject."""
    tokens: dict[str, tuple[float, str]] = field(default_factory=dict)
    issued: int = 0
    introspected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        if form.get("grant_type") == JWT_BEARER and self.service_account is not None:
            subject = self.service_account.subject(form.get("assertion", ""))
            if subject is None or not subject.endswith(f"@{self.domain}"):
                return 400, {"error": "invalid_grant",
                             "error_description": "bad assertion or subject"}
            return 200, self._token(subject)
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if (form.get("client_id") != self.client_id
                or not secrets.compare_digest(form.get("client_secret", ""), self.client_secret)):
            return 401, {"error": "invalid_client",
                         "error_description": "unknown client or wrong secret"}
        return 200, self._token(f"{self.client_id}@{self.domain}")

    def _token(self, username: str) -> dict[str, object]:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = (time.time() + self.lifetime, username)
            self.issued += 1
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}

    def introspect(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        with self.lock:
            self.introspected += 1
            entry = self.tokens.get(form.get("token", ""))
        if entry is None or entry[0] <= time.time():
            return 200, {"active": False}
        return 200, {"active": True, "username": entry[1], "exp": int(entry[0])}

    def revoke_all(self) -> None:
        with self.lock:
            self.tokens.clear()


JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class ServiceAccount:
    """A Google-style service account: its address, and the JSON key file's text."""

    email: str
    key_json: str

    @classmethod
    def make(cls, email: str, token_url: str) -> ServiceAccount:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        return cls(email, json.dumps({"type": "service_account", "client_email": email,
                                      "private_key": pem, "token_uri": token_url}))

    def subject(self, assertion: str) -> str | None:
        """The assertion's ``sub`` if it is signed by this account's key (RS256), issued by it
        and not expired; else None."""
        try:
            header, payload, signature = assertion.split(".")
            key = serialization.load_pem_private_key(
                json.loads(self.key_json)["private_key"].encode(), None)
            assert isinstance(key, rsa.RSAPrivateKey)
            key.public_key().verify(_unb64(signature), f"{header}.{payload}".encode(),
                                    padding.PKCS1v15(), hashes.SHA256())
            claims = json.loads(_unb64(payload))
        except (ValueError, InvalidSignature, KeyError):
            return None
        if claims.get("iss") != self.email or claims.get("exp", 0) <= time.time():
            return None
        subject = claims.get("sub")
        return subject if isinstance(subject, str) else None


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), 65536)
            body = self.rfile.read(length).decode("utf-8", "replace")
            form = {key: values[0] for key, values in parse_qs(body).items()}
            if self.path == "/token":
                status, answer = service.issue(form)
            elif self.path == "/introspect":
                status, answer = service.introspect(form)
            else:
                status, answer = 404, {"error": "not_found"}
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: tests read the counters

    return Handler


@contextmanager
def running_token_service(client_secret: str, domain: str,
                          lifetime: int = 3600) -> Iterator[tuple[TokenService, str]]:
    """The service on a free loopback port, with its base URL; stopped on exit. It knows one
    app (``LAB_OAUTH2_CLIENT_ID``, ``client_secret``) and one service account
    (``service.service_account``, ``LAB_SERVICE_ACCOUNT``)."""
    service = TokenService(LAB_OAUTH2_CLIENT_ID, client_secret, domain, lifetime)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    service.service_account = ServiceAccount.make(
        LAB_SERVICE_ACCOUNT, f"http://127.0.0.1:{server.server_address[1]}/token")
    thread = threading.Thread(target=server.serve_forever, name="lab-oauth2", daemon=True)
    thread.start()
    try:
        yield service, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def dovecot_oauth2_passdb(conf_ext: Path, base_url: str) -> str:
    """The primary Dovecot's passdb that validates XOAUTH2 tokens with the service (written to
    ``conf_ext``); add it after the password passdbs and offer XOAUTH2 in ``auth_mechanisms``."""
    conf_ext.write_text(
        "introspection_mode = post\n"
        f"introspection_url = {base_url}/introspect\n"
        "username_attribute = username\n"
        "username_format = %d\n"
        "active_attribute = active\n"
        "active_value = true\n")
    return f"passdb {{\n  driver = oauth2\n  args = {conf_ext}\n}}\n"
