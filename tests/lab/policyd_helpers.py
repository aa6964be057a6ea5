"""Helpers for the failover tests: wait for a state, talk to policyd, reset after an outage."""

from __future__ import annotations

import smtplib
import socket

from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT
from mailcontinuity.lab.scenario import restored
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.store.db import open_store
from mailcontinuity.store.state import State, current_state
from mailcontinuity.transitions import change_state


def lab_state(lab: Lab) -> State:
    store = open_store(lab.config)
    try:
        return current_state(store)
    finally:
        store.close()


def wait_for_state(lab: Lab, name: str, timeout: float) -> State:
    return eventually(lambda: (s := lab_state(lab)).name == name and s, timeout,
                      f"state {name}")


def ask_policyd(lab: Lab, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send ``payload`` to the lab's policyd, half-close, and return everything it answers."""
    assert lab.config.policyd.socket is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(lab.config.policyd.socket))
        chunks = []
        try:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            while chunk := client.recv(65536):
                chunks.append(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # policyd closed the connection (oversized input): an allowed answer
    return b"".join(chunks)


def rcpt_request(recipient: str) -> bytes:
    return (f"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=s@remote.test\n"
            f"recipient={recipient}\nclient_address=192.0.2.1\n\n").encode()


def back_to_normal(lab: Lab) -> None:
    """After a test outage: primary up, routing on the primary, state normal for the next test.

    As in production, failback ends the outage: the sync agent merges it and sets ``normal``.
    """
    lab.part("primary").start()
    lab.part("policyd").start()
    with restored(lab):  # closes the outage even if the merge does not finish
        store = open_store(lab.config)
        try:
            if current_state(store).name == "failover":
                change_state(lab.config, store, "failback", "test cleanup", "test")
        finally:
            store.close()
        wait_for_state(lab, "normal", timeout=30)


def refusal(lab: Lab, recipient: str, subject: str = "to an unknown user",
            sender: str = "partner@remote.test") -> tuple[int, bytes] | None:
    """The gateway's answer to ``recipient`` from the internet if it refuses it, else None
    (the policy's view of the state is a fraction of a second behind the store)."""
    message = make_message(sender, [recipient], subject)
    try:
        send_message(lab.gateway.smtp, message, sender, [recipient], source=INTERNET_CLIENT)
    except smtplib.SMTPRecipientsRefused as refused:
        return refused.recipients[recipient]
    return None
