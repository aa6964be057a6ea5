"""Run ``mailcontinuity failback`` and SIGKILL it from inside when its checkpoints are about to
record more than N finished actions: the first N are written, the rest were done on the
primary but never checkpointed (checkpoints are written in batches: the worst moment for a
crash).

Usage: python crash_failback.py CONFIG N [MIN_BATCH]

With MIN_BATCH, N checkpoint writes of at least MIN_BATCH actions each go through and the next
one dies before it is written (an APPEND batch the primary has just stored).
"""

import os
import signal
import sys
import threading

from mailcontinuity.cli.main import main
from mailcontinuity.store.outages import ChangeLog

config, limit = sys.argv[1], int(sys.argv[2])
min_batch = int(sys.argv[3]) if len(sys.argv) > 3 else 0
real_checkpoint = ChangeLog.checkpoint
counted = 0


lock = threading.Lock()  # users merge in parallel: one count, and no write during the kill


def checkpoint_then_die(self, outage_id, user, results):  # type: ignore[no-untyped-def]
    global counted
    with lock:
        if min_batch:
            counted += len(results) >= min_batch
            if counted > limit:
                os.kill(os.getpid(), signal.SIGKILL)
            real_checkpoint(self, outage_id, user, results)
            return
        room = limit - counted
        counted += len(results)
        if counted > limit:
            real_checkpoint(self, outage_id, user, results[:room])
            os.kill(os.getpid(), signal.SIGKILL)
        real_checkpoint(self, outage_id, user, results)


ChangeLog.checkpoint = checkpoint_then_die  # type: ignore[method-assign]
main(["--config", config, "failback", "--yes", "--json"])
