"""Issue 18, the portal: a banner in Roundcube while mail runs on the continuity system, none in
normal times; out-of-office set in the portal (managesieve on the standby) answers an outside
sender once. Real Roundcube in headless Chromium, real Dovecot, the lab's Postfix gateway."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from playwright.sync_api import Browser, Page

from mailcontinuity.cli.main import main
from mailcontinuity.config import Endpoint
from mailcontinuity.deploy.portal import BANNER_ELEMENT_ID
from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.lab.eventually import NotInTime, eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT, wait_for_message
from mailcontinuity.lab.process import free_ports, wait_for
from mailcontinuity.mail.managesieve import Credentials, Scripts, session
from mailcontinuity.mail.postfix import run_postfix
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.mail.tls import Side
from mailcontinuity.store.db import open_store
from mailcontinuity.transitions import change_state
from tests.lab.policyd_helpers import back_to_normal
from tests.lab.test_webmail import TIMEOUT_MS, browser, portal  # noqa: F401 - the fixtures

OUTSIDE_DOMAIN = "outside.test"
BANNER = f"#{BANNER_ELEMENT_ID}"


def portal_status(lab: Lab) -> dict[str, object]:
    path = lab.config.portal.status_file
    assert path is not None
    return json.loads(path.read_text()) if path.exists() else {}


def wait_for_portal_state(lab: Lab, state: str) -> None:
    """The sync agent writes the status file within a turn of its loop after a transition."""
    eventually(lambda: portal_status(lab).get("state") == state, 10,
               f"portal status file saying {state}")


def force_failover(lab: Lab) -> None:
    store = open_store(lab.config)
    try:
        change_state(lab.config, store, "failover", "portal test", "pytest")
    finally:
        store.close()


def log_in(page: Page, url: str, user: LabUser) -> None:
    page.goto(url)
    page.fill("#rcmloginuser", user.login)
    page.fill("#rcmloginpwd", user.password)
    page.click("#rcmloginsubmit")
    # The list is hidden while a mailbox is empty: attached is enough.
    page.wait_for_selector("#messagelist", state="attached", timeout=TIMEOUT_MS)


def test_the_banner_shows_during_an_outage_and_only_then(
        portal: Lab, browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    lab = portal
    assert lab.webmail is not None
    url, alice = lab.webmail.url, lab.users[0]
    texts = lab.config.portal
    wait_for_portal_state(lab, "normal")
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#rcmloginuser", timeout=TIMEOUT_MS)
    assert page.locator(BANNER).count() == 0
    log_in(page, url, alice)
    page.screenshot(path=tmp_path / "normal.png")
    assert page.locator(BANNER).count() == 0

    force_failover(lab)
    wait_for_portal_state(lab, "failover")
    page.reload()
    page.wait_for_selector(BANNER, timeout=TIMEOUT_MS)
    page.screenshot(path=tmp_path / "failover.png")
    banner = page.locator(BANNER)
    assert banner.is_visible()
    text = banner.inner_text()
    assert texts.outage_text in text and texts.failback_text in text
    assert f"Contact: {texts.contact}" in text and "Since 20" in text
    box = banner.bounding_box()
    assert box is not None and box["y"] == 0 and box["height"] > 20  # on top, not hidden
    assert (tmp_path / "failover.png").read_bytes().startswith(b"\x89PNG")

    # Anyone may open the login page: it says what the administrator wrote for it, no more.
    stranger = browser.new_page()
    stranger.goto(url)
    stranger.wait_for_selector(BANNER, timeout=TIMEOUT_MS)
    stranger.screenshot(path=tmp_path / "login-failover.png")
    assert stranger.locator(BANNER).inner_text().strip() == texts.login_text
    assert texts.contact not in stranger.content()

    back_to_normal(lab)
    wait_for_portal_state(lab, "normal")
    page.reload()
    page.wait_for_selector("#messagelist", state="attached", timeout=TIMEOUT_MS)
    page.screenshot(path=tmp_path / "normal-again.png")
    assert page.locator(BANNER).count() == 0
    stranger.reload()
    stranger.wait_for_selector("#rcmloginuser", timeout=TIMEOUT_MS)
    assert stranger.locator(BANNER).count() == 0


@pytest.fixture
def outside(lab: Lab) -> Iterator[Path]:
    """A domain on "the internet": the gateway relays its mail to an smtp-sink that keeps each
    message as a file in the directory yielded (under /tmp: smtp-sink writes as nobody, who
    cannot reach pytest's tmp_path)."""
    port = free_ports(1)[0]
    dumps = Path(tempfile.mkdtemp(prefix="mc-outside-", dir="/tmp"))
    dumps.chmod(0o777)
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "-d", f"{dumps}/msg.",
                             f"127.0.0.1:{port}", "10"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config_dir = lab.gateway.config_dir
    original = run_postfix(config_dir, "postconf", "-h", "transport_maps").strip()
    try:
        wait_for([Endpoint("127.0.0.1", port)], up=True, what="smtp-sink")
        run_postfix(config_dir, "postconf", "-e", f"transport_maps = {original},"
                    f" inline:{{ {OUTSIDE_DOMAIN}=smtp:[127.0.0.1]:{port} }}")
        lab.gateway.reload()
        yield dumps
    finally:
        run_postfix(config_dir, "postconf", "-e", f"transport_maps = {original}")
        lab.gateway.reload()
        sink.terminate()
        sink.wait(timeout=10)
        shutil.rmtree(dumps, ignore_errors=True)


def replies_in(dumps: Path, original_id: str) -> list[str]:
    """Auto-replies to ``original_id`` the outside domain received."""
    found = []
    for path in dumps.glob("msg.*"):
        text = path.read_text(errors="replace")
        if "Auto-Submitted: auto-replied" in text and original_id in text:
            found.append(text)
    return found


def queued_from_or_to(lab: Lab, sender: str, domain: str) -> int:
    """Messages in the gateway's queue from ``sender`` or with a recipient in ``domain``."""
    return sum(1 for entry in lab.gateway.queued() if entry["sender"] == sender
               or any(r["address"].endswith("@" + domain) for r in entry["recipients"]))


def wait_until_answered(lab: Lab, dumps: Path, sender: str, original_id: str | None) -> None:
    """Until ``sender``'s mail has left the gateway's queue (delivered: the standby ran sieve
    before it said 250, so any reply was handed back by then) and so has every reply to the
    outside domain; with ``original_id``, until that message's reply has arrived."""
    try:
        eventually(lambda: (original_id is None or replies_in(dumps, original_id))
                   and queued_from_or_to(lab, sender, OUTSIDE_DOMAIN) == 0, 150,
                   f"{sender}'s mail delivered, its replies at the outside domain")
    except NotInTime as exc:
        arrived = (f"{len(replies_in(dumps, original_id))} replies to {original_id} arrived, "
                   if original_id else "")
        raise AssertionError(
            f"{exc}: {arrived}{queued_from_or_to(lab, sender, OUTSIDE_DOMAIN)} queued from"
            f" {sender} or for {OUTSIDE_DOMAIN}:\n"
            + run_postfix(lab.gateway.config_dir, "postqueue", "-p")) from None


def sieve_sync_for(lab: Lab, user: LabUser) -> dict[str, Any]:
    """``sieve-sync --json``'s result for ``user``."""
    synced = CliRunner().invoke(main, ["--config", str(lab.config_file), "sieve-sync", "--json"])
    [result] = [found for found in json.loads(synced.stdout)["users"]
                if found["user"] == user.address]
    return dict(result)


def standby_scripts(lab: Lab, user: LabUser, remove: bool = False,
                    role: Side = "standby") -> Scripts:
    """The user's sieve scripts on the standby (or ``role``), as the lab's admin; with
    ``remove``, deleted afterwards, so that later tests see no vacation."""
    admin = Credentials(lab.standby.admin.login, lab.standby.admin.password)
    with session(lab.endpoint(role, "sieve"), user.address, admin,
                 lab.tls(role)) as sieve:
        scripts = sieve.scripts()
        if remove:
            sieve.activate(None)
            for name in scripts.texts:
                sieve.delete(name)
    return scripts


def test_out_of_office_set_in_the_portal_answers_an_outside_sender_once(
        portal: Lab, browser: Browser, outside: Path, tmp_path: Path) -> None:  # noqa: F811
    lab = portal
    assert lab.webmail is not None
    carol = lab.users[2]
    sender = f"partner-{uuid.uuid4().hex[:6]}@{OUTSIDE_DOMAIN}"
    subject = f"Away during the outage {uuid.uuid4().hex[:6]}"
    for role in ("standby", "primary"):  # no script another test left behind
        standby_scripts(lab, carol, remove=True, role=role)
    # The site's timer has synced carol's scripts before the outage: the base that tells her
    # change on the standby from one on the primary. (sieve-sync covers users with mail on
    # the standby: one journaled message makes carol one.)
    hello = make_message(f"hello@{OUTSIDE_DOMAIN}", [carol.address], "before the outage")
    send_message(lab.gateway.smtp, hello, f"hello@{OUTSIDE_DOMAIN}", [carol.address],
                 source=INTERNET_CLIENT)
    assert wait_for_message(lab.endpoint("standby", "imap"), carol.login, carol.password,
                            hello["Message-ID"])
    assert sieve_sync_for(lab, carol)["errors"] == []
    force_failover(lab)
    try:
        page = browser.new_page()
        log_in(page, lab.webmail.url, carol)
        page.goto(f"{lab.webmail.url}?_task=settings&_action=plugin.managesieve-vacation")
        page.wait_for_selector("#vacation_subject", timeout=TIMEOUT_MS)
        page.fill("#vacation_subject", subject)
        page.fill("#vacation_reason", "I read mail on the emergency portal; back soon.")
        page.select_option("#vacation_status", "on")
        page.click(".formbuttons .submit")
        page.wait_for_selector("text=Out-of-office data saved successfully",
                               timeout=TIMEOUT_MS)
        page.screenshot(path=tmp_path / "vacation-saved.png")
        scripts = standby_scripts(lab, carol)  # where the portal put it: the standby
        assert scripts.active is not None and subject in scripts.texts[scripts.active]
        assert "vacation" in scripts.texts[scripts.active]

        first, second = (make_message(sender, [carol.address], f"question {n}")
                         for n in (1, 2))
        # One at a time: sent together, Postfix may deliver the second first, and vacation
        # answers a sender once (the likely cause of a CI run that saw no reply to the first
        # and nothing queued; it did not look for a reply to the second).
        send_message(lab.gateway.smtp, first, sender, [carol.address], source=INTERNET_CLIENT)
        assert wait_for_message(lab.endpoint("standby", "imap"), carol.login, carol.password,
                                first["Message-ID"])
        # Up to 150 s: a reply that was being delivered when Postfix was reloaded stays in the
        # active queue, delivered but not removed, for about a minute (seen in CI; the same as
        # in test_failover).
        wait_until_answered(lab, outside, sender, first["Message-ID"])
        send_message(lab.gateway.smtp, second, sender, [carol.address], source=INTERNET_CLIENT)
        assert wait_for_message(lab.endpoint("standby", "imap"), carol.login, carol.password,
                                second["Message-ID"])
        wait_until_answered(lab, outside, sender, None)
        [reply] = replies_in(outside, first["Message-ID"])
        assert f"Subject: {subject}" in reply
        assert not replies_in(outside, second["Message-ID"])  # once per sender

        # After failback sieve-sync's next run copies the reply set on the standby to the
        # primary and activates it there: carol is still away, whichever server has her mail.
        back_to_normal(lab)
        assert standby_scripts(lab, carol, role="primary").active is None
        result = sieve_sync_for(lab, carol)
        assert result["errors"] == [] and result["returned"] and result["active"], result
        on_primary = standby_scripts(lab, carol, role="primary")
        assert on_primary.active is not None and subject in on_primary.texts[on_primary.active]
        assert standby_scripts(lab, carol).active == on_primary.active
    finally:
        standby_scripts(lab, carol, remove=True)
        standby_scripts(lab, carol, remove=True, role="primary")
        back_to_normal(lab)
