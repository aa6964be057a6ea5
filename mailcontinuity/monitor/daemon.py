"""``mailcontinuity policyd``: the policy server and the health monitor in one process.

They share the process and the configuration; each part has its own connection to the state
store: the monitor writes from a worker thread, the follower (``monitor.follower``) reads the
state for the policy answers and routes this gateway by it. The process starts and serves even
when the store cannot be reached (a shared store on another host may be down): mail keeps its
last routing until the store answers. SIGTERM/SIGINT stop it cleanly (socket removed, heartbeat
marked stopped, so ``status`` says policyd is down at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry

from mailcontinuity.config import Config
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.monitor.accepted import AcceptedMessages
from mailcontinuity.monitor.follower import StateFollower
from mailcontinuity.monitor.loop import HealthMonitor
from mailcontinuity.monitor.policy import RecipientPolicy
from mailcontinuity.monitor.recipients import StandbyRecipients
from mailcontinuity.monitor.server import PolicyServer
from mailcontinuity.store.db import StateStoreError, open_store
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
    store = open_store(config, connect=False)
    follower = StateFollower(config, open_store(config, connect=False))
    accepted = AcceptedMessages()
    monitor = HealthMonitor(config, store, accepted, recorded=follower.seen)
    settings = config.policyd
    standby = StandbyRecipients(config.standby.lmtp, TLSPolicy.of(config, "standby"),
                                settings.recipient_check_timeout_seconds,
                                settings.recipient_cache_seconds)
    registry = CollectorRegistry()
    server = PolicyServer(settings, RecipientPolicy(config, follower.state_name, standby,
                                                    accepted).decide, registry)
    metrics = make_metrics(registry) if make_metrics is not None else None
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    follower.follow_once()  # the state (and this gateway's routing) before the first answer
    follower.start()
    await server.start()
    if metrics is not None:
        metrics.start()
    try:
        policyd_beat(store, config.host_name, monitor.started_at, time.time(),
                     monitor.stale_after)
    except StateStoreError as exc:
        log.warning("event=store_unreachable error=%r action=serve_keep_routing", str(exc))
    log.info("event=policyd_started host=%s state=%s", config.host_name,
             follower.state.name if follower.state else "unknown")
    try:
        await monitor.run(stopping)
    finally:
        await server.close()
        follower.stop()
        if metrics is not None:
            metrics.close()
        await standby.close()
        await asyncio.to_thread(monitor.close)
        with contextlib.suppress(StateStoreError):  # else status sees the heartbeat go stale
            policyd_stopped(store, config.host_name, time.time())
        follower.join(timeout=5)
        store.close()
        follower.store.close()
        log.info("event=policyd_stopped")
