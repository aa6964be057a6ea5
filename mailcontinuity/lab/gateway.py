"""A private Postfix instance under a directory: the lab's gateway (MX).

Started with ``postfix -c DIR start`` as root; its queue, data and log live under the lab
directory and it listens only on its own loopback port, so the system's Postfix is untouched.
Its main.cf is the lab's plumbing plus exactly the settings ``check-config`` prints.
"""

from __future__ import annotations

import json
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcontinuity.config import Config, Endpoint
from mailcontinuity.deploy.aliases import write_outage_alias_map
from mailcontinuity.deploy.routing import (
    standby_delivery_service,
    write_tls_policy_map,
    write_transport_map,
)
from mailcontinuity.deploy.senders import write_sender_login_map
from mailcontinuity.deploy.settings import (
    postfix_main_settings,
    postfix_standby_relay_service,
    postfix_submission_service,
)
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.process import log_tail, read_pid, stop_process_tree, wait_for
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.mail.postfix import PostfixError, run_postfix

# (service, type, private, unpriv, chroot, wakeup, maxproc, command): chroot off everywhere,
# because a chroot would need copies of /etc files inside the lab directory.
_MASTER_SERVICES = [
    ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
    ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
    ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
    ("tlsmgr", "unix", "-", "-", "n", "1000?", "1", "tlsmgr"),
    ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
    ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
    ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
    ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
    ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
    ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
    ("error", "unix", "-", "-", "n", "-", "-", "error"),
    ("retry", "unix", "-", "-", "n", "-", "-", "error"),
    ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
    ("lmtp", "unix", "-", "-", "n", "-", "-", "lmtp"),
    ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
    ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
    ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
]


# An alias alice may send as (tests/lab/test_sender_identity.py).
LAB_SENDER_ALIASES = {"sales@example.test": "alice@example.test"}
# The primary's aliases as the gateway expands them during an outage; postmaster@ and abuse@
# reach the lab's outage_postmaster (tests/lab/test_aliases_outage.py).
LAB_OUTAGE_ALIASES = {"team@example.test": ("alice@example.test", "bob@example.test")}
LAB_OUTAGE_POSTMASTER = "carol@example.test"


@dataclass
class PostfixGateway:
    """The lab's Postfix gateway; ``config`` is the lab's mailcontinuity configuration."""

    root: Path
    smtp: Endpoint
    config: Config
    submission: Endpoint | None
    """A submission listener with SMTP AUTH (users authenticate as on their mailbox, and the
    milter keeps a Sent copy of what they send). Only there: Postfix's smtpd dies when its
    SASL server is unreachable, and port 25 must keep taking mail when the standby is down."""
    sasl_socket: Path
    certificates: LabCertificates
    """The certificate both listeners offer with STARTTLS."""
    source_address: str | None = None
    """The loopback address its deliveries (SMTP and LMTP) come from: a multi-host lab's
    gateway has one of its own, so that ``lab isolate`` can cut it off (``lab.netcut``)."""

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "maillog"

    @property
    def listeners(self) -> list[Endpoint]:
        relay = self.config.gateway.standby_relay
        return [self.smtp] + [endpoint for endpoint in (self.submission, relay)
                              if endpoint is not None]

    def write_config(self) -> None:
        postfix_user = pwd.getpwnam("postfix")
        for sub in ("etc", "queue", "data", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root / "data", postfix_user.pw_uid, postfix_user.pw_gid)
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.root / "data"),
            "maillog_file_prefixes": str(self.root / "log"),
            "maillog_file": str(self.log_file),
            "syslog_name": "mailcontinuity-lab-gateway",
            "myhostname": "gateway.lab.test",
            "mydomain": "lab.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            # Only the lab's own servers (Dovecot submission, vacation) are "ours"; tests play
            # the internet from other loopback addresses (lab.mailbox.INTERNET_CLIENT).
            "mynetworks": "127.0.0.1/32",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtputf8_enable": "yes",
            "message_size_limit": str(64 * 1024 * 1024),
            # Lab mail that cannot be delivered stays queued long enough to be inspected.
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "30s",
            "queue_run_delay": "5s",
            "smtpd_tls_chain_files": f"{self.certificates.key_file},"
            f" {self.certificates.cert_file}",
            # One log line per TLS session, so tests can see deliveries were verified.
            "smtp_tls_loglevel": "1",
            "lmtp_tls_loglevel": "1",
            **postfix_main_settings(self.config),
        }
        if self.source_address is not None:
            settings |= {"smtp_bind_address": self.source_address,
                         "lmtp_bind_address": self.source_address}
        (self.config_dir / "main.cf").write_text(
            "# Lab gateway, written by mailcontinuity lab; do not edit.\n"
            + "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        services = [f"{self.smtp} inet n - n - - smtpd"]
        submission = postfix_submission_service(self.config, str(self.sasl_socket))
        if submission is not None:
            services.append(submission)
        relay = postfix_standby_relay_service(self.config, str(self.sasl_socket))
        if relay is not None:
            services.append(relay)
        services += ["  ".join(service) for service in _MASTER_SERVICES]
        services.append(standby_delivery_service())
        (self.config_dir / "master.cf").write_text("\n".join(services) + "\n")
        outage_aliases = self.config.gateway.outage_aliases
        if outage_aliases is not None and not outage_aliases.exists():
            outage_aliases.write_text(
                "# Lab copy of the primary's virtual aliases (tests/lab/test_aliases_outage.py)\n"
                + "".join(f"{alias}\t{', '.join(targets)}\n"
                          for alias, targets in LAB_OUTAGE_ALIASES.items()))
        write_outage_alias_map(self.config, outage=False)
        write_transport_map(self.config, "primary")
        write_tls_policy_map(self.config)
        write_sender_login_map(self.config)
        aliases = self.config.gateway.sender_aliases
        if aliases is not None and not aliases.exists():
            aliases.write_text("# Lab aliases: address, then the logins that may send as it\n"
                               + "".join(f"{alias} {owner}\n"
                                         for alias, owner in LAB_SENDER_ALIASES.items()))

    def pid(self) -> int | None:
        return read_pid(self.queue_dir / "pid" / "master.pid")

    def start(self) -> None:
        if self.pid() is not None:
            return
        if shutil.which("postfix") is None:
            raise LabError("postfix not found: apt-get install postfix")
        try:
            run_postfix(self.config_dir, "postfix", "start")
        except PostfixError as exc:
            raise LabError(f"gateway postfix did not start: {exc}: {log_tail(self.log_file)}"
                           f" (log: {self.log_file})") from None
        wait_for(self.listeners, up=True, what="gateway postfix")

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        stop_process_tree(pid)
        wait_for(self.listeners, up=False, what="gateway postfix")

    def reload(self) -> None:
        run_postfix(self.config_dir, "postfix", "reload")

    def flush(self) -> None:
        """Retry deferred mail now instead of at the next queue run."""
        run_postfix(self.config_dir, "postqueue", "-f")

    def queued(self) -> list[dict[str, Any]]:
        """The messages in the queue, as ``postqueue -j`` describes each (sender, recipients,
        queue name...)."""
        text = run_postfix(self.config_dir, "postqueue", "-j")
        return [json.loads(line) for line in text.splitlines() if line.strip()]
