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

Loopback only; tokens live in memory (a restart revokes them all: mailcontinuity then asks
for new ones); ``issued`` and ``introspected`` count requests and ``subjects`` counts tokens by
whom they were issued for (tests check that tokens are cached, and whose they are), read at
``GET /stats``.

In a lab created with ``--primary-profile exchange|gmail`` it is the lab part ``oauth2``: its
own process (``lab.oauth2.main`` with LISTEN DOMAIN SECRET_FILE KEY_FILE, a pid
file and a log under ``DIR/oauth2``), plain HTTP on 127.0.0.1 (the product takes ``http://``
token endpoints on loopback only, and Dovecot's introspection needs no CA then). Tests that
need a service of their own start one in their process with ``running_token_service``.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from urllib.request import urlopen

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailcontinuity.config import Endpoint, parse_endpoint
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.process import (
    accepts_connections,
    log_tail,
    read_pid,
    spawn,
    stop_pid_file,
    wait_for,
)

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
    subjects: Counter[str] = field(default_factory=Counter)
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
            self.subjects[username] += 1
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

    def stats(self) -> dict[str, object]:
        with self.lock:
            return {"issued": self.issued, "introspected": self.introspected,
                    "subjects": dict(self.subjects)}


JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class ServiceAccount:
    """A Google-style service account: its address, and the JSON key file's text."""

    email: str
    key_json: str

    @classmethod
    def make(cls, email: str, token_url: str) -> ServiceAccount:
        """A new account with a fresh 2048-bit key, as Google's console makes one."""
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
        def do_GET(self) -> None:
            if self.path == "/stats":
                self._answer(200, service.stats())
            else:
                self._answer(404, {"error": "not_found"})

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
            self._answer(status, answer)

        def _answer(self, status: int, answer: dict[str, object]) -> None:
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


def dovecot_oauth2_passdb(conf_ext: Path, base_url: str, username_format: str = "%d") -> str:
    """The primary Dovecot's passdb that validates XOAUTH2 tokens with the service (written to
    ``conf_ext``); add it after the password passdbs and offer XOAUTH2 in ``auth_mechanisms``.
    ``username_format`` is what of the login must match the token's user: ``%d`` the domain
    (an app-only token opens every mailbox of it), ``%u`` the address (a per-user token)."""
    conf_ext.write_text(
        "introspection_mode = post\n"
        f"introspection_url = {base_url}/introspect\n"
        "username_attribute = username\n"
        f"username_format = {username_format}\n"
        "active_attribute = active\n"
        "active_value = true\n")
    return f"passdb {{\n  driver = oauth2\n  args = {conf_ext}\n}}\n"


def stats(base_url: str) -> dict[str, Any]:
    """The running service's counters (``GET /stats``)."""
    with urlopen(f"{base_url}/stats", timeout=10) as answer:
        return dict(json.load(answer))


@dataclass
class TokenServicePart:
    """The lab part ``oauth2``: the token service in its own process, started and stopped with
    the lab. It knows the app ``LAB_OAUTH2_CLIENT_ID`` with the secret in ``secret_file``, and
    the service account whose JSON key is ``key_file``; tokens are for ``domain``."""

    root: Path
    listen: Endpoint
    domain: str
    secret_file: Path
    key_file: Path

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    @property
    def pid_file(self) -> Path:
        return self.root / "oauth2.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "oauth2.log"

    def create(self) -> None:
        """The app's client secret and the service account's key, each a 0600 file."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path, text in ((self.secret_file, "s" + secrets.token_urlsafe(24)),
                           (self.key_file, ServiceAccount.make(LAB_SERVICE_ACCOUNT,
                                                               f"{self.url}/token").key_json)):
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(text + "\n")

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def start(self) -> None:
        if self.pid() is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # -c rather than -m: the lab package imports this module before runpy would run it.
        argv = [sys.executable, "-c", "from mailcontinuity.lab.oauth2 import main; main()",
                str(self.listen), self.domain, str(self.secret_file), str(self.key_file)]
        spawn(argv, self.log_file, self.pid_file)
        try:
            wait_for([self.listen], up=True, what="the lab's OAuth2 token service")
        except LabError:
            self.stop()
            raise LabError(f"oauth2 did not start: {log_tail(self.log_file)}"
                           f" (log: {self.log_file})") from None

    def stop(self) -> None:
        stop_pid_file(self.pid_file)
        if accepts_connections(self.listen, 0.5):
            wait_for([self.listen], up=False, what="the lab's OAuth2 token service")


def serve(listen: Endpoint, domain: str, secret_file: Path, key_file: Path) -> None:
    """Serve until SIGTERM: the process behind ``TokenServicePart``."""
    service = TokenService(LAB_OAUTH2_CLIENT_ID, secret_file.read_text().strip(), domain)
    key_json = key_file.read_text()
    service.service_account = ServiceAccount(json.loads(key_json)["client_email"], key_json)
    server = ThreadingHTTPServer((listen.host, listen.port), _handler(service))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    with server:
        server.serve_forever()


def main() -> None:
    listen, domain, secret_file, key_file = sys.argv[1:5]
    serve(parse_endpoint(listen), domain, Path(secret_file), Path(key_file))

