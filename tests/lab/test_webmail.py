"""The emergency portal: Roundcube on the standby, used in headless Chromium during an outage.

Debian's chromium driven by Playwright for Python (never ``playwright install``), against the
lab's Roundcube started as ``lab up --webmail`` starts it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Browser, Page, sync_playwright

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import wait_for_message
from mailcontinuity.lab.process import accepts_connections
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.store.db import open_store
from mailcontinuity.transitions import change_state
from tests.lab.policyd_helpers import back_to_normal

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 20_000


@pytest.fixture
def portal(lab: Lab) -> Iterator[Lab]:
    """The session lab with its webmail running; webmail stopped and state normal afterwards."""
    back_to_normal(lab)
    with_webmail = Lab.up(lab.dir, webmail=True)
    try:
        yield with_webmail
    finally:
        with_webmail.part("webmail").stop()
        back_to_normal(lab)


def lab_certificate_pin(lab: Lab) -> str:
    """Chromium's pin of the lab's server key (base64 SHA-256 of its SubjectPublicKeyInfo):
    the portal's HTTPS is accepted for exactly that key, nothing else is let through."""
    certificate = x509.load_pem_x509_certificate(
        LabCertificates(lab.dir / "tls").cert_file.read_bytes())
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def browser(tmp_path: Path, lab: Lab) -> Iterator[Browser]:
    """Chromium with a home of its own: it writes its crash-report settings and dconf cache
    under $HOME even with a temporary profile, and the suite touches nothing outside its
    temporary directories. The portal is HTTPS with the lab's certificate, pinned."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    with sync_playwright() as playwright:
        pin = f"--ignore-certificate-errors-spki-list={lab_certificate_pin(lab)}"
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=[*CHROMIUM_ARGS, pin], env=env)
        try:
            yield launched
        finally:
            launched.close()


def log_in(page: Page, url: str, login: str, password: str) -> None:
    page.goto(url)
    page.fill("#rcmloginuser", login)
    page.fill("#rcmloginpwd", password)
    page.click("#rcmloginsubmit")
    page.wait_for_selector("#messagelist", timeout=TIMEOUT_MS)


def test_a_user_reads_and_sends_mail_in_the_portal_during_an_outage(
        portal: Lab, browser: Browser) -> None:
    lab = portal
    alice, bob = lab.users[:2]
    assert lab.webmail is not None
    url = json.loads((lab.dir / "lab.json").read_text())["webmail"]
    assert url == lab.webmail.url and url.startswith("https://127.0.0.1:")

    history = make_message("partner@remote.test", [alice.address], "Quarterly figures (before)")
    send_message(lab.gateway.smtp, history, "partner@remote.test", [alice.address])
    assert wait_for_message(lab.endpoint("standby", "imap"), alice.login, alice.password,
                            history["Message-ID"])  # the milter's journal copy
    store = open_store(lab.config)
    try:
        change_state(lab.config, store, "failover", "portal test", "pytest")
    finally:
        store.close()

    page = browser.new_page()
    log_in(page, url, alice.login, alice.password)
    page.wait_for_selector("#messagelist >> text=Quarterly figures (before)", timeout=TIMEOUT_MS)

    page.goto(f"{url}?_task=mail&_action=compose")
    page.wait_for_selector("#compose-subject", timeout=TIMEOUT_MS)
    recipient = page.locator("#compose_to .recipient-input input")
    recipient.fill(bob.address)
    recipient.press("Enter")
    page.fill("#compose-subject", "Sent from the emergency portal")
    page.fill("#composebody", "Written in Roundcube on the standby.")
    page.click("button.btn.btn-primary.send")
    page.wait_for_selector("#messagelist", timeout=TIMEOUT_MS)  # back to the list once sent

    def in_sent() -> list[int]:
        with imap_login(lab.endpoint("standby", "imap"), alice.login, alice.password) as client:
            client.select_folder("Sent", readonly=True)
            return list(client.search(["SUBJECT", "Sent from the emergency portal"]))

    eventually(in_sent, 20, "the portal's message in alice's Sent folder on the standby")

    def delivered() -> list[int]:
        with imap_login(lab.endpoint("standby", "imap"), bob.login, bob.password) as client:
            client.select_folder("INBOX", readonly=True)
            return list(client.search(["SUBJECT", "Sent from the emergency portal"]))

    eventually(delivered, 20, "the portal's message delivered to bob on the standby")


def test_lab_up_webmail_writes_its_url_and_lab_down_stops_it(fresh_lab_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["lab", "up", "--dir", str(fresh_lab_dir), "--webmail"])
    assert result.exit_code == 0, result.output
    description = json.loads((fresh_lab_dir / "lab.json").read_text())
    lab = Lab.load(fresh_lab_dir)
    assert lab.webmail is not None and description["webmail"] == lab.webmail.url
    verified = ssl.create_default_context(cafile=str(LabCertificates(fresh_lab_dir / "tls")
                                                     .ca_file))
    assert urllib.request.urlopen(lab.webmail.url, timeout=10, context=verified).status == 200
    result = runner.invoke(main, ["lab", "down", "--dir", str(fresh_lab_dir)])
    assert result.exit_code == 0, result.output
    assert lab.part("webmail").pid() is None
    assert not accepts_connections(lab.webmail.endpoint)
