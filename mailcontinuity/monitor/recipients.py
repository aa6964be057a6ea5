"""Does the standby know this recipient? Asked over LMTP, the way delivery would ask.

During an outage, mail for an address the standby does not have would be accepted by the
gateway and then wait in its queue (the standby's transport keeps its ``550 5.1.1`` as a
deferral, see deploy/routing.py) with nobody telling the sender. We ask the standby the same
question at RCPT time instead, so that policyd can defer it while the sender is connected:
``MAIL FROM:<>``, ``RCPT TO``, ``RSET`` on one kept LMTP connection, with a short cache.
Whenever the answer is not a clear yes or no (standby down, slow, odd reply) the verdict is
"unknown" and policyd says DUNNO.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from mailcontinuity.config import Endpoint
from mailcontinuity.mail.smtp import SmtpClientError, SmtpSession
from mailcontinuity.mail.tls import TLSError, TLSPolicy

log = logging.getLogger(__name__)

MAX_CACHED = 10000
# What we are willing to put on an LMTP command line: no spaces, controls or angle brackets.
_ADDRESS_RE = re.compile(r"^[^\s<>@\x00-\x1f\x7f]+@[A-Za-z0-9.-]+$")


class StandbyRecipients:
    """Answers ``knows(address)`` with True, False or None (cannot tell)."""

    def __init__(self, lmtp: Endpoint, tls: TLSPolicy, timeout: float, cache_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lmtp = lmtp
        self.tls = tls
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cache: dict[str, tuple[bool, float]] = {}
        self._session: SmtpSession | None = None
        self._lock = asyncio.Lock()

    async def knows(self, address: str) -> bool | None:
        if not _ADDRESS_RE.match(address):
            return None
        key = address.lower()
        cached = self._cached(key)
        if cached is not None:
            return cached
        async with self._lock:  # one LMTP conversation at a time on the kept connection
            cached = self._cached(key)
            if cached is not None:
                return cached
            try:
                async with asyncio.timeout(self.timeout):
                    verdict = await self._ask(address)
            except (OSError, TimeoutError, SmtpClientError, TLSError) as exc:
                log.warning("event=standby_recipient_check_failed lmtp=%s error=%r action=DUNNO",
                            self.lmtp, exc)
                self._drop_session()
                return None
        if verdict is not None:
            self._remember(key, verdict)
        return verdict

    async def close(self) -> None:
        self._drop_session()

    async def _ask(self, address: str) -> bool | None:
        if self._session is None:
            self._session = await SmtpSession.open(self.lmtp, "lmtp", self.tls)
        session = self._session
        session.expect(await session.command("MAIL FROM:<>"), "MAIL FROM")
        reply = await session.command(f"RCPT TO:<{address}>")
        session.expect(await session.command("RSET"), "RSET")
        if reply.positive:
            return True
        if reply.code in (550, 551, 553) and "5.1.1" in reply.text:
            return False
        log.info("event=standby_recipient_uncertain address=%s reply=%r", address, reply)
        return None

    def _cached(self, key: str) -> bool | None:
        entry = self._cache.get(key)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    def _remember(self, key: str, verdict: bool) -> None:
        if self.cache_seconds <= 0:
            return
        now = self.clock()
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
        self._cache[key] = (verdict, now + self.cache_seconds)

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
