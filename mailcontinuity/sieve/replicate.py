"""``sieve-sync``: copy each protected user's sieve scripts, and which is active, to the standby.

During an outage users' filters and out-of-office replies must work on the standby as they did
on the primary, so the standby keeps a copy of every script, refreshed on a timer and before a
drill. The primary is the source of truth: scripts are compared as normalised text and only
changed ones are written, scripts gone from the primary are deleted (``sieve.delete_missing``),
and the active script follows the primary's. A script the standby does not accept is reported
for its user and skipped; it never stops the other scripts or users.

What users change on the standby during an outage (an out-of-office set in the portal) is not
lost at failback: the first run after an outage began compares both servers with what the
last run before it left on the standby (store/sieve.py). A script changed or added on the
standby while the primary's stayed as it was is copied to the primary, and an activation
changed on the standby alone is made there, before the primary's scripts are copied back as
usual. A script changed on both sides
keeps the primary's version and is reported. Scripts deleted on the standby are not deleted on
the primary. Nothing is copied back for a user sieve-sync never synced (no base to compare
with: a first run cannot tell a user's change from what was there before), nor when no outage
began since the last run (the primary is the truth in normal times).

The primary is logged into as failback logs in (``sync.login_method``): with ``xoauth2``, each
user's own OAuth2 token from the app's (SASL XOAUTH2 or OAUTHBEARER), from the same token cache
as failback's IMAP logins; otherwise the admin with the user as authorization identity (SASL
PLAIN). The standby always takes the admin's SASL PLAIN.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from mailcontinuity.config import Config, ConfigError, Endpoint, read_secret
from mailcontinuity.mail.maildir import user_maildirs
from mailcontinuity.mail.managesieve import (
    BearerTokens,
    Credentials,
    Scripts,
    SieveError,
    SieveSession,
    session,
)
from mailcontinuity.mail.oauth2 import oauth2_tokens
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.store.db import StateStore, open_store
from mailcontinuity.store.sieve import SyncedScripts, digest, record_synced, synced_scripts

log = logging.getLogger(__name__)


@dataclass
class SieveUserResult:
    """What sieve-sync did for one user; ``errors`` non-empty means the user failed."""

    user: str
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    active: str | None = None
    activated: bool = False
    returned: list[str] = field(default_factory=list)
    """Scripts changed on the standby (during an outage) and copied to the primary."""
    errors: list[str] = field(default_factory=list)


@dataclass
class SieveSyncReport:
    users: list[SieveUserResult]

    @property
    def failed(self) -> list[SieveUserResult]:
        return [result for result in self.users if result.errors]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": not self.failed, "users": [asdict(result) for result in self.users],
                "failed": [result.user for result in self.failed]}

    def reason(self) -> str:
        """One line for the operator: who failed and the first reason."""
        first = self.failed[0]
        return (f"sieve-sync: {len(self.failed)} of {len(self.users)} user(s) failed, first"
                f" {first.user}: {first.errors[0]}")


def protected_users(config: Config) -> list[str]:
    """Users with a standby Maildir (anyone who has had mail journaled) plus ``sieve.users``."""
    maildirs = user_maildirs(config.standby.maildir, list(config.domains.protected))
    return sorted({*maildirs, *(u.lower() for u in config.sieve.users)})


def sieve_sync(config: Config) -> SieveSyncReport:
    """Replicate every protected user's scripts; never raises for one user's failure."""
    primary_at = _endpoint(config, config.primary.managesieve, "primary.managesieve")
    standby_at = _endpoint(config, config.standby.managesieve, "standby.managesieve")
    primary_admin, standby_admin = _logins(config)
    primary_tls, standby_tls = TLSPolicy.of(config, "primary"), TLSPolicy.of(config, "standby")
    results = []
    store = open_store(config)
    try:
        for user in protected_users(config):
            result = SieveUserResult(user)
            try:
                with session(primary_at, user, primary_admin, primary_tls) as primary, \
                        session(standby_at, user, standby_admin, standby_tls) as standby:
                    sync_user(store, primary, standby, result, config.sieve.delete_missing)
            except SieveError as exc:
                result.errors.append(str(exc))
            log.info("event=sieve_sync user=%s copied=%d unchanged=%d deleted=%d active=%s"
                     " returned=%d errors=%d", user, len(result.copied), len(result.unchanged),
                     len(result.deleted), result.active, len(result.returned),
                     len(result.errors))
            for error in result.errors:
                log.error("event=sieve_sync_failed user=%s error=%r", user, error)
            results.append(result)
    finally:
        store.close()
    return SieveSyncReport(results)


def sync_user(store: StateStore, primary: SieveSession, standby: SieveSession,
              result: SieveUserResult, delete_missing: bool) -> None:
    """The standby's own changes to the primary first (when there is a base), then the
    primary's scripts to the standby; what the standby holds afterwards is the next base."""
    wanted = primary.scripts()
    base = synced_scripts(store, result.user)
    if base is not None and base.outage_since:
        returned, activate, conflicts = standby_changes(base, wanted, standby.scripts())
        result.errors += conflicts
        for name, text in sorted(returned.items()):
            primary.check(text)
            primary.put(name, text)
            result.returned.append(name)
        if activate is not None:
            primary.activate(activate or None)
        if returned or activate is not None:
            wanted = primary.scripts()
    result.active = wanted.active
    replicate(standby, wanted, result, delete_missing)
    left = standby.scripts()
    record_synced(store, result.user, left.active, left.texts)


def standby_changes(base: SyncedScripts, primary: Scripts, standby: Scripts
                    ) -> tuple[dict[str, str], str | None, list[str]]:
    """(scripts to copy to the primary, the activation to make there ("" for none, None for no
    change), conflicts): what changed on the standby since ``base`` while the primary's stayed
    as ``base`` has it."""
    def unchanged_on_primary(name: str) -> bool:
        text = primary.texts.get(name)
        return (digest(text) if text is not None else None) == base.digests.get(name)

    returned: dict[str, str] = {}
    conflicts: list[str] = []
    for name, text in standby.texts.items():
        if digest(text) == base.digests.get(name) or primary.texts.get(name) == text:
            continue
        if unchanged_on_primary(name):
            returned[name] = text
        else:
            conflicts.append(f"script {name!r} changed on the standby and on the primary since"
                             " the last sync: the primary's is kept; the standby's was"
                             " replaced, ask the user to redo the change on the primary")
    activate = None
    if standby.active != base.active and primary.active == base.active and (
            standby.active is None or standby.active in primary.texts
            or standby.active in returned):
        activate = standby.active or ""
    return returned, activate, conflicts


def replicate(standby: SieveSession, wanted: Scripts, result: SieveUserResult,
              delete_missing: bool) -> None:
    """Make the standby's scripts and activation those of ``wanted``, script by script."""
    have = standby.scripts()
    for name, text in sorted(wanted.texts.items()):
        if have.texts.get(name) == text:
            result.unchanged.append(name)
            continue
        try:
            standby.check(text)
        except SieveError as exc:
            result.errors.append(f"script {name!r} does not compile on the standby, skipped"
                                 f" ({exc}); fix it on the primary")
            continue
        try:
            standby.put(name, text)
        except SieveError as exc:
            result.errors.append(f"script {name!r} not stored, skipped ({exc})")
            continue
        result.copied.append(name)
    stored = {*result.copied, *result.unchanged}
    active = have.active
    if wanted.active != have.active and (wanted.active is None or wanted.active in stored):
        standby.activate(wanted.active)
        result.activated = True
        active = wanted.active
    # Deleting the active script is refused by ManageSieve; it stays until the next run.
    stale = set(have.texts) - set(wanted.texts) - {active} if delete_missing else set()
    for name in sorted(stale):
        standby.delete(name)
        result.deleted.append(name)


def _logins(config: Config) -> tuple[Credentials | BearerTokens, Credentials]:
    """How sieve-sync logs in to the primary (as failback does) and to the standby."""
    sync = config.sync
    secret = read_secret(config, "sync.password_file")
    primary: Credentials | BearerTokens = Credentials(sync.admin_login, secret)
    if sync.login_method == "xoauth2":
        assert sync.oauth2_client_id is not None  # the config's validator requires it
        primary = BearerTokens(oauth2_tokens(config, secret), sync.oauth2_client_id)
    if config.sieve.standby_admin_login:
        return primary, Credentials(config.sieve.standby_admin_login,
                                    read_secret(config, "sieve.standby_password_file"))
    if isinstance(primary, BearerTokens):
        raise ConfigError(f"{config.source}: sync.login_method is xoauth2, so sync.password_file"
                          " holds the app's secret, not a standby admin's password: set"
                          " sieve.standby_admin_login and sieve.standby_password_file (the"
                          " standby Dovecot's master user) for sieve-sync")
    return primary, Credentials(sync.admin_login, secret)


def _endpoint(config: Config, endpoint: Endpoint | None, key: str) -> Endpoint:
    if endpoint is None:
        raise ConfigError(f"{config.source}: key '{key}' is required for sieve-sync: the"
                          " ManageSieve listener (host:port, usually port 4190)")
    return endpoint
