"""Questions asked of the standby's own Dovecot through ``doveadm``.

Which users it knows (so an unknown recipient is recorded, not retried), and where journal copies
delivered over LMTP are (they have no file name we chose, so ``prune`` and a restarted shipper
find them by their id header). ``doveadm`` needs the standby's configuration on this host:
``[milter] doveadm_config``, or the system's Dovecot when it is the standby.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailcontinuity.mail.headers import JOURNAL_HEADER
from mailcontinuity.mail.maildir import IMAP_SEPARATOR
from mailcontinuity.mail.tools import CommandError, run_command, run_tool

DOVEADM_NO_SUCH_USER = 67  # EX_NOUSER; 75 (EX_TEMPFAIL) means auth could not be asked
DOVEADM_TIMEOUT_SECONDS = 30
MISSING_HINT = ("install dovecot-core on this host, or set milter.doveadm_config to the standby's"
                " dovecot.conf")
# Names per ``doveadm user`` run: one run instead of one per recipient (a run costs 20 ms on an
# idle host, 0.3 s on a loaded 2-core one), its command line far below ARG_MAX.
USER_BATCH = 200
_NO_SUCH_USER_LINE = re.compile(r"^userdb lookup: user (.+) doesn't exist$", re.MULTILINE)


UID_CHUNK = 500


@dataclass(frozen=True)
class JournalCopy:
    """A journal copy on the standby as doveadm lists it."""

    folder: str
    uid: int
    flags: tuple[str, ...]
    key: str


class StandbyUnreachable(Exception):
    """doveadm could not answer (standby down, config unreadable); try again later."""


class Doveadm:
    """``doveadm`` against the standby's configuration."""

    def __init__(self, config: Path | None) -> None:
        self._config = ["-c", str(config)] if config else []
        self._delimiters: str | None = None
        self._separator: str | None = None

    def run(self, *args: str) -> str:
        return run_command(["doveadm", *self._config, *args], timeout=DOVEADM_TIMEOUT_SECONDS,
                           missing_hint=MISSING_HINT)

    def journal_copies(self, address: str, folder: str, id_header: str,
                       message_id: str) -> list[str]:
        """``<mailbox-guid> <uid>`` of the journal copies of one message in one folder."""
        try:
            found = self.run("search", "-u", address, *self._journal_query(
                folder, id_header, message_id))
        except CommandError as exc:
            raise StandbyUnreachable(f"doveadm search for {address}: {exc}") from None
        return found.split("\n")[:-1] if found else []

    def expunge_journal_copies(self, address: str, folder: str, id_header: str,
                               message_id: str) -> None:
        """Expunge them; the query also demands the journal header, so a user's own mail with
        the same id (a message received during an outage) never matches."""
        try:
            self.run("expunge", "-u", address, *self._journal_query(folder, id_header,
                                                                    message_id))
        except CommandError as exc:
            raise StandbyUnreachable(f"doveadm expunge for {address}: {exc}") from None

    @staticmethod
    def _journal_query(folder: str, id_header: str, message_id: str) -> list[str]:
        return ["mailbox", folder, "HEADER", id_header, message_id,
                "HEADER", JOURNAL_HEADER, "yes"]


    def journal_index(self, address: str, id_header: str) -> list[JournalCopy]:
        """Every journal copy of the user: folder (UTF-8), UID, flags and key (one
        ``doveadm fetch``)."""
        try:
            out = self.run("-f", "tab", "fetch", "-u", address,
                           f"mailbox uid flags hdr.{id_header.lower()}",
                           "HEADER", JOURNAL_HEADER, "yes")
        except CommandError as exc:
            raise StandbyUnreachable(f"doveadm fetch for {address}: {exc}") from None
        copies = []
        for line in out.splitlines()[1:]:
            fields = line.split("\t")
            if len(fields) < 4 or not fields[3].strip():
                continue  # no id header: not a copy the follow pass can match
            mailbox, uid, flags, value = fields[:4]
            copies.append(JournalCopy(self._ours(mailbox), int(uid), tuple(flags.split()),
                                      f"id:{' '.join(value.split())}"))
        return copies

    def journal_flags(self, address: str, folder: str, uids: tuple[int, ...], how: str,
                      flags: tuple[str, ...]) -> None:
        """``doveadm flags add|remove`` on journal copies of one folder."""
        self._on_journal(address, ["flags", how, "-u", address, " ".join(flags)], folder, uids)

    def journal_move(self, address: str, folder: str, uids: tuple[int, ...],
                     destination: str) -> None:
        """Move journal copies to ``destination`` (created, and subscribed, when missing)."""
        try:
            self.run("mailbox", "create", "-s", "-u", address, self._theirs(destination))
        except CommandError as exc:
            if "exists" not in str(exc).lower():
                raise StandbyUnreachable(f"doveadm mailbox create {destination!r} for"
                                         f" {address}: {exc}") from None
        self._on_journal(address, ["move", "-u", address, self._theirs(destination)], folder,
                         uids)

    def journal_expunge(self, address: str, folder: str, uids: tuple[int, ...]) -> None:
        self._on_journal(address, ["expunge", "-u", address], folder, uids)

    def _on_journal(self, address: str, command: list[str], folder: str,
                    uids: tuple[int, ...]) -> None:
        """``command`` on the journal copies at ``uids`` of ``folder`` (the query demands the
        journal header: a user's own mail never matches), in chunks of bounded length."""
        for start in range(0, len(uids), UID_CHUNK):
            chunk = ",".join(str(uid) for uid in uids[start:start + UID_CHUNK])
            try:
                self.run(*command, "mailbox", self._theirs(folder), "uid", chunk, "HEADER",
                         JOURNAL_HEADER, "yes")
            except CommandError as exc:
                raise StandbyUnreachable(f"doveadm {command[0]} for {address} in"
                                         f" {folder!r}: {exc}") from None

    def separator(self) -> str:
        """The standby's hierarchy separator (``namespace inbox``'s, else Maildir++'s "." or
        "/" with ``LAYOUT=fs``), read once: folder names here use "/" as IMAP and the primary's
        index do."""
        if self._separator is None:
            try:
                said = run_command(["doveconf", *self._config, "-h",
                                    "namespace/inbox/separator"],
                                   timeout=DOVEADM_TIMEOUT_SECONDS).strip()
                location = run_command(["doveconf", *self._config, "-h", "mail_location"],
                                       timeout=DOVEADM_TIMEOUT_SECONDS)
            except CommandError as exc:
                raise StandbyUnreachable(f"doveconf namespace separator: {exc}") from None
            self._separator = said or ("/" if "LAYOUT=fs" in location else ".")
        return self._separator

    def _ours(self, mailbox: str) -> str:
        return mailbox.replace(self.separator(), IMAP_SEPARATOR)

    def _theirs(self, folder: str) -> str:
        return folder.replace(IMAP_SEPARATOR, self.separator())

    def knows_user(self, address: str) -> bool:
        """Whether the standby's userdb has ``address`` (``doveadm user``)."""
        return self.mailbox_user(address) is not None

    def mailbox_user(self, address: str) -> str | None:
        """The user the standby's Dovecot delivers mail for ``address`` to, None when it has
        none: asked of its own userdb, so case (``auth_username_format``, ``%Lu`` by default)
        and the canonical name the lookup returns are Dovecot's; an address with a
        ``recipient_delimiter`` detail (``alice+tag@``) that is not a user itself is the user
        before the detail, as Dovecot's LMTP resolves it."""
        for candidate in without_detail(address, self.recipient_delimiters()):
            user = self._userdb_one(candidate)
            if user is not None:
                return user
        return None

    def mailbox_users(self, addresses: Iterable[str]) -> dict[str, str | None]:
        """``mailbox_user`` of each address, asked in one ``doveadm user`` run per USER_BATCH
        names, and one more round for the addresses with a detail that are no user themselves:
        a message to 500 recipients costs two runs, not 500."""
        delimiters = self.recipient_delimiters()
        pending = {address: without_detail(address, delimiters)
                   for address in dict.fromkeys(addresses)}
        found: dict[str, str | None] = {}
        while pending:
            names = list(dict.fromkeys(candidates[0] for candidates in pending.values()))
            users: dict[str, str | None] = {}
            for start in range(0, len(names), USER_BATCH):
                users.update(self._userdb(names[start:start + USER_BATCH]))
            left = {}
            for address, candidates in pending.items():
                if users[candidates[0]] is None and len(candidates) > 1:
                    left[address] = candidates[1:]
                else:
                    found[address] = users[candidates[0]]
            pending = left
        return found

    def _userdb(self, names: list[str]) -> dict[str, str | None]:
        """One ``doveadm user -f user`` run for ``names`` (see ``read_user_lookups``); one run
        per name when its answer cannot be read that way."""
        try:
            done = run_tool(["doveadm", *self._config, "user", "-f", "user", *names],
                            timeout=DOVEADM_TIMEOUT_SECONDS, missing_hint=MISSING_HINT)
        except CommandError as exc:
            raise StandbyUnreachable(f"standby userdb lookup failed: {exc}") from None
        if done.returncode not in (0, DOVEADM_NO_SUCH_USER):
            said = (done.stderr or done.stdout).strip().replace("\n", "; ")
            raise StandbyUnreachable(f"standby userdb lookup failed: doveadm user (exit"
                                     f" {done.returncode}): {said}")
        users = read_user_lookups(names, done.returncode, done.stdout, done.stderr)
        if users is None:
            users = {name: self._userdb_one(name) for name in names}
        return users

    def _userdb_one(self, name: str) -> str | None:
        try:
            canonical = self.run("user", "-f", "user", name).strip()
        except CommandError as exc:
            if exc.returncode != DOVEADM_NO_SUCH_USER:
                raise StandbyUnreachable(f"standby userdb lookup failed: {exc}") from None
            return None
        # The lookup prints the user field only when the userdb changed it.
        return canonical or name

    def recipient_delimiters(self) -> str:
        """The standby Dovecot's ``recipient_delimiter`` (each character is one), read once."""
        if self._delimiters is None:
            try:
                self._delimiters = run_command(
                    ["doveconf", *self._config, "-h", "recipient_delimiter"],
                    timeout=DOVEADM_TIMEOUT_SECONDS).strip()
            except CommandError as exc:
                raise StandbyUnreachable(f"doveconf recipient_delimiter: {exc}") from None
        return self._delimiters


def read_user_lookups(names: list[str], returncode: int, stdout: str,
                      stderr: str) -> dict[str, str | None] | None:
    """Name -> user from ``doveadm user -f user NAME...``, None where it has no such user; None
    for an answer that cannot be read safely.

    Dovecot 2.3 prints one line per name, in order: the user field when the userdb changed the
    name (``Bob@`` -> ``bob@``), else an empty line, also for a name it does not have, which it
    names on stderr ("userdb lookup: user NAME doesn't exist") before exiting 67. Lines that do
    not match the names one for one, or a missing name it did not ask about, make the answer
    unreadable rather than a guess.
    """
    missing = set(_NO_SUCH_USER_LINE.findall(stderr))
    lines = stdout.split("\n")
    if lines[-1] == "":
        lines.pop()
    if (len(lines) != len(names) or not missing <= set(names)
            or bool(missing) != (returncode == DOVEADM_NO_SUCH_USER)):
        return None
    return {name: None if name in missing else (line.strip() or name)
            for name, line in zip(names, lines, strict=True)}


def without_detail(address: str, delimiters: str) -> list[str]:
    """``address``, then (when its local part has a delimiter) the address before the detail:
    what Dovecot tries for ``user+detail@domain``."""
    local, at, domain = address.rpartition("@")
    cut = min((local.find(d) for d in delimiters if d and local.find(d) > 0), default=-1)
    return [address] if cut < 0 else [address, f"{local[:cut]}{at}{domain}"]
