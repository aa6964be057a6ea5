"""The standby is no open relay and no password-guessing target; the gateway relays only what
it should.

Clients come from other loopback addresses than the servers' 127.0.0.1: Dovecot counts a
connection whose local and remote addresses are equal as secured (no TLS needed), so only these
see what a client on the network sees. Assertions are on the servers' replies, not on swaks' exit
status alone.
"""

from __future__ import annotations

import imaplib
import smtplib
import subprocess
import uuid
from base64 import b64encode
from email.parser import BytesParser
from email.policy import default

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.config import Endpoint
from mailcontinuity.deploy.settings import (
    AUTH_FAILURE_DELAY_SECONDS,
    dovecot_standby_hardening,
    postfix_submission_options,
    postfix_tls_settings,
)
from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.lab.mailbox import INTERNET_CLIENT, IMAPFrom, timed_login, wait_for_message
from mailcontinuity.mail.postfix import run_postfix
from mailcontinuity.mail.tools import run_command

OUTSIDE = "someone@elsewhere.test"
# Loopback addresses of their own, so that the anvil penalty they collect (kept for an hour per
# client address) slows no other test: one for the guesser, one for the user's next real login.
GUESSER = "127.0.0.5"
LEGITIMATE = "127.0.0.3"


def swaks(lab: Lab, server: Endpoint, *args: str) -> list[str]:
    """The server's replies (``250 2.1.0 Ok``...) in one swaks session from the internet,
    TLS (when asked for with ``--tls``) verified against the lab's CA."""
    result = subprocess.run(
        ["swaks", "--server", server.host, "--port", str(server.port),
         "--local-interface", INTERNET_CLIENT, "--timeout", "20",
         "--tls-verify", "--tls-ca-path", str(lab.standby.certificates.ca_file), *args],
        capture_output=True, text=True, timeout=60, check=False)
    # Server lines are "<-  " in clear, "<~  " inside TLS, "<** "/"<~* " for an error reply.
    replies = [line[4:] for line in result.stdout.splitlines() if line.startswith("<")]
    assert replies, f"swaks got no reply from {server}: {result.stdout}{result.stderr}"
    return replies


def offers_auth(replies: list[str]) -> bool:
    return any(reply[4:].startswith("AUTH") for reply in replies if reply.startswith("250"))


def sending(sender: str, recipient: str, *args: str) -> list[str]:
    return ["--from", sender, "--to", recipient, *args]


def credentials(user: LabUser) -> list[str]:
    return ["--auth", "PLAIN", "--auth-user", user.login, "--auth-password", user.password]


def auth_without_starttls(server: Endpoint, user: LabUser) -> tuple[int, bytes]:
    """AUTH PLAIN sent anyway on a connection that did not start TLS (a careless client)."""
    with smtplib.SMTP(server.host, server.port, timeout=20,
                      source_address=(INTERNET_CLIENT, 0)) as smtp:
        smtp.ehlo()
        token = b64encode(f"\0{user.login}\0{user.password}".encode()).decode()
        return smtp.docmd("AUTH", f"PLAIN {token}")


def test_the_lab_runs_the_hardening_check_config_prints(lab: Lab) -> None:
    printed = CliRunner().invoke(main, ["--config", str(lab.config_file), "check-config"])
    assert printed.exit_code == 0, printed.output
    for key, value in dovecot_standby_hardening(lab.config).items():
        assert f"\n{key} = {value}\n" in printed.stdout
        running = run_command(["doveconf", "-c", str(lab.standby.config_file), "-h", key])
        assert running.strip() == value, key
    for key, value in postfix_tls_settings().items():
        assert f"postconf -e '{key} = {value}'" in printed.stdout
        assert run_postfix(lab.gateway.config_dir, "postconf", "-h", key).strip() == value
    master = (lab.gateway.config_dir / "master.cf").read_text()
    for key, value in postfix_submission_options(lab.config).items():
        assert f" -o {key}={value}" in printed.stdout and f" -o {key}={value}" in master
    # The primary plays the customer's existing system and stays as permissive as it was.
    assert run_command(["doveconf", "-c", str(lab.primary.config_file), "-h", "ssl"]).strip() \
        == "yes"


def test_standby_submission_relays_only_for_authenticated_users_over_tls(lab: Lab) -> None:
    alice, bob = lab.users[0], lab.users[1]
    submission = lab.endpoint("standby", "submission")

    in_clear = swaks(lab, submission, *sending(alice.address, OUTSIDE))
    assert not offers_auth(in_clear)
    assert "530 5.7.0 TLS required." in in_clear
    assert not any(reply.startswith("250 2.1.5") for reply in in_clear)

    assert auth_without_starttls(submission, alice) == (530, b"5.7.0 TLS required.")

    unauthenticated = swaks(lab, submission, *sending(alice.address, OUTSIDE), "--tls")
    assert offers_auth(unauthenticated)
    assert "530 5.7.0 Authentication required." in unauthenticated

    message_id = f"<{uuid.uuid4().hex}@lab.test>"
    sent = swaks(lab, submission, *sending(alice.address, bob.address), "--tls",
                 *credentials(alice), "--header", f"Message-Id: {message_id}")
    assert "235 2.7.0 Logged in." in sent
    assert sent[-2].startswith("250 2.0.0"), sent
    delivered = wait_for_message(lab.endpoint("primary", "imap"), bob.login, bob.password,
                                 message_id)
    assert delivered is not None
    # The standby relayed it to the gateway over TLS (gateway.tls): Postfix says ESMTPS.
    relayed = BytesParser(policy=default).parsebytes(delivered).get_all("Received")
    assert any("gateway.lab.test" in hop and "with ESMTPS" in hop for hop in relayed), relayed


def test_gateway_port_25_refuses_relaying_and_takes_mail_for_its_domains(lab: Lab) -> None:
    carol = lab.users[2]
    relay = swaks(lab, lab.gateway.smtp, *sending("someone@remote.test", OUTSIDE), "--tls")
    assert not offers_auth(relay)
    assert any(reply.startswith("554 5.7.1") and "Relay access denied" in reply
               for reply in relay), relay

    message_id = f"<{uuid.uuid4().hex}@lab.test>"
    inbound = swaks(lab, lab.gateway.smtp, *sending("someone@remote.test", carol.address),
                    "--tls", "--header", f"Message-Id: {message_id}")
    assert "220 2.0.0 Ready to start TLS" in inbound
    assert inbound[-2].startswith("250 2.0.0 Ok: queued"), inbound
    assert wait_for_message(lab.endpoint("primary", "imap"), carol.login, carol.password,
                            message_id) is not None


def test_gateway_submission_wants_tls_before_auth(lab: Lab) -> None:
    alice, bob = lab.users[0], lab.users[1]
    submission = lab.config.gateway.submission
    assert submission is not None

    in_clear = swaks(lab, submission, *sending(alice.address, OUTSIDE))
    assert not offers_auth(in_clear)
    assert any(reply.startswith("530 5.7.0 Must issue a STARTTLS") for reply in in_clear)
    assert auth_without_starttls(submission, alice)[0] == 530

    unauthenticated = swaks(lab, submission, *sending(alice.address, OUTSIDE), "--tls")
    assert offers_auth(unauthenticated)
    # Refused as a sender not logged in (553, the sender rule) or as a relay attempt (554).
    assert any(reply.startswith(("553 5.7.1", "554 5.7.1")) for reply in unauthenticated), \
        unauthenticated

    sent = swaks(lab, submission, *sending(alice.address, bob.address), "--tls",
                 *credentials(alice))
    assert any(reply.startswith("235 2.7.0") for reply in sent), sent
    assert sent[-2].startswith("250 2.0.0 Ok: queued"), sent


def test_standby_imap_refuses_logins_before_tls(lab: Lab) -> None:
    alice = lab.users[0]
    client = IMAPFrom(lab.endpoint("standby", "imap"), INTERNET_CLIENT)
    try:
        assert "LOGINDISABLED" in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            client.login(alice.login, alice.password)
    finally:
        client.logout()


def test_repeated_bad_logins_are_slowed_and_the_user_is_not_locked_out(lab: Lab) -> None:
    bob = lab.users[1]
    # Three different wrong passwords: Dovecot does not grow the penalty for a password it has
    # just seen (a client with a stale password), only for new guesses. About 2 + 6 + 10 s.
    failures = [timed_login(lab.endpoint("standby", "imap"), lab.tls("standby"), GUESSER,
                            bob.login, f"guess-{n}-{uuid.uuid4().hex[:6]}")
                for n in range(3)]
    for seconds, answer in failures:
        assert "AUTHENTICATIONFAILED" in answer
        # Dovecot checks the delay on whole-second ticks, so a failure may come a bit early.
        assert seconds >= AUTH_FAILURE_DELAY_SECONDS / 2, failures
    # The anvil penalty adds a growing wait before each further attempt from the same address.
    assert failures[1][0] >= failures[0][0] + AUTH_FAILURE_DELAY_SECONDS, failures
    assert failures[2][0] >= failures[1][0] + AUTH_FAILURE_DELAY_SECONDS, failures

    seconds, answer = timed_login(lab.endpoint("standby", "imap"), lab.tls("standby"), LEGITIMATE,
                                  bob.login, bob.password)
    assert answer == "Logged in"
    # The penalty belongs to the guesser's address: the user logs in without waiting.
    assert seconds < AUTH_FAILURE_DELAY_SECONDS
