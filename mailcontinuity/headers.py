"""The headers mailcontinuity puts on mail, shared by the milter, the sync agent and failback.

- The id header goes on every message the gateway accepts and travels with it to the primary
  and the standby alike: failback recognises copies of one message by it. One that arrives from
  outside is removed and replaced, never trusted.
- The journal header goes only on journal copies in the standby (the history kept in normal
  times); such copies are never recorded as outage activity and never merged back.
"""

DEFAULT_ID_HEADER = "X-Mailcontinuity-Id"
JOURNAL_HEADER = "X-Mailcontinuity-Journal"
