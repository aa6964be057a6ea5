"""``mailcontinuity milter``: the journal milter process (libmilter threads plus the shipper).

Start-up clears half-written spool files a killed predecessor left, imports entries an older
version left in its one-file-per-message format (journal/legacy_spool.py), and hands every
committed record to the shipper, so nothing accepted is lost across a crash, restart or upgrade.
"""

from __future__ import annotations

import gc
import logging
import threading

import Milter
import milter

from mailcontinuity.config import Config
from mailcontinuity.deploy.senders import SenderOwners
from mailcontinuity.journal.legacy_spool import import_legacy
from mailcontinuity.journal.listener import libmilter_name, prepare, tuned_listener
from mailcontinuity.journal.milter import (
    JournalMilter,
    JournalPolicy,
    JournalRuntime,
    SpoolErrorCounter,
)
from mailcontinuity.journal.shipper import Shipper
from mailcontinuity.journal.sinks import make_sink
from mailcontinuity.journal.spool import Spool, SpoolError
from mailcontinuity.mail.tools import CommandError
from mailcontinuity.store.db import StateStoreError, open_store
from mailcontinuity.store.journal import record_alarm

log = logging.getLogger(__name__)

MILTER_NAME = "mailcontinuity-journal"
# Postfix gives up on a reply after content_timeout (300 s); libmilter's own I/O timeout.
SOCKET_TIMEOUT_SECONDS = 240


class MilterStartError(CommandError):
    """The milter could not open its socket (port in use, predecessor still exiting)."""


def journal_policy(config: Config) -> JournalPolicy:
    lmtp = config.standby.lmtp
    return JournalPolicy(
        id_header=config.milter.id_header,
        protected_domains=frozenset(config.domains.protected),
        # How Postfix shows the failover route in {rcpt_host} (see routing.nexthop).
        standby_nexthops=frozenset({f"[{lmtp.host}]:{lmtp.port}", f"{lmtp.host}:{lmtp.port}"}),
        tempfail_on_spool_error=config.milter.on_spool_error == "tempfail",
        primary_smtputf8=config.primary.smtputf8,
        standby_smtputf8=config.standby.smtputf8,
        senders=SenderOwners.of(config),
    )


def run_milter(config: Config) -> None:
    """Serve until SIGTERM/SIGINT (libmilter handles them), then stop the shipper."""
    settings = config.milter
    spool = Spool(settings.spool_dir)
    leftovers = spool.clear_in_flight()
    if leftovers:
        log.info("event=spool_in_flight_cleared files=%d", leftovers)
    try:
        import_legacy(spool)  # before the shipper lists the segments
    except SpoolError as exc:
        raise MilterStartError(str(exc)) from None
    # The store may be another host's (PostgreSQL) and down: the milter starts and journals
    # all the same; the index and the alarms are written once it answers.
    shipper = Shipper(spool, make_sink(config), lambda: open_store(config, connect=False),
                      settings.retry_initial_seconds, settings.retry_max_seconds)
    alarm_store = open_store(config, connect=False)
    alarm_lock = threading.Lock()

    def report_spool_error(detail: str) -> None:
        with alarm_lock:
            try:
                record_alarm(alarm_store, "spool_error", detail)
            except StateStoreError as exc:  # the log line is all there is then
                log.error("event=spool_error_unrecorded detail=%r error=%r", detail, str(exc))

    runtime = JournalRuntime(journal_policy(config), spool, SpoolErrorCounter(report_spool_error))
    Milter.factory = lambda: JournalMilter(runtime)
    milter.set_exception_policy(milter.CONTINUE)
    milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)
    # What start-up built (config, modules, the policy) lives as long as the process: frozen,
    # the collector stops walking it on every full collection (~3% of the milter's CPU, perf).
    gc.collect()
    gc.freeze()
    shipper.start()
    log.info("event=milter_start listen=%s sink=%s spool=%s", settings.listen, settings.sink,
             settings.spool_dir)
    try:
        prepare(settings.listen)
        with tuned_listener(settings):
            Milter.runmilter(MILTER_NAME, libmilter_name(settings.listen),
                             timeout=SOCKET_TIMEOUT_SECONDS)
    except (milter.error, OSError) as exc:
        raise MilterStartError(
            f"milter cannot listen on {settings.listen}: {exc}; check that no other process"
            " (or a predecessor still exiting) holds milter.listen"
        ) from None
    finally:
        spool.log.close()
        shipper.stop()
        shipper.join(timeout=10)
        alarm_store.close()
        log.info("event=milter_stop")
