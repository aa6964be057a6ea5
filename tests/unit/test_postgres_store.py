"""The PostgreSQL backend's own promises, on the session's private cluster: errors that name the
store and the next step, reconnecting after a lost connection, TLS and password checked, and
the notification that tells every gateway the state changed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mailcontinuity.config import Config
from mailcontinuity.lab.postgres import PostgresServer
from mailcontinuity.lab.process import free_ports
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.store.db import StateStoreError, open_store
from mailcontinuity.store.state import current_state, transition
from tests.conftest import config_with_state, postgres_state

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_config(postgres_server: PostgresServer, tmp_path: Path) -> Config:
    return config_with_state(tmp_path, postgres_state(postgres_server))


def test_an_unreachable_store_is_a_clear_error_and_daemons_still_start(
        pg_config: Config, tmp_path: Path) -> None:
    state = pg_config.state
    url = f"postgresql://mailcontinuity@127.0.0.1:{free_ports(1)[0]}/nothing"
    config = config_with_state(tmp_path, {"url": url, "password_file": str(state.password_file),
                                          "tls_ca_file": str(state.tls_ca_file),
                                          "connect_timeout_seconds": 2})
    started = time.monotonic()
    with pytest.raises(StateStoreError, match=rf"{url}: cannot connect.*PostgreSQL runs there"):
        open_store(config)
    assert time.monotonic() - started < 5
    daemon_store = open_store(config, connect=False)  # a daemon starts without it
    with pytest.raises(StateStoreError, match="mail keeps its last routing"):
        current_state(daemon_store)
    daemon_store.close()


def test_a_lost_connection_is_an_error_once_then_reconnects(
        pg_config: Config, postgres_server: PostgresServer) -> None:
    store = open_store(pg_config)
    assert current_state(store).name == "normal"
    database = pg_config.state.url.rpartition("/")[2] if pg_config.state.url else ""
    with postgres_server.admin() as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()", [database]).fetchone()
    assert killed is not None and killed[0] >= 1
    with pytest.raises(StateStoreError, match="cannot read"):
        current_state(store)
    assert current_state(store).name == "normal"  # the next call connected again
    store.close()


def test_a_certificate_from_another_ca_is_refused(pg_config: Config, tmp_path: Path) -> None:
    other = LabCertificates(tmp_path / "other-ca").create("someone else's CA")
    state = pg_config.state
    config = config_with_state(tmp_path, {"url": state.url,
                                          "password_file": str(state.password_file),
                                          "tls_ca_file": str(other.ca_file)})
    with pytest.raises(StateStoreError, match="certificate.*state.tls_ca_file"):
        open_store(config)


def test_a_wrong_password_names_the_password_file(pg_config: Config, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    state = pg_config.state
    config = config_with_state(tmp_path, {"url": state.url, "password_file": str(wrong),
                                          "tls_ca_file": str(state.tls_ca_file)})
    with pytest.raises(StateStoreError, match="state.password_file") as caught:
        open_store(config)
    assert "not-the-password" not in str(caught.value)


def test_every_gateway_hears_of_a_transition_at_once(pg_config: Config) -> None:
    listener = open_store(pg_config)
    assert listener.wait_for_change(0.1) is False  # nothing changed: the wait times out
    writer = open_store(pg_config)
    heard: list[float] = []

    def listen() -> None:
        if listener.wait_for_change(10):
            heard.append(time.monotonic())

    thread = threading.Thread(target=listen)
    thread.start()
    time.sleep(0.3)  # the LISTEN is in place (it was set up by the first wait)
    changed = time.monotonic()
    transition(writer, "failover", cause="test", actor="test")
    thread.join(timeout=15)
    assert heard and heard[0] - changed < 2
    writer.close()
    listener.close()


def test_a_writer_waits_for_the_other_to_commit(pg_config: Config) -> None:
    """transaction() holds the store's one writer lock from its start, like BEGIN IMMEDIATE."""
    first = open_store(pg_config)
    second = open_store(pg_config)
    entered: list[float] = []

    def other_writer() -> None:
        with second.transaction():
            entered.append(time.monotonic())

    with first.transaction():
        thread = threading.Thread(target=other_writer)
        thread.start()
        time.sleep(0.5)
        assert entered == []  # blocked while the first holds the lock
        released = time.monotonic()
    thread.join(timeout=10)
    assert entered and entered[0] >= released
    first.close()
    second.close()
