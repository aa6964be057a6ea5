"""What the gateway accepted for protected domains, by minute: the journal must keep pace.

policyd sees every recipient Postfix accepts (``check_policy_service`` is the last recipient
restriction) and counts the messages with a protected recipient outside failover, the ones the
milter must journal; its monitor adds them here each round. ``status`` compares the count with
the journal copies made in the same window: a milter Postfix cannot reach (a chrooted smtpd, a
wrong ``smtpd_milters``) answers its own probes but journals nothing.
"""

from __future__ import annotations

from mailcontinuity.store.db import StateStore


def add_accepted(store: StateStore, at: float, messages: int) -> None:
    if messages <= 0:
        return
    with store.transaction():
        store.execute(
            "INSERT INTO gateway_accepted (minute, messages) VALUES (?, ?) ON CONFLICT (minute)"
            " DO UPDATE SET messages = gateway_accepted.messages + excluded.messages",
            [int(at // 60), messages])


def accepted_since(store: StateStore, since: float, until: float) -> int:
    """Messages accepted in the whole minutes from ``since`` to ``until`` (minute buckets:
    the window is as precise as a minute)."""
    row = store.one("SELECT COALESCE(SUM(messages), 0) FROM gateway_accepted"
                    " WHERE minute >= ? AND minute <= ?", [int(since // 60), int(until // 60)])
    return int(row[0]) if row else 0


def prune_accepted(store: StateStore, before: float) -> None:
    with store.transaction():
        store.execute("DELETE FROM gateway_accepted WHERE minute < ?", [int(before // 60)])
