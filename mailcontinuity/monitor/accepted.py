"""Counting the messages the gateway accepts for protected domains, which the milter journals.

policyd is asked about every recipient at RCPT time; outside failover, a message with at least
one protected recipient is one the milter must journal (in failover, Postfix routes those
recipients to the standby and the milter leaves them alone). Messages are told apart by
Postfix's ``instance`` attribute, the same for every recipient of one message. The count is
taken by the health monitor each round and added to the state store (``store.accepted``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

# Recipients of one message arrive within a second or so: a few thousand recent messages are
# plenty to count each once, and the memory stays bounded whatever the traffic.
REMEMBERED_MESSAGES = 4096


class AcceptedMessages:
    """Messages seen since the last ``take``; shared by the policy answers (event loop) and the
    monitor's round (a worker thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._count = 0

    def seen(self, instance: str) -> None:
        """A protected recipient of the message ``instance`` (empty: counted every time)."""
        with self._lock:
            if instance:
                if instance in self._recent:
                    return
                self._recent[instance] = None
                if len(self._recent) > REMEMBERED_MESSAGES:
                    self._recent.popitem(last=False)
            self._count += 1

    def take(self) -> int:
        """How many messages since the last call."""
        with self._lock:
            count, self._count = self._count, 0
        return count
