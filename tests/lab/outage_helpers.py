"""Small steps the outage tests share: mail through the gateway, waiting for it, a forced
outage. The scripted outage itself is the lab's (``mailcontinuity.lab.scenario``)."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage

from click.testing import CliRunner
from imapclient import IMAPClient

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.dovecot import LabUser
from mailcontinuity.lab.mailbox import locate, wait_for_message
from mailcontinuity.lab.scenario import OutageScenario, restored
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.smtp import make_message, send_message

OUTSIDER = "sender@remote.test"


def gateway_mail(lab: Lab, recipients: list[LabUser], subject: str,
                 body: str = "") -> EmailMessage:
    message = make_message(OUTSIDER, [u.address for u in recipients], subject, body)
    send_message(lab.gateway.smtp, message, OUTSIDER, [u.address for u in recipients])
    return message


def deliver_stored_copy(lab: Lab, source: str, target: str, message_id: str,
                        recipients: list[LabUser]) -> None:
    """Deliver what ``source`` stored for each recipient into ``target``'s LMTP: the gateway's
    own copy of the message (milter id header included), as a queued delivery would be."""
    endpoint = lab.endpoint(target, "lmtp")
    for user in recipients:
        with imap_login(lab.endpoint(source, "imap"), user.login, user.password) as client:
            found = locate(client, message_id)
            assert found, f"{message_id} is not on the {source}"
            folder, uids = next(iter(found.items()))
            client.select_folder(folder, readonly=True)
            raw = client.fetch(uids[:1], ["BODY.PEEK[]"])[uids[0]][b"BODY[]"]
        with smtplib.LMTP(endpoint.host, endpoint.port, timeout=30) as lmtp:
            lmtp.sendmail(OUTSIDER, [user.address], raw)


def wait_all(lab: Lab, role: str, users: list[LabUser], message_id: str,
             folder: str = "INBOX") -> None:
    for user in users:
        found = wait_for_message(lab.endpoint(role, "imap"), user.login, user.password,
                                 message_id, folder=folder)
        assert found is not None, f"{message_id} never reached {user.address} on {role}"


def uid_of(client: IMAPClient, message_id: str) -> int:
    uids = client.search(["HEADER", "Message-ID", message_id])
    assert len(uids) == 1, f"{message_id}: {uids}"
    return int(uids[0])


def begin_outage(lab: Lab) -> None:
    """Force failover, then wait for the sync agent's baseline of the outage."""
    OutageScenario(lab).force_failover()


@contextmanager
def forced_outage(lab: Lab) -> Iterator[None]:
    """Failover forced for the body of a test; afterwards ``normal`` again, outage closed."""
    with restored(lab):
        begin_outage(lab)
        yield


def on_primary_once(lab: Lab, user: LabUser, message_id: str) -> list[str]:
    """The folders ``message_id`` is in on ``user``'s primary mailbox, one entry per copy."""
    with imap_login(lab.endpoint("primary", "imap"), user.login, user.password) as client:
        return [folder for folder, uids in locate(client, message_id).items() for _ in uids]


def run_cli(lab: Lab, *args: str) -> tuple[int, dict]:
    """Run a ``mailcontinuity`` command on the lab's config: its exit status and its JSON
    output ({} when it printed none); a bug's exception is raised, not hidden in the result."""
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}
