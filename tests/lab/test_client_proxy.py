"""Clients that need no reconfiguration: the client proxy follows the continuity state.

One IMAP session is held open through ``imap_proxy`` and a second client connects afresh for
each check; neither changes any setting. The primary is killed, the monitor fails over, both
work on the standby; the primary comes back, the monitor fails back, both work on the primary.
"""

from __future__ import annotations

import json
import smtplib
import ssl
from collections.abc import Iterator

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import wait_for_message
from mailcontinuity.lab.proxy import ProxyDovecot, ReconnectingClient, proxy_endpoint
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.smtp import make_message, send_message
from tests.lab.policyd_helpers import back_to_normal, wait_for_state

SENDER = "partner@remote.test"
APPENDED = b"From: alice@example.test\r\nSubject: appended through the proxy\r\n" \
    b"Message-ID: <appended-via-proxy@example.test>\r\n\r\nsaved while on the standby\r\n"


@pytest.fixture
def normal_lab(lab: Lab) -> Iterator[Lab]:
    back_to_normal(lab)
    try:
        yield lab
    finally:
        back_to_normal(lab)


def description(lab: Lab) -> dict:
    return json.loads((lab.dir / "lab.json").read_text())


def found(client: IMAPClient, message_id: str) -> list[int]:
    client.noop()
    return list(client.search(["HEADER", "Message-ID", message_id]))


def proxied_to(proxy: ProxyDovecot, client: ReconnectingClient, login: str, port: int) -> bool:
    """``client``'s session (``login``'s) goes to ``port``. (Not "every": on a loaded machine a
    session to the side just left can stay listed for more than 10 s after its client is gone;
    that the held client works on the new side is checked by what it sees there.) The client
    acts first, as a user's would: the lab's two stores share a host name, so the transition's
    kick of the side left also drops a session that reached the new side just before it
    (docs/clients.md), and such a client is on no side until its next action."""
    return bool(eventually(
        lambda: client.attempt(lambda c: c.noop()) is not None
        and port in proxy.destinations().get(login, set()), 10,
        f"{login}'s sessions proxied to port {port}"))


def test_clients_follow_failover_and_failback_with_no_setting_changed(normal_lab: Lab) -> None:
    lab = normal_lab
    assert lab.proxy is not None, "the lab starts the client proxy (part 'proxy')"
    alice = lab.users[0]
    endpoint = proxy_endpoint(description(lab))
    ca_file = LabCertificates(lab.dir / "tls").ca_file
    primary_port = lab.endpoint("primary", "imap").port
    standby_port = lab.endpoint("standby", "imap").port
    held = ReconnectingClient(endpoint, alice.login, alice.password, ca_file)
    fresh = ReconnectingClient(endpoint, alice.login, alice.password, ca_file)

    def fresh_sees(message_id: str) -> bool:
        try:
            return bool(fresh.attempt(lambda c: found(c, message_id)))
        finally:
            fresh.close()

    try:
        before = make_message(SENDER, [alice.address], "before the outage")
        send_message(lab.gateway.smtp, before, SENDER, [alice.address])
        assert wait_for_message(lab.endpoint("primary", "imap"), alice.login, alice.password,
                                before["Message-ID"])
        assert held.run(lambda c: found(c, before["Message-ID"]))
        assert proxied_to(lab.proxy, held, alice.login, primary_port)
        assert fresh_sees(before["Message-ID"])

        lab.part("primary").stop()
        try:
            wait_for_state(lab, "failover", timeout=20)
            during = make_message(SENDER, [alice.address], "during the outage")
            send_message(lab.gateway.smtp, during, SENDER, [alice.address])
            # The held session lost the primary; its next actions reconnect to the standby.
            uids = eventually(lambda: held.attempt(lambda c: found(c, during["Message-ID"])),
                              30, "the held client sees the outage's mail on the standby")
            assert held.reconnects >= 1
            assert proxied_to(lab.proxy, held, alice.login, standby_port)
            held.run(lambda c: c.add_flags(uids, [b"\\Flagged"]))
            held.run(lambda c: c.append("INBOX", APPENDED))
            assert held.run(lambda c: found(c, "<appended-via-proxy@example.test>"))
            assert fresh_sees(during["Message-ID"])
            with imap_login(lab.endpoint("standby", "imap"), alice.login, alice.password,
                            lab.tls("standby")) as standby:
                standby.select_folder("INBOX")
                assert found(standby, "<appended-via-proxy@example.test>")
                # The UIDs the held client flagged (mailbox and UIDs are the standby's own).
                flagged = standby.get_flags(uids)
                assert flagged and all(b"\\Flagged" in flags for flags in flagged.values()), (
                    flagged, standby.get_flags(found(standby, during["Message-ID"])))
            reconnects_on_standby = held.reconnects
        finally:
            lab.part("primary").start()

        # The monitor fails back after its hold-down: the proxy kicks the sessions still on the
        # (running) standby, and the held client's next action lands on the primary.
        wait_for_state(lab, "normal", timeout=lab.config.health.hold_down_seconds + 40)
        eventually(lambda: held.attempt(lambda c: found(c, "<appended-via-proxy@example.test>")),
                   30, "the held client sees, on the primary, what it appended on the standby")
        assert held.reconnects > reconnects_on_standby, "kicked off the standby at failback"
        assert proxied_to(lab.proxy, held, alice.login, primary_port)

        # Works on the primary: the outage's mail is there with the flag set on the standby,
        # and flags set now stick.
        on_primary = held.run(lambda c: found(c, during["Message-ID"]))
        assert on_primary
        flagged = held.run(lambda c: c.get_flags(on_primary))
        assert all(b"\\Flagged" in flags for flags in flagged.values()), flagged
        held.run(lambda c: c.add_flags(on_primary, [b"\\Seen"]))
        with imap_login(lab.endpoint("primary", "imap"), alice.login, alice.password,
                        lab.tls("primary")) as primary:
            primary.select_folder("INBOX")
            seen = primary.get_flags(on_primary)
            assert seen and all(b"\\Seen" in flags for flags in seen.values())
        assert fresh_sees(during["Message-ID"])
        assert held.endpoint == fresh.endpoint == endpoint  # one name throughout
    finally:
        held.close()
        fresh.close()


def test_wrong_password_is_refused_by_the_store_through_the_proxy(lab: Lab) -> None:
    assert lab.proxy is not None
    alice = lab.users[0]
    endpoint = proxy_endpoint(description(lab))
    context = ssl.create_default_context(cafile=str(LabCertificates(lab.dir / "tls").ca_file))
    client = IMAPClient(endpoint.host, endpoint.port, ssl=False, timeout=30)
    try:
        client.starttls(context)
        with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
            client.login(alice.login, alice.password + "x")
    finally:
        client.shutdown()
    log = lab.proxy.log_file
    eventually(lambda: "proxy dest auth failed" in log.read_text(), 10,
               "the proxy logs that the store refused the password")


def test_submission_through_the_proxy_reaches_the_gateway(lab: Lab) -> None:
    alice, bob = lab.users[0], lab.users[1]
    endpoint = proxy_endpoint(description(lab), "submission_proxy")
    context = ssl.create_default_context(cafile=str(LabCertificates(lab.dir / "tls").ca_file))
    message = make_message(alice.address, [bob.address], "sent through the submission proxy")
    with smtplib.SMTP(endpoint.host, endpoint.port, timeout=30) as client:
        client.starttls(context=context)
        client.login(alice.login, alice.password)
        client.send_message(message)
    assert wait_for_message(lab.endpoint("primary", "imap"), bob.login, bob.password,
                            message["Message-ID"])
