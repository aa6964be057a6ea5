"""sieve-sync on the lab: scripts and activation follow the primary; vacation works in an outage.

Real ManageSieve on both lab Dovecots, logged in through the lab's master user as the brief's
production setup would be; the outage is a stopped primary detected by the running policyd.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import MAIL_USER, LabUser
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT, wait_for_message
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.managesieve import Credentials, SieveSession, normalise, session
from mailcontinuity.mail.smtp import make_message, send_message
from tests.lab.backends import lab_on_both_stores
from tests.lab.policyd_helpers import back_to_normal, wait_for_state

GOOD = 'require ["fileinto"];\nif header :contains "subject" "[lists]" { fileinto "INBOX"; }\n'
BROKEN = 'require ["vacation"];\nif true { vacation "no closing brace";\n'

lab_fixture = lab_on_both_stores()  # what sieve-sync last left is kept in the store


def sieve(lab: Lab, role: str, user: LabUser) -> AbstractContextManager[SieveSession]:
    admin = Credentials(lab.primary.admin.login, lab.primary.admin.password)
    return session(lab.endpoint(role, "sieve"), user.address, admin, lab.tls(role))


def clear_scripts(lab: Lab, *users: LabUser) -> None:
    """Leave no script behind: a vacation on the primary would answer other tests' mail."""
    for role in ("primary", "standby"):
        for user in users:
            with sieve(lab, role, user) as client:
                client.activate(None)
                for name in client.scripts().texts:
                    client.delete(name)


def sieve_sync(lab: Lab) -> tuple[int, dict, str]:
    """Exit code, JSON report and the error line (stderr also carries the log lines)."""
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "sieve-sync", "--json"])
    report = json.loads(result.stdout) if result.stdout.startswith("{") else {}
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == (result.exit_code != 0), result.stderr
    return result.exit_code, report, "".join(errors)


def journal(lab: Lab, *users: LabUser) -> None:
    """A message to each user through the gateway, so that each has a standby Maildir."""
    for user in users:
        message = make_message("newsletter@remote.test", [user.address], "hello")
        send_message(lab.gateway.smtp, message, "newsletter@remote.test", [user.address])
        assert wait_for_message(lab.endpoint("standby", "imap"), user.login, user.password,
                                message["Message-ID"])


def replies_to(lab: Lab, role: str, user: LabUser, message_id: str) -> list[bytes]:
    """Headers of the messages in ``user``'s INBOX on ``role`` that answer ``message_id``."""
    with imap_login(lab.endpoint(role, "imap"), user.login, user.password) as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["HEADER", "In-Reply-To", message_id])
        fetched = client.fetch(uids, ["BODY.PEEK[HEADER]"]) if uids else {}
    return [data[b"BODY[HEADER]"] for data in fetched.values()]


@pytest.fixture
def users(lab: Lab) -> Iterator[tuple[LabUser, LabUser, LabUser]]:
    alice, bob, carol = lab.users[:3]
    back_to_normal(lab)
    journal(lab, alice, bob, carol)
    clear_scripts(lab, alice, bob, carol)
    try:
        yield alice, bob, carol
    finally:
        back_to_normal(lab)
        clear_scripts(lab, alice, bob, carol)


def test_vacation_set_on_the_primary_answers_from_the_standby_during_an_outage(
    lab: Lab, users: tuple[LabUser, LabUser, LabUser]
) -> None:
    alice, bob, _ = users
    away = f"Alice is away ({uuid.uuid4().hex[:8]})."  # a new :handle each run
    with sieve(lab, "primary", alice) as primary:
        primary.put("out-of-office",
                    f'require ["vacation"];\nvacation :days 1 :subject "Away" "{away}";\n')
        primary.activate("out-of-office")
    code, report, stderr = sieve_sync(lab)
    assert code == 0, stderr
    [alice_result] = [u for u in report["users"] if u["user"] == alice.address]
    assert alice_result["copied"] == ["out-of-office"] and alice_result["activated"]

    # Normal times: the primary answers; the journal copy on the standby must not answer too.
    before = make_message(bob.address, [alice.address], "before the outage")
    send_message(lab.gateway.smtp, before, bob.address, [alice.address], source=INTERNET_CLIENT)
    eventually(lambda: replies_to(lab, "primary", bob, before["Message-ID"]), 20,
               "the primary's vacation reply")
    assert wait_for_message(lab.endpoint("standby", "imap"), alice.login, alice.password,
                            before["Message-ID"])
    time.sleep(2)  # a reply from the standby would be routed and delivered within this
    assert len(replies_to(lab, "primary", bob, before["Message-ID"])) == 1

    lab.part("primary").stop()
    wait_for_state(lab, "failover", timeout=15)
    during = make_message(bob.address, [alice.address], "during the outage")
    send_message(lab.gateway.smtp, during, bob.address, [alice.address], source=INTERNET_CLIENT)
    [reply] = eventually(lambda: replies_to(lab, "standby", bob, during["Message-ID"]), 20,
                         "the standby's vacation reply in bob's standby INBOX")
    assert b"Subject: Away" in reply
    assert b"Auto-Submitted: auto-replied" in reply


def test_a_broken_script_is_reported_and_skipped_and_the_others_are_synced(
    lab: Lab, users: tuple[LabUser, LabUser, LabUser]
) -> None:
    alice, bob, carol = users
    with sieve(lab, "primary", bob) as primary:
        primary.put("lists", GOOD)
        primary.put("spare", "keep;\r\n")
        primary.activate("lists")
    # Written past ManageSieve (which would refuse it), as a restored backup might be.
    sieve_dir = lab.primary.maildir(carol.address).parent / "sieve"
    sieve_dir.mkdir(exist_ok=True)
    (sieve_dir / "broken.sieve").write_text(BROKEN)
    for path in (sieve_dir, sieve_dir / "broken.sieve"):
        shutil.chown(path, MAIL_USER, MAIL_USER)
    with sieve(lab, "primary", carol) as primary:
        primary.put("fine", "keep;\n")

    code, report, stderr = sieve_sync(lab)
    assert code == 1
    assert "carol@example.test" in stderr and "'broken'" in stderr
    assert report["failed"] == [carol.address]
    by_user = {u["user"]: u for u in report["users"]}
    assert sorted(by_user[bob.address]["copied"]) == ["lists", "spare"]
    assert by_user[carol.address]["copied"] == ["fine"]
    assert "does not compile" in by_user[carol.address]["errors"][0]
    assert by_user[alice.address]["errors"] == []
    with sieve(lab, "standby", bob) as standby:
        scripts = standby.scripts()
    assert scripts.active == "lists" and scripts.texts["lists"] == normalise(GOOD)
    with sieve(lab, "standby", carol) as standby:
        assert set(standby.scripts().texts) == {"fine"}

    # Idempotent: nothing rewritten. Then deactivation and deletion follow the primary.
    (sieve_dir / "broken.sieve").unlink()
    code, report, stderr = sieve_sync(lab)
    assert code == 0, stderr
    assert all(not u["copied"] and not u["activated"] for u in report["users"])
    with sieve(lab, "primary", bob) as primary:
        primary.activate(None)
        primary.delete("spare")
    code, report, _ = sieve_sync(lab)
    bob_result = next(u for u in report["users"] if u["user"] == bob.address)
    assert (bob_result["activated"], bob_result["deleted"]) == (True, ["spare"])
    with sieve(lab, "standby", bob) as standby:
        assert standby.scripts().active is None


def test_an_unreachable_primary_fails_every_user_with_one_line(
    lab: Lab, users: tuple[LabUser, LabUser, LabUser]
) -> None:
    lab.part("primary").stop()
    code, report, stderr = sieve_sync(lab)
    assert code == 1
    assert "primary ManageSieve" in stderr and "is it up" in stderr
    assert report["failed"] == [u["user"] for u in report["users"]] != []
