"""Failback, verify and the probes against every kind of primary the lab offers: the scripted
outage merged into a Dovecot primary whose user has a nested ``Parent/Child`` folder (its
parent not selectable), into a real Cyrus IMAP (folders under ``INBOX.``, no master user:
an admin with SASL PLAIN proxy authentication), and into Dovecot playing Exchange Online and
Gmail, where every login of mailcontinuity's (failback, verify, the health probe, sieve-sync)
is XOAUTH2 with a token from the lab's token service (part ``oauth2``)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.imapclient import Quota
from pytest_mock import MockerFixture

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.cyrus import MAX_MESSAGE_BYTES
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT
from mailcontinuity.lab.oauth2 import LAB_OAUTH2_CLIENT_ID, stats
from mailcontinuity.lab.profiles import GMAIL_ALL_MAIL
from mailcontinuity.lab.scenario import OutageScenario, audit_deliveries, restored
from mailcontinuity.mail.imap import Mailbox, imap_login
from mailcontinuity.mail.managesieve import Credentials, normalise, session
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.outage.primary import connect, read_admin_password
from mailcontinuity.store.db import open_store
from mailcontinuity.store.state import current_state
from mailcontinuity.transitions import change_state
from tests.lab.outage_helpers import run_cli

# (primary, profile): a plain Dovecot, Cyrus, and Dovecot playing Exchange Online and Gmail.
KINDS = [("dovecot", None), ("cyrus", None), ("dovecot", "exchange"), ("dovecot", "gmail")]


@pytest.fixture(scope="module", params=KINDS, ids=lambda kind: kind[1] or kind[0])
def kind_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    primary, profile = request.param
    with Lab.temporary(prefix=f"mclab-{profile or primary}-", primary=primary,
                       primary_profile=profile) as lab:
        yield lab


def profile_of(lab: Lab) -> str | None:
    return json.loads((lab.dir / "lab.json").read_text()).get("primary_profile")


def xoauth2_logins(lab: Lab, service: str) -> set[str]:
    """Who logged in to the primary's ``service`` (imap-login, managesieve-login) by XOAUTH2."""
    log = lab.primary.log_file.read_text(errors="replace")
    return set(re.findall(rf"{service}: Info: Login: user=<([^>]+)>, method=XOAUTH2", log))


def issued_for(lab: Lab) -> dict[str, int]:
    """The lab's token service: how many tokens it issued, by whom they were for."""
    assert lab.oauth2 is not None
    return dict(stats(lab.oauth2.url)["subjects"])


def nested_folder_on_primary(lab: Lab) -> str:
    """Alice has ``Parent/Child`` on the primary (created as a client would: the child only)
    with a message in it; returns that message's Message-ID."""
    alice = lab.users[0]
    message = make_message("old@remote.test", [alice.address], "kept in a nested folder")
    with imap_login(lab.endpoint("primary", "imap"), alice.login, alice.password) as client:
        separator = client.list_folders()[0][1].decode()
        prefix = client.namespace().personal[0][0]
        prefix = prefix.decode() if isinstance(prefix, bytes) else prefix
        name = f"{prefix}Parent{separator}Child"
        if not client.folder_exists(name):
            client.create_folder(name)
        client.append(name, message.as_bytes())
    return str(message["Message-ID"])


def test_primary_is_healthy_and_its_kind_is_the_one_asked_for(kind_lab: Lab) -> None:
    description = json.loads((kind_lab.dir / "lab.json").read_text())
    assert description["primary_kind"] == kind_lab.primary_kind
    assert set(description["primary"]) == {"imap", "lmtp", "managesieve"}
    report = eventually(lambda: (got := run_cli(kind_lab, "status", "--json")[1])["primary"]
                        ["healthy"] and got, 30, "the primary's probes to pass")
    # imap: the greeting and TLS each round; imap_login: the probe account's login (issue 20).
    assert {probe["probe"] for probe in report["primary"]["last_probes"]} == {
        "delivery", "imap", "imap_login"}
    assert all(probe["ok"] for probe in report["primary"]["last_probes"]), report
    profile = profile_of(kind_lab)
    if profile is not None:
        # The login probe opens the drill's probe mailbox by XOAUTH2: Exchange with the app's
        # token (for the whole domain), Gmail with the service account's token for the probe.
        assert kind_lab.oauth2 is not None and kind_lab.running()["oauth2"]
        assert "probe@example.test" in xoauth2_logins(kind_lab, "imap-login")
        owner = (f"{LAB_OAUTH2_CLIENT_ID}@example.test" if profile == "exchange"
                 else "probe@example.test")
        assert issued_for(kind_lab).get(owner), issued_for(kind_lab)
        # The drill passes with no password of the probe's on the primary: it reads the probe's
        # primary mailbox as failback logs in, and sieve-sync's step logs in by XOAUTH2 too.
        code, drill = run_cli(kind_lab, "drill", "--json")
        assert code == 0 and all(step["passed"] or step["skipped"] for step in drill["steps"]), \
            drill
        log = kind_lab.primary.log_file.read_text(errors="replace")
        assert not re.search(r"Login: user=<probe@example.test>, method=(?!XOAUTH2)", log)
        assert "probe@example.test" in xoauth2_logins(kind_lab, "managesieve-login")


def test_scripted_outage_merges_once_into_the_primary_twice_over(kind_lab: Lab) -> None:
    nested = nested_folder_on_primary(kind_lab)
    scenario = OutageScenario(kind_lab)
    scenario.before_outage()
    scenario.force_failover()
    scenario.during_outage()
    scenario.activity_on_standby()
    eventually(lambda: run_cli(kind_lab, "status", "--json")[1]["outage"]["activity"]
               ["new_messages"] >= 8, 15, "the agent's record of the outage activity")

    code, report = run_cli(kind_lab, "failback", "--yes", "--json")
    assert code == 0, report
    assert report["state"] == "normal" and report["refused"] == [], report
    checked = scenario.check_primary()
    assert (checked.lost, checked.duplicated, checked.misplaced) == ([], [], [])
    code, audit = run_cli(kind_lab, "verify", "--json")
    assert code == 0 and audit["ok"], audit
    profile = profile_of(kind_lab)
    if profile is not None:
        # Failback and verify logged in as each user by XOAUTH2 (the primary has no master
        # user); Gmail's tokens are per user (the JWT's subject), Exchange's one app token.
        users = {user.address for user in kind_lab.users[:3]}
        assert users <= xoauth2_logins(kind_lab, "imap-login")
        if profile == "gmail":
            assert users <= set(issued_for(kind_lab)), issued_for(kind_lab)

    # A second failback finds nothing to do and changes nothing on the primary: not even the
    # draft and the Sent copy written on the standby, found by Message-ID and header fields
    # where the primary reports estimated sizes (exchange).
    code, again = run_cli(kind_lab, "failback", "--yes", "--json")
    assert code == 0 and again["refused"] == [], again
    assert not [name for name in again["counts"] if name.startswith("append")], again
    checked = scenario.check_primary()
    assert (checked.lost, checked.duplicated, checked.misplaced) == ([], [], [])
    alice = kind_lab.users[0]
    lost, duplicated, _ = audit_deliveries(kind_lab, [("nested", nested, [alice.address])])
    assert (lost, duplicated) == ([], [])
    # The Sent copy went to the service's own sent folder; nothing was created beside it.
    with imap_login(kind_lab.endpoint("primary", "imap"), alice.login, alice.password) as client:
        names = {name for _, _, name in client.list_folders()}
    if profile == "exchange":
        assert "Sent Items" in names and "Sent" not in names, names
    if profile == "gmail":
        assert "[Gmail]/Sent Mail" in names and "Sent" not in names, names
        # All Mail shows the delivered mail again: failback and verify did not take it for a copy.
        delivered = [sent for sent in scenario.report.sent
                     if sent.phase == "before" and alice.address in sent.recipients]
        with imap_login(kind_lab.endpoint("primary", "imap"), alice.login,
                        alice.password) as client:
            client.select_folder(GMAIL_ALL_MAIL, readonly=True)
            assert delivered and all(client.search(["HEADER", "Message-ID", sent.message_id])
                                     for sent in delivered), delivered


def test_exchange_reports_estimated_sizes_to_mailcontinuity(kind_lab: Lab) -> None:
    """What mailcontinuity reads from the exchange profile (``primary.imap``) is Exchange's
    estimated RFC822.SIZE, not the size of the message: a draft appended, then fetched."""
    if profile_of(kind_lab) != "exchange":
        pytest.skip("the exchange profile estimates sizes")
    alice = kind_lab.users[0]
    draft = make_message(alice.address, ["bob@example.test"], "how big am I")
    with imap_login(kind_lab.endpoint("primary", "imap"), alice.login, alice.password) as client:
        client.append("Drafts", draft.as_bytes())
        client.select_folder("Drafts", readonly=True)
        uids = client.search(["HEADER", "Message-ID", str(draft["Message-ID"])])
        exact = client.fetch(uids, ["RFC822.SIZE", "RFC822"])[uids[0]]
    mailbox = connect(kind_lab.config, alice.address, read_admin_password(kind_lab.config))
    try:
        mailbox.select("Drafts")
        seen = mailbox.client.fetch(uids, ["RFC822.SIZE", "RFC822"])[uids[0]]
    finally:
        mailbox.close()
    assert exact[b"RFC822.SIZE"] == len(exact[b"RFC822"]) == len(seen[b"RFC822"]), exact
    assert seen[b"RFC822.SIZE"] != exact[b"RFC822.SIZE"], seen


def test_wrong_failback_credentials_fail_the_drill_and_failback_refuses_to_start(
        kind_lab: Lab, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-admin-password\n")
    wrong.chmod(0o600)
    text = kind_lab.config_file.read_text()
    broken = tmp_path / "mailcontinuity.toml"
    broken.write_text(re.sub(r"(?m)^password_file = .*$", f'password_file = "{wrong}"', text))
    result = CliRunner().invoke(main, ["--config", str(broken), "drill", "--json"])
    steps = {step["name"]: step for step in json.loads(result.stdout)["steps"]}
    step = steps["failback credentials on the primary"]
    assert not step["passed"] and not step["skipped"] and step["advice"], step
    assert "login as probe@example.test" in step["detail"], step
    if profile_of(kind_lab) == "exchange":  # the client secret the token endpoint refuses
        assert "invalid_client" in step["detail"] and "sync.oauth2_client_id" in step["detail"]
    if profile_of(kind_lab) == "gmail":  # no service account's key in the file
        assert "sync.password_file: not a service account" in step["detail"], step

    with restored(kind_lab):
        # A loaded machine can make the lab's short health timings fail over by themselves;
        # the automatic failback then ends that first.
        eventually(lambda: run_cli(kind_lab, "status", "--json")[1]["state"] == "normal", 120,
                   "state normal", interval=1)
        store = open_store(kind_lab.config)
        try:
            assert change_state(kind_lab.config, store, "failover", "test", "test",
                                expect=("normal",)), current_state(store)
        finally:
            store.close()
        result = CliRunner().invoke(main, ["--config", str(broken), "failback", "--yes"])
        assert result.exit_code != 0
        assert "preflight" in result.output and "stays failover" in result.output, result.output
        assert run_cli(kind_lab, "status", "--json")[1]["state"] == "failover"
        code, report = run_cli(kind_lab, "failback", "--yes", "--json")
        assert code == 0 and report["state"] == "normal", report


def _cyrus_admin(lab: Lab) -> IMAPClient:
    client = IMAPClient(lab.endpoint("primary", "imap").host, lab.endpoint("primary", "imap").port,
                        ssl=False, timeout=30)
    client.login(lab.primary.admin.login, lab.primary.admin.password)
    return client


def test_refusals_on_cyrus_are_each_users_own_and_the_others_are_merged(kind_lab: Lab) -> None:
    """Over quota (Bob), CREATE refused by a folder-count quota (Alice), a message above
    APPENDLIMIT (Alice): each is reported with Cyrus' words and kept on the standby; Carol's
    mail and the rest of Alice's are merged; the state returns to normal."""
    if kind_lab.primary_kind != "cyrus":
        pytest.skip("quotas and the size limit are set up on the lab's Cyrus")
    alice, bob, carol = kind_lab.users[:3]
    with restored(kind_lab):
        scenario = OutageScenario(kind_lab)
        scenario.force_failover()
        scenario.during_outage()
        big = make_message("partner@remote.test", [alice.address], "too big for the primary")
        big.set_content("x" * (MAX_MESSAGE_BYTES + 1024))
        with imap_login(kind_lab.endpoint("standby", "imap"), alice.login,
                        alice.password) as client:
            client.append("INBOX", big.as_bytes())
            client.create_folder("Neu im Ausfall")
            client.select_folder("INBOX")
            first = scenario.report.sent[0]
            client.move(client.search(["HEADER", "Message-ID", first.message_id]),
                        "Neu im Ausfall")
        eventually(lambda: run_cli(kind_lab, "status", "--json")[1]["outage"]["activity"]
                   ["new_folders"] >= 1, 15, "the agent's record of the new folder")
        with imap_login(kind_lab.endpoint("primary", "imap"), alice.login,
                        alice.password) as client:
            folders = len(client.list_folders())
        with imap_login(kind_lab.endpoint("primary", "imap"), bob.login, bob.password):
            pass  # Cyrus creates a mailbox at its first login
        admin = _cyrus_admin(kind_lab)
        try:
            admin.set_quota([Quota(f"user.{bob.address}", "STORAGE", b"", 1)])
            admin.set_quota([Quota(f"user.{alice.address}", "X-NUM-FOLDERS", b"", folders)])
            code, report = run_cli(kind_lab, "failback", "--yes", "--json")
        finally:
            admin.set_quota([Quota(f"user.{bob.address}", "STORAGE", b"", -1)])
            admin.set_quota([Quota(f"user.{alice.address}", "X-NUM-FOLDERS", b"", -1)])
            admin.logout()
    # Exit status 1: something was refused and is listed; the state is normal all the same.
    assert code == 1 and report["state"] == "normal", report
    refused = [(item["user"], item["action"], item["server_said"]) for item in report["refused"]]
    assert any(user == bob.address and "Over quota" in said
               for user, _, said in refused), refused
    assert (alice.address, "create_folder", "create failed: Over quota") in refused, refused
    assert any(user == alice.address and action == "append" and "APPENDLIMIT" in said
               for user, action, said in refused), refused
    assert all(user != carol.address for user, _, _ in refused), refused
    lost, duplicated, _ = audit_deliveries(
        kind_lab, [(sent.message_id, sent.message_id, [carol.address])
                   for sent in scenario.report.sent if carol.address in sent.recipients])
    assert (lost, duplicated) == ([], [])


def outage_with_mail(lab: Lab) -> OutageScenario:
    """A forced failover and the scenario's outage mail, recorded by the sync agent."""
    scenario = OutageScenario(lab)
    scenario.force_failover()
    scenario.during_outage()
    eventually(lambda: run_cli(lab, "status", "--json")[1]["outage"]["activity"]
               ["new_messages"] >= 7, 15, "the agent's record of the outage mail")
    return scenario


def test_a_throttled_session_waits_as_told_and_a_run_cut_short_is_resumed(
        kind_lab: Lab, mocker: MockerFixture) -> None:
    """Fault injection: the primary answers APPEND with Exchange's throttling words. A few
    refusals are waited out; a session throttled for good ends this run (the state is already
    failback) and the sync agent's next run finishes the merge."""
    real_append = Mailbox.append
    throttled = {"left": 2}

    def append(self: Mailbox, folder: str, items: list) -> None:
        if throttled["left"] > 0:
            throttled["left"] -= 1
            raise IMAPClientError("APPEND failed: NO Request is throttled. Suggested Backoff"
                                  " Time: 300 milliseconds")
        real_append(self, folder, items)

    mocker.patch.object(Mailbox, "append", append)
    with restored(kind_lab):
        scenario = outage_with_mail(kind_lab)
        code, report = run_cli(kind_lab, "failback", "--yes", "--json")
        assert code == 0 and report["state"] == "normal" and report["refused"] == [], report
        assert throttled["left"] == 0
        checked = scenario.check_primary()
        assert (checked.lost, checked.duplicated) == ([], [])

    throttled["left"] = 10 ** 6
    mocker.patch("mailcontinuity.outage.merge.THROTTLE_RETRIES", 1)
    with restored(kind_lab):
        scenario = outage_with_mail(kind_lab)
        result = CliRunner().invoke(main, ["--config", str(kind_lab.config_file), "failback",
                                           "--yes"])
        assert result.exit_code != 0 and "throttles" in result.output, result.output
        # The sync agent (its own process, not throttled) resumes and finishes.
        eventually(lambda: run_cli(kind_lab, "status", "--json")[1]["state"] == "normal", 90,
                   "the sync agent's failback", interval=1)
        checked = scenario.check_primary()
        assert (checked.lost, checked.duplicated) == ([], [])


def test_sieve_sync_copies_a_script_from_the_primary(kind_lab: Lab) -> None:
    """sieve-sync logs in to the primary's ManageSieve (Cyrus' timsieved: the admin with the
    user as authorization identity; exchange and gmail: the user's token by XOAUTH2) and copies
    the user's active script to the standby."""
    carol = kind_lab.users[2]
    admin = Credentials(kind_lab.primary.admin.login, kind_lab.primary.admin.password)
    # The test itself logs in to a profiled primary as the user (no master user there).
    on_primary = admin if profile_of(kind_lab) is None else Credentials(carol.login,
                                                                        carol.password)
    text = 'require ["fileinto"];\nif header :contains "subject" "[lists]" { fileinto "INBOX"; }\n'
    name = f"rules-{uuid.uuid4().hex[:6]}"
    send_message(kind_lab.gateway.smtp, make_message("news@remote.test", [carol.address], "hi"),
                 "news@remote.test", [carol.address], source=INTERNET_CLIENT)
    maildir = Path(kind_lab.config.standby.maildir.replace("%d", "example.test")
                   .replace("%n", "carol"))
    eventually(maildir.exists, 30, "Carol's standby Maildir")
    with session(kind_lab.endpoint("primary", "sieve"), carol.address, on_primary,
                 kind_lab.tls("primary")) as client:
        client.put(name, text)
        client.activate(name)
    try:
        result = CliRunner().invoke(main, ["--config", str(kind_lab.config_file), "sieve-sync",
                                           "--json"])
        assert result.exit_code == 0, result.output
        with session(kind_lab.endpoint("standby", "sieve"), carol.address, admin,
                     kind_lab.tls("standby")) as client:
            scripts = client.scripts()
        assert scripts.active == name and normalise(scripts.texts[name]) == normalise(text)
        if profile_of(kind_lab) is not None:
            assert carol.address in xoauth2_logins(kind_lab, "managesieve-login")
    finally:
        for role in ("primary", "standby"):
            with session(kind_lab.endpoint(role, "sieve"), carol.address,
                         on_primary if role == "primary" else admin,
                         kind_lab.tls(role)) as client:
                client.activate(None)
                for script in client.scripts().texts:
                    client.delete(script)
