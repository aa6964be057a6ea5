"""Aliases and unknown addresses in an outage (issue 19): no permanent bounce for an address the
primary might know, aliases expanded into their targets' standby mailboxes, postmaster@ always
reachable, and reply texts that do not name the standby."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.deploy.routing import transport_value
from mailcontinuity.lab import Lab
from mailcontinuity.lab.gateway import LAB_OUTAGE_POSTMASTER
from mailcontinuity.lab.mailbox import INTERNET_CLIENT, wait_for_message
from mailcontinuity.mail.postfix import run_postfix
from mailcontinuity.mail.smtp import make_message, send_message
from tests.lab.policyd_helpers import back_to_normal, eventually, lab_state, refusal

SENDER = "partner@remote.test"
# An address only the primary has (a shared mailbox): the standby's Dovecot does not know it.
PRIMARY_ONLY = "shared@example.test"
PRIMARY_ONLY_PASSWORD = "shared-mailbox-secret"


@pytest.fixture
def outage(lab: Lab) -> Iterator[Lab]:
    """A lab in state normal with a mailbox on the primary alone, put back afterwards."""
    if lab.primary_kind != "dovecot":
        pytest.skip("adds a mailbox to the primary Dovecot's passwd-file")
    back_to_normal(lab)
    users: Path = lab.primary.root / "users"
    original = users.read_text()
    users.write_text(original + f"{PRIMARY_ONLY}:{{PLAIN}}{PRIMARY_ONLY_PASSWORD}::::::\n")
    try:
        yield lab
    finally:
        users.write_text(original)
        back_to_normal(lab)


def cli(lab: Lab, *args: str) -> None:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), *args])
    assert result.exit_code == 0, result.output


def gateway_log(lab: Lab, start: int) -> str:
    return lab.gateway.log_file.read_text(errors="replace")[start:]


def routed_to_standby_with_aliases(lab: Lab) -> bool:
    table = lab.config.gateway.outage_alias_map.read_text()
    return (transport_value(lab.config, "standby") in lab.config.gateway.transport_map.read_text()
            and "team@example.test" in table and f"postmaster@example.test\t"
            f"{LAB_OUTAGE_POSTMASTER}" in table)


def test_aliases_postmaster_and_unknown_addresses_in_an_outage(outage: Lab) -> None:
    lab = outage
    alice, bob = lab.users[0], lab.users[1]
    carol = next(user for user in lab.users if user.address == LAB_OUTAGE_POSTMASTER)
    standby_imap, primary_imap = lab.endpoint("standby", "imap"), lab.endpoint("primary", "imap")
    log_start = lab.gateway.log_file.stat().st_size

    # Mail queued for the primary when it dies, to an address only the primary has.
    lab.part("primary").stop()
    try:
        queued = make_message(SENDER, [PRIMARY_ONLY], "queued for the primary's shared mailbox")
        # Submitted locally (no policy check): the monitor may already have seen the primary
        # go; either way the message is in the gateway's queue when the route switches.
        subprocess.run(["sendmail", "-C", str(lab.gateway.config_dir), "-i", "-f", SENDER,
                        PRIMARY_ONLY], input=queued.as_bytes(), check=True, timeout=30)
        cli(lab, "failover", "--reason", "aliases test")
        eventually(lambda: routed_to_standby_with_aliases(lab), 10,
                   "routed to the standby, outage aliases written")
        # Flushed to the standby, which does not know the address: deferred, never bounced.
        # Postfix logs soft_bounce's deferral as SOFTBOUNCE.
        eventually(lambda: re.search(rf"to=<{PRIMARY_ONLY}>.*status=SOFTBOUNCE.*550 5\.1\.1",
                                     gateway_log(lab, log_start)), 30,
                   "the standby's 550 for the queued message kept as a deferral")

        # Mail arriving during the outage.
        team = make_message(SENDER, ["team@example.test"], "to the team alias in an outage")
        send_message(lab.gateway.smtp, team, SENDER, ["team@example.test"],
                     source=INTERNET_CLIENT)
        postmaster = make_message(SENDER, ["postmaster@example.test"], "to postmaster")
        send_message(lab.gateway.smtp, postmaster, SENDER, ["postmaster@example.test"],
                     source=INTERNET_CLIENT)
        abuse = make_message(SENDER, ["Abuse@Example.test"], "to abuse, any case")
        send_message(lab.gateway.smtp, abuse, SENDER, ["Abuse@Example.test"],
                     source=INTERNET_CLIENT)
        code, text = eventually(lambda: refusal(lab, PRIMARY_ONLY, "new mail to the shared box"),
                                5, "the address the standby lacks deferred at RCPT")
        assert 400 <= code < 500 and b"4.2.0" in text, (code, text)
        assert b"standby" not in text.lower()

        for user, message in ((alice, team), (bob, team), (carol, postmaster), (carol, abuse)):
            assert wait_for_message(standby_imap, user.login, user.password,
                                    message["Message-ID"], timeout=15), \
                (user.address, message["Subject"])
        assert not re.search(r"status=bounced|sender non-delivery", gateway_log(lab, log_start))
    finally:
        lab.part("primary").start()

    cli(lab, "failback", "--yes")
    assert lab_state(lab).name == "normal"
    assert "team@example.test" not in lab.config.gateway.outage_alias_map.read_text()
    # The queued message reaches the primary after failback; the deferred sender retries.
    assert wait_for_message(primary_imap, PRIMARY_ONLY, PRIMARY_ONLY_PASSWORD,
                            queued["Message-ID"], timeout=30)
    retried = make_message(SENDER, [PRIMARY_ONLY], "the sender's retry after failback")
    send_message(lab.gateway.smtp, retried, SENDER, [PRIMARY_ONLY], source=INTERNET_CLIENT)
    assert wait_for_message(primary_imap, PRIMARY_ONLY, PRIMARY_ONLY_PASSWORD,
                            retried["Message-ID"], timeout=30)
    assert not re.search(r"status=bounced|sender non-delivery", gateway_log(lab, log_start))


def test_check_config_names_the_standby_transport_and_the_alias_table(lab: Lab) -> None:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "check-config",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["postfix_standby_delivery"].endswith("lmtp -o soft_bounce=yes")
    assert report["postfix_main"]["virtual_alias_maps"] == \
        f"hash:{lab.config.gateway.outage_alias_map}"
    # What Postfix itself runs in the lab is what check-config prints.
    master = run_postfix(lab.gateway.config_dir, "postconf", "-M",
                         "mailcontinuity-standby/unix")
    assert master.split() == report["postfix_standby_delivery"].split()
