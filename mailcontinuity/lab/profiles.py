"""``lab up --primary-profile exchange|gmail``: the lab's Dovecot primary dressed as a hosted
service, so that failback meets that service's IMAP as it is published.

What a profile changes: the capabilities the primary announces (``imap_capability``: no
MULTIAPPEND, SAVEDATE, CONDSTORE/QRESYNC; Exchange without SPECIAL-USE, Gmail with LITERAL- and
APPENDLIMIT) and the folder layout (Exchange's ``Sent Items``, ``Deleted Items``, ``Junk Email``
without special-use attributes; Gmail's ``[Gmail]/...`` folders under a ``\\Noselect``
``[Gmail]``). Clients that honour capabilities (ours does) do not use what is not announced.

Gmail's ``[Gmail]/All Mail`` (``\\All``) holds every message delivered to the mailbox again,
beside its folder: a global sieve script files a copy there at delivery (Dovecot 2.3 has no
virtual folder that can live inside the personal namespace's ``[Gmail]/``). Messages APPENDed
(failback's, the tests') are not copied there; Gmail would also show them.

Logins: like the service, the primary has no master user. mailcontinuity logs in by XOAUTH2
(or OAUTHBEARER on ManageSieve) with tokens from the lab's token service (lab part ``oauth2``,
lab/oauth2.py), which Dovecot's oauth2 passdb asks to validate (RFC 7662 introspection):
Exchange's app-only token (client-credentials grant) opens every mailbox of the domain; a Gmail
token (the service account's JWT-bearer grant) opens its subject's mailbox only. Lab users log
in as before, with LOGIN and their lab.json password (the users' passwd-file passdb, first).

Exchange reports an estimate as RFC822.SIZE: the exchange profile's primary is reached by
mailcontinuity (``primary.imap``) through ``lab.imapsize``, which rewrites every RFC822.SIZE to
such an estimate; lab.json's ``primary.imap`` stays Dovecot's own listener (exact sizes), where
tests read the primary as the users.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from mailcontinuity.config import Endpoint
from mailcontinuity.lab.dovecot import DovecotInstance
from mailcontinuity.lab.oauth2 import dovecot_oauth2_passdb
from mailcontinuity.lab.process import read_pid, spawn, stop_pid_file, wait_for

# Announced after login (Dovecot announces the pre-login set itself, with STARTTLS and AUTH=).
CAPABILITIES = {
    "exchange": "IMAP4 IMAP4rev1 SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE"
                " LITERAL+",
    "gmail": "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS"
             " COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED"
             " LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584",
}
GMAIL_ALL_MAIL = "[Gmail]/All Mail"
# (folder, special use or "") every mailbox gets, as the service names them.
FOLDERS = {
    "exchange": [("Drafts", ""), ("Sent Items", ""), ("Deleted Items", ""),
                 ("Junk Email", ""), ("Archive", "")],
    "gmail": [("[Gmail]/Drafts", "\\Drafts"), ("[Gmail]/Sent Mail", "\\Sent"),
              ("[Gmail]/Spam", "\\Junk"), ("[Gmail]/Trash", "\\Trash"),
              ("[Gmail]/Starred", "\\Flagged"), (GMAIL_ALL_MAIL, "\\All")],
}
PROFILES = tuple(CAPABILITIES)
# Which part of the login a token's user must match (Dovecot's oauth2 username_format): an
# Exchange app-only token is good for the whole domain, a Gmail token for its subject alone.
TOKEN_SCOPE = {"exchange": "%d", "gmail": "%u"}
# Profiles whose service reports an estimated RFC822.SIZE (lab.imapsize in front of its IMAP).
ESTIMATED_SIZES = ("exchange",)


@dataclass
class ProfiledDovecot(DovecotInstance):
    """The lab's primary Dovecot with a hosted service's capabilities and folders."""

    profile: str = "exchange"
    oauth2_url: str = ""
    """The lab's token service, which validates the tokens mailcontinuity logs in with."""
    sizes_proxy: Endpoint | None = None
    """Where ``lab.imapsize`` listens in front of the IMAP listener (``primary.imap``)."""

    @property
    def _sizes_pid_file(self) -> Path:
        return self.root / "imapsize.pid"

    def start(self) -> None:
        super().start()
        if self.sizes_proxy is None or read_pid(self._sizes_pid_file) is not None:
            return
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        spawn([sys.executable, "-m", "mailcontinuity.lab.imapsize", str(self.sizes_proxy),
               str(self.listeners["imap"]), str(self.certificates.cert_file),
               str(self.certificates.key_file)],
              self.root / "logs" / "imapsize.log", self._sizes_pid_file)
        wait_for([self.sizes_proxy], up=True, what=f"{self.name} IMAP (estimated sizes)")

    def stop(self) -> None:
        if self.sizes_proxy is not None:
            stop_pid_file(self._sizes_pid_file)
            wait_for([self.sizes_proxy], up=False, what=f"{self.name} IMAP (estimated sizes)")
        super().stop()

    @property
    def _all_mail_script(self) -> Path:
        return self.root / "sieve-before" / "all-mail.sieve"

    def write_config(self) -> None:
        super().write_config()
        if self.profile == "gmail":
            self.install_global_sieve(
                self._all_mail_script,
                'require ["fileinto", "copy"];\n'
                f'fileinto :copy "{GMAIL_ALL_MAIL}";\n')

    def _render(self, mail_uid: int) -> str:
        text = super()._render(mail_uid)
        start, end = text.index("namespace inbox {"), text.index("passdb {")
        mailboxes = "".join(
            f'  mailbox "{name}" {{\n{f"    special_use = {use}{chr(10)}" if use else ""}'
            f"    auto = subscribe\n  }}\n"
            for name, use in FOLDERS[self.profile])
        namespace = f"namespace inbox {{\n  inbox = yes\n  separator = /\n{mailboxes}}}\n"
        capability = f"imap_capability = {CAPABILITIES[self.profile]}\n"
        text = text[:start] + capability + namespace + text[end:]
        # No master user on a hosted service: the users' passdb, then the tokens'.
        master_start = text.index("passdb {")
        master_end = text.index("}\n", master_start) + 2
        assert "master = yes" in text[master_start:master_end], "the master passdb comes first"
        text = text[:master_start] + text[master_end:]
        passdb = dovecot_oauth2_passdb(self.root / "oauth2.conf.ext", self.oauth2_url,
                                       TOKEN_SCOPE[self.profile])
        userdb = text.index("userdb {")
        text = text[:userdb] + passdb + text[userdb:]
        text = text.replace("auth_mechanisms = plain login\n",
                            "auth_mechanisms = plain login xoauth2 oauthbearer\n", 1)
        if self.profile == "gmail":
            before = f"  sieve_before = {self._all_mail_script}\n"
            text = text.replace("plugin {\n", "plugin {\n" + before, 1)
        return text
