"""``mailcontinuity policyd``: the policy server and the health monitor in one process.

They share the process and the configuration; each has its own connection to the state store
(the monitor writes from a worker thread, the policy answers read in the event loop).
SIGTERM/SIGINT stop both cleanly (socket removed, heartbeat marked stopped, so ``status`` says
policyd is down at once).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry

from mailcontinuity.config import Config
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.monitor.accepted import AcceptedMessages
from mailcontinuity.monitor.loop import HealthMonitor
from mailcontinuity.monitor.policy import CachedState, RecipientPolicy
from mailcontinuity.monitor.recipients import StandbyRecipients
from mailcontinuity.monitor.server import PolicyServer
from mailcontinuity.store.db import open_store
from mailcontinuity.store.heartbeats import policyd_beat, policyd_stopped

log = logging.getLogger(__name__)


class MetricsServer(Protocol):
    """What serves the metrics policyd counts (``reports.metrics.MetricsEndpoint``)."""

    def start(self) -> bool: ...

    def close(self) -> None: ...


MetricsFactory = Callable[[CollectorRegistry], MetricsServer]


def run_policyd(config: Config, metrics: MetricsFactory | None = None) -> None:
    """Serve until SIGTERM or SIGINT; with ``metrics``, also the endpoint it makes for the
    registry policyd counts its answers in."""
    asyncio.run(_main(config, metrics))


async def _main(config: Config, make_metrics: MetricsFactory | None) -> None:
    store = open_store(config)
    reader = open_store(config)
    accepted = AcceptedMessages()
    monitor = HealthMonitor(config, store, accepted)
    settings = config.policyd
    standby = StandbyRecipients(config.standby.lmtp, TLSPolicy.of(config, "standby"),
                                settings.recipient_check_timeout_seconds,
                                settings.recipient_cache_seconds)
    registry = CollectorRegistry()
    server = PolicyServer(settings, RecipientPolicy(config, CachedState(reader), standby,
                                                    accepted).decide, registry)
    metrics = make_metrics(registry) if make_metrics is not None else None
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    if metrics is not None:
        metrics.start()
    policyd_beat(store, monitor.started_at, time.time(), monitor.stale_after)
    log.info("event=policyd_started state=%s", monitor.state.name)
    try:
        await monitor.run(stopping)
    finally:
        await server.close()
        if metrics is not None:
            metrics.close()
        await standby.close()
        await asyncio.to_thread(monitor.close)
        policyd_stopped(store, time.time())
        store.close()
        reader.close()
        log.info("event=policyd_stopped")
