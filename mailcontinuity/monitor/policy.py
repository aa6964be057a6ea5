"""The answer policyd gives at RCPT time, as the design states it.

In ``failover``, a recipient in a protected domain that the standby does not know is refused
*temporarily* while the sender's server is still connected: no bounce later, no backscatter,
and no permanent refusal either, since the address may well be one the primary knows (a list, a
shared mailbox, an alias) and the standby is not the authority on it. The sender's server
retries; after failback the mail reaches the primary. An address the gateway expands itself
during the outage (``gateway.outage_aliases``, ``outage_postmaster``) is passed. The reply says
nothing about a standby: outsiders learn nothing about the site's state from it.

Everything else, and everything uncertain, is ``DUNNO``: policyd never accepts mail on its own
(it never says ``OK``) and never blocks mail because it is unsure. Routing itself is not decided
here but by the transport table (see routing.py), so policyd's answers can only ever defer
unknown users.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mailcontinuity.config import Config, ConfigError
from mailcontinuity.deploy.aliases import OutageAliases
from mailcontinuity.monitor.accepted import AcceptedMessages
from mailcontinuity.monitor.protocol import DUNNO, POLICY_REQUEST
from mailcontinuity.monitor.recipients import StandbyRecipients
from mailcontinuity.store.state import StateName

log = logging.getLogger(__name__)

# Postfix prefixes "<rcpt>: Recipient address rejected: " itself. 450 as Postfix's own
# "unverified recipient" answer: the sender's server keeps the mail and retries.
UNKNOWN_RECIPIENT = "450 4.2.0 mailbox temporarily unavailable, try again later"


class RecipientPolicy:
    """``decide(request)`` for the policy server; ``state`` says the current continuity state
    (``StateFollower.state_name``: read from the store by another thread, never per request)."""

    def __init__(self, config: Config, state: Callable[[], StateName],
                 standby: StandbyRecipients, accepted: AcceptedMessages | None = None,
                 aliases: Callable[[], OutageAliases] | None = None) -> None:
        self.protected = frozenset(d.lower() for d in config.domains.protected)
        self.state = state
        self.standby = standby
        self.accepted = accepted
        self.aliases = aliases if aliases is not None else FollowedAliases(config)

    async def decide(self, request: dict[str, str]) -> str:
        if request.get("request") != POLICY_REQUEST:
            log.warning("event=request_unexpected request=%r action=DUNNO",
                        request.get("request", "")[:60])
            return DUNNO
        if request.get("protocol_state") != "RCPT":
            return DUNNO
        recipient = request.get("recipient", "")
        if recipient.rpartition("@")[2].lower() not in self.protected:
            return DUNNO
        if self.state() != "failover":
            if self.accepted is not None:  # the milter journals this one (status checks it)
                self.accepted.seen(request.get("instance", ""))
            return DUNNO
        if self.aliases().covers(recipient):  # the gateway expands it to standby mailboxes
            return DUNNO
        if await self.standby.knows(recipient) is False:
            log.info("event=recipient_deferred recipient=%s queue_id=%s client=%s", recipient,
                     request.get("queue_id", ""), request.get("client_address", ""))
            return UNKNOWN_RECIPIENT
        return DUNNO


class FollowedAliases:
    """The outage aliases as the file has them now: re-read when ``gateway.outage_aliases``
    changes (an administrator refreshes the copy of the primary's table without restarting
    policyd); a table that cannot be read keeps the last good one, with a warning. The first
    read raises, so that a missing file stops policyd with an error naming the key."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._stamp = self._file_stamp()
        self._aliases = OutageAliases.of(config)

    def __call__(self) -> OutageAliases:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._aliases = OutageAliases.of(self.config)
            except ConfigError as exc:
                log.warning("event=outage_aliases_unreadable error=%r action=keep_last", str(exc))
        return self._aliases

    def _file_stamp(self) -> tuple[int, int] | None:
        path = self.config.gateway.outage_aliases
        if path is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

