"""The answer policyd gives at RCPT time, as the design states it.

In ``failover``, a recipient in a protected domain that the standby does not know is rejected
while the sender's server is still connected (no bounce later, no backscatter). Everything else,
and everything uncertain, is ``DUNNO``: policyd never accepts mail on its own (it never says
``OK``) and never blocks mail because it is unsure. Routing itself is not decided here but by
the transport table (see routing.py), so policyd's answers can only ever reject unknown users.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mailcontinuity.config import Config
from mailcontinuity.monitor.accepted import AcceptedMessages
from mailcontinuity.monitor.protocol import DUNNO, POLICY_REQUEST
from mailcontinuity.monitor.recipients import StandbyRecipients
from mailcontinuity.store.state import StateName

log = logging.getLogger(__name__)

# Postfix prefixes "<rcpt>: Recipient address rejected: " itself.
UNKNOWN_RECIPIENT = "550 5.1.1 no such user on the standby mail system"


class RecipientPolicy:
    """``decide(request)`` for the policy server; ``state`` says the current continuity state
    (``StateFollower.state_name``: read from the store by another thread, never per request)."""

    def __init__(self, config: Config, state: Callable[[], StateName],
                 standby: StandbyRecipients, accepted: AcceptedMessages | None = None) -> None:
        self.protected = frozenset(config.domains.protected)
        self.state = state
        self.standby = standby
        self.accepted = accepted

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
        if await self.standby.knows(recipient) is False:
            log.info("event=recipient_rejected recipient=%s queue_id=%s client=%s", recipient,
                     request.get("queue_id", ""), request.get("client_address", ""))
            return UNKNOWN_RECIPIENT
        return DUNNO
