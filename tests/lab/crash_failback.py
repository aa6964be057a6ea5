"""Run ``mailcontinuity failback`` and SIGKILL it from inside right after it has done its Nth
action but before that action's checkpoint is written: the worst moment for a crash.

Usage: python crash_failback.py CONFIG N [MIN_BATCH]

With MIN_BATCH, only checkpoints of at least that many actions at once count (an APPEND batch
the primary has just stored).
"""

import os
import signal
import sys

from mailcontinuity.cli.main import main
from mailcontinuity.store.outages import ChangeLog

config, limit = sys.argv[1], int(sys.argv[2])
min_batch = int(sys.argv[3]) if len(sys.argv) > 3 else 1
real_checkpoint = ChangeLog.checkpoint
calls = 0


def checkpoint_then_die(self, outage_id, user, results):  # type: ignore[no-untyped-def]
    global calls
    calls += len(results) >= min_batch
    if calls > limit:
        os.kill(os.getpid(), signal.SIGKILL)
    real_checkpoint(self, outage_id, user, results)


ChangeLog.checkpoint = checkpoint_then_die  # type: ignore[method-assign]
main(["--config", config, "failback", "--yes", "--json"])
