"""Issue 20: the portal fit for the internet: a guesser slows only themselves, PHP is not root,
its database is private."""

from __future__ import annotations

import http.client
import re
import ssl
import subprocess
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

from mailcontinuity.config import Endpoint
from mailcontinuity.deploy.settings import AUTH_FAILURE_DELAY_SECONDS
from mailcontinuity.lab import Lab
from tests.lab.test_webmail import portal  # noqa: F401 - the fixture

GUESSER = "127.0.0.11"
USER = "127.0.0.12"


def webmail_login(endpoint: Endpoint, context: ssl.SSLContext, source: str, login: str,
                  password: str) -> tuple[float, bool]:
    """One login through Roundcube's form over HTTPS from ``source``: seconds taken, and
    success."""
    conn = http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=90,
                                       source_address=(source, 0), context=context)
    try:
        conn.request("GET", "/?_task=login")
        page = conn.getresponse()
        body = page.read().decode()
        cookies = "; ".join(c.split(";", 1)[0] for c in page.headers.get_all("Set-Cookie") or [])
        found = re.search(r'name="_token" value="([^"]+)"', body)
        assert found, body[:300]
        form = urllib.parse.urlencode({"_token": found.group(1), "_task": "login",
                                       "_action": "login", "_timezone": "UTC", "_url": "",
                                       "_user": login, "_pass": password})
        started = time.perf_counter()
        conn.request("POST", "/?_task=login", form, {
            "Cookie": cookies, "Content-Type": "application/x-www-form-urlencoded"})
        reply = conn.getresponse()
        reply.read()
        return time.perf_counter() - started, reply.status == 302
    finally:
        conn.close()


def test_a_webmail_guesser_slows_only_themselves(portal: Lab) -> None:  # noqa: F811
    assert portal.webmail is not None
    endpoint = portal.webmail.endpoint
    assert portal.webmail.url.startswith("https://")
    context = ssl.create_default_context(cafile=str(portal.standby.certificates.ca_file))
    bob, carol = portal.users[1], portal.users[2]
    with ThreadPoolExecutor(6) as pool:
        guesses = list(pool.map(lambda n: webmail_login(endpoint, context, GUESSER, bob.login,
                                                        f"guess-{n}-{uuid.uuid4().hex[:6]}"),
                                range(6)))
    assert not any(ok for _, ok in guesses), guesses
    seconds, ok = webmail_login(endpoint, context, USER, carol.login, carol.password)
    assert ok
    assert seconds < AUTH_FAILURE_DELAY_SECONDS, (seconds, guesses)
    # Dovecot saw the guesser's own address (IMAP ID from the trusted portal), not the portal's.
    log = (portal.standby.log_file).read_text()
    assert f"rip={GUESSER}" in log and f"user=<{bob.login}>" in log


def test_php_is_not_root_and_the_database_is_private(portal: Lab) -> None:  # noqa: F811
    assert portal.webmail is not None
    pid = portal.webmail.pid()
    assert pid is not None
    user = subprocess.run(["ps", "-o", "user=", "-p", str(pid)], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert user == "www-data"
    database = portal.webmail.root / "roundcube.sqlite"
    assert database.stat().st_mode & 0o777 == 0o600
    reading = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              "cat", str(database)], capture_output=True, check=False)
    assert reading.returncode != 0 and b"Permission denied" in reading.stderr
