"""The probe reads ``status`` and every scrape make (store/probes.py) against their definitions.

``latest_probes`` skips through the (host, probe, id) index and ``failing_since`` seeks in
(host, ok, at) (migration 16) instead of reading every probe a host kept; for any sequence of
probe rounds from several hosts they must give what the plain definitions give: each probe's
row with the highest id, and the first failure after the host's last pass. On SQLite and
PostgreSQL (``-m postgres``).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcontinuity.config import Config
from mailcontinuity.store.db import open_store
from mailcontinuity.store.probes import ProbeResult, failing_since, latest_probes, record_probes

HOSTS = ("gw1", "gw2", "gw3")
PROBES = ("delivery", "imap", "imap_login")

rounds = st.lists(st.tuples(st.sampled_from(HOSTS),
                            st.lists(st.tuples(st.sampled_from(PROBES), st.booleans()),
                                     min_size=1, max_size=3)),
                  max_size=25)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=rounds)
def test_probe_reads_equal_their_definitions(store_config: Config,
                                             rounds: list[tuple[str, list[tuple[str, bool]]]]
                                             ) -> None:
    store = open_store(store_config)
    try:
        store.execute("DELETE FROM health_probes")
        written: list[tuple[str, ProbeResult]] = []
        for number, (host, results) in enumerate(rounds):
            batch = [ProbeResult(probe, f"{probe}:1", ok, 1.0, "" if ok else "refused",
                                 1000.0 + number) for probe, ok in results]
            with store.transaction():
                record_probes(store, host, batch)
            written.extend((host, result) for result in batch)
        for host in (*HOSTS, "nobody"):
            mine = [result for wrote, result in written if wrote == host]
            latest: dict[str, ProbeResult] = {}
            for result in mine:  # written in id order: the last one of each probe wins
                latest[result.probe] = result
            assert latest_probes(store, host) == [latest[name] for name in sorted(latest)]
            passed = max((result.at for result in mine if result.ok), default=0.0)
            failures = [result.at for result in mine if not result.ok and result.at > passed]
            assert failing_since(store, host) == (min(failures) if failures else None)
    finally:
        store.close()
