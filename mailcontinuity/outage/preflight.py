"""Before failback needs it: can we log in to the primary as a user with the failback
credentials, and will the primary take what failback does?

The drill runs this for its probe user, before any outage; ``failback`` runs it before it
switches the state (a failback that cannot log in would send new mail to the primary while the
outage's mail and the users' work stay on the standby). It changes nothing a user would see: a
folder it creates to prove CREATE works is deleted at once.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field

from imapclient.exceptions import IMAPClientError

from mailcontinuity.config import Config
from mailcontinuity.mail.imap import SPECIAL_FOLDERS
from mailcontinuity.outage.primary import PrimaryError, connect, read_admin_password

# Without these failback still works, more slowly or less precisely; said, not failed.
HELPFUL = {b"MOVE": "moves become COPY + \\Deleted + expunge",
           b"UIDPLUS": "a move or deletion without it expunges every \\Deleted message there",
           b"SAVEDATE": "failback reads the whole primary mailbox, not only mail saved since"
                        " the outage began",
           b"MULTIAPPEND": "messages are appended one round trip each",
           b"SPECIAL-USE": "special folders are found by their usual names"}


@dataclass
class Preflight:
    """What the preflight found: ``failed`` is why failback would not work, if it would not."""

    user: str
    failed: str = ""
    notes: list[str] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)
    """The standby's special folders -> the primary's folder for them."""

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        if self.failed:
            return self.failed
        folders = ", ".join(f"{ours} -> {theirs}" for ours, theirs in self.mapping.items())
        return "; ".join([f"logged in as {self.user}", *([folders] if folders else []),
                          *self.notes])


def preflight(config: Config, user: str) -> Preflight:
    """Log in as ``user`` the way failback will, list the folders, map the special ones, and
    create then delete a folder (CREATE refused is the classic Cyrus/Exchange surprise)."""
    result = Preflight(user)
    try:
        mailbox = connect(config, user, read_admin_password(config))
    except PrimaryError as exc:
        said = str(exc)
        result.failed = said if f"as {user}" in said else f"login as {user}: {said}"
        return result
    try:
        capabilities = mailbox.capabilities
        result.notes = [f"no {name.decode()}: {why}" for name, why in HELPFUL.items()
                        if name not in capabilities]
        result.mapping = {folder: mailbox.theirs(folder) for folder in SPECIAL_FOLDERS
                          if mailbox.theirs(folder) in mailbox.names.alias.values()
                          or folder in mailbox.folders}
        probe = f"mailcontinuity-preflight-{secrets.token_hex(4)}"
        try:
            mailbox.client.create_folder(mailbox.theirs(probe))
        except IMAPClientError as exc:
            result.failed = (f"primary IMAP {config.primary.imap}: CREATE"
                             f" {mailbox.theirs(probe)!r} as {user} refused ({exc}); failback"
                             " creates the folders users made on the standby: grant the right"
                             " to create folders, or check the folder layout")
        else:
            with contextlib.suppress(IMAPClientError):
                mailbox.client.delete_folder(mailbox.theirs(probe))
    except (OSError, IMAPClientError) as exc:
        result.failed = f"primary IMAP {config.primary.imap}: {type(exc).__name__}: {exc}"
    finally:
        mailbox.close()
    return result
