"""Hook: mail the administrators about a continuity state transition.

Installed as ``mailcontinuity-hook-mail-admins``; link it into ``on-failover.d/`` and
``on-failback.d/`` (and ``on-normal.d/`` if you like). Settings, in ``hooks_dir/environment``:

- ``MAILCONTINUITY_ADMINS``: recipients, comma-separated (default ``postmaster@localhost``).
- ``MAILCONTINUITY_SMTP_RELAY``: ``host:port`` to submit through (default ``127.0.0.1:25``).
- ``MAILCONTINUITY_HOOK_SENDER``: the From address (default ``mailcontinuity@<this host>``).

During a failover the primary is down: send through the gateway's own Postfix (the default
relay), so that the message is queued and routed like any other mail, or to a relay outside
your own infrastructure.
"""

from __future__ import annotations

import os
import smtplib
import socket
import sys
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from mailcontinuity.config import parse_endpoint
from mailcontinuity.hooks.runner import Transition


def notification(transition: Transition, sender: str, admins: str, host: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = admins
    message["Subject"] = (f"[mailcontinuity] {host}: {transition.old_state} ->"
                          f" {transition.new_state}")
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid("mailcontinuity")
    message.set_content(
        f"Continuity state changed from {transition.old_state} to {transition.new_state}"
        f" at {transition.environment()['TIME']}.\n"
        f"Cause: {transition.cause}\n"
        f"By:    {transition.actor}\n\n"
        "Run 'mailcontinuity status' on the gateway for details.\n"
    )
    return message


def run(env: Mapping[str, str]) -> int:
    host = socket.getfqdn()
    admins = env.get("MAILCONTINUITY_ADMINS", "postmaster@localhost")
    relay_text = env.get("MAILCONTINUITY_SMTP_RELAY", "127.0.0.1:25")
    try:
        transition = Transition.from_environment(env)
        relay = parse_endpoint(relay_text)
    except ValueError as exc:
        print(f"mail-admins hook: {exc}", file=sys.stderr)
        return 2
    message = notification(transition, env.get("MAILCONTINUITY_HOOK_SENDER",
                                               f"mailcontinuity@{host}"), admins, host)
    recipients = [address.strip() for address in admins.split(",") if address.strip()]
    try:
        with smtplib.SMTP(relay.host, relay.port, timeout=20) as smtp:
            smtp.send_message(message, to_addrs=recipients)
    except (OSError, smtplib.SMTPException) as exc:
        print(f"could not mail {admins} through {relay}: {exc}", file=sys.stderr)
        return 1
    print(f"mailed {admins} through {relay}: {transition.old_state} -> {transition.new_state}")
    return 0


def main() -> None:
    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()
