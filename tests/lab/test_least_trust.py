"""Issue 20: least trust on the wire, as an unprivileged local user sees it."""

from __future__ import annotations

import subprocess
import sys
import uuid

from mailcontinuity.lab import Lab
from mailcontinuity.lab.mailbox import wait_for_message
from mailcontinuity.mail.headers import JOURNAL_HEADER

LMTP_SEND = r"""
import smtplib, sys
host, port, recipient, message = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with smtplib.LMTP(host, port) as lmtp:
    print(lmtp.sendmail("someone@remote.test", [recipient], message.encode()))
"""


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           sys.executable, *argv], capture_output=True, text=True, timeout=60,
                          check=False)


def test_a_forged_journal_mark_on_the_normal_lmtp_is_stripped(lab: Lab) -> None:
    alice = lab.users[0]
    lmtp = lab.endpoint("standby", "lmtp")
    message_id = f"<{uuid.uuid4().hex}@remote.test>"
    message = (f"{JOURNAL_HEADER}: yes\r\nFrom: someone@remote.test\r\nTo: {alice.address}\r\n"
               f"Subject: forged\r\nMessage-ID: {message_id}\r\n\r\nbody\r\n")
    sent = as_nobody("-c", LMTP_SEND, lmtp.host, str(lmtp.port), alice.address, message)
    assert sent.returncode == 0 and sent.stdout.strip() == "{}", sent
    stored = wait_for_message(lab.endpoint("standby", "imap"), alice.login, alice.password,
                              message_id)
    assert stored is not None
    assert JOURNAL_HEADER.lower().encode() not in stored.lower(), stored[:400]


RELAY = r"""
import smtplib, sys
host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with smtplib.SMTP(host, port, source_address=(source, 0), timeout=20) as smtp:
    smtp.ehlo()
    if len(sys.argv) > 4:
        print("xclient", smtp.docmd("XCLIENT", "LOGIN=alice@example.test")[0])
        smtp.ehlo()
    smtp.mail("alice@example.test")
    print("rcpt", smtp.rcpt("someone@elsewhere.test")[0])
"""


def test_an_unprivileged_user_elsewhere_cannot_relay(lab: Lab) -> None:
    """From another address than the standby's: port 25 relays nothing outside the protected
    domains, and the standby relay listener refuses XCLIENT (no borrowed login)."""
    smtp = lab.gateway.smtp
    out = as_nobody("-c", RELAY, smtp.host, str(smtp.port), "127.0.0.2")
    assert "rcpt 554" in out.stdout, out
    relay = lab.config.gateway.standby_relay
    assert relay is not None
    out = as_nobody("-c", RELAY, relay.host, str(relay.port), "127.0.0.2", "xclient")
    assert "xclient 550" in out.stdout and "rcpt 5" in out.stdout, out  # 530: TLS first


def test_the_gateway_trusts_only_the_standbys_address(lab: Lab) -> None:
    from mailcontinuity.mail.postfix import run_postfix
    mynetworks = run_postfix(lab.gateway.config_dir, "postconf", "-h", "mynetworks").strip()
    assert mynetworks == f"{lab.config.standby.lmtp.host}/32"
