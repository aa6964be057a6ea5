"""The end of a failback: the outage record merged and the state ``normal`` in one transaction,
on both backends (on PostgreSQL the metrics once read the record merged while the state still
said ``failback``: two commits apart)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from mailcontinuity.config import Config
from mailcontinuity.outage.merge import FailbackReport, finish_failback
from mailcontinuity.store.db import open_store
from mailcontinuity.store.outages import ChangeLog, Outage
from mailcontinuity.store.state import current_state, transition


def in_failback(config: Config) -> tuple[ChangeLog, Outage]:
    store = open_store(config)
    transition(store, "failover", cause="test", actor="test")
    changelog = ChangeLog(store)
    outage = changelog.start_outage()
    assert outage is not None
    transition(store, "failback", cause="test", actor="test")
    changelog.set_outage(outage.id, status="merging")
    return changelog, outage


def seen_from_elsewhere(config: Config, outage: Outage) -> tuple[str, str]:
    """(state, outage status) as another process reads them."""
    store = open_store(config)
    try:
        record = ChangeLog(store).last_outage()
        assert record is not None and record.id == outage.id
        return current_state(store).name, record.status
    finally:
        store.close()


def test_the_record_is_merged_with_the_return_to_normal(store_config: Config,
                                                        tmp_path: Path) -> None:
    config = store_config.model_copy(update={"hooks_dir": tmp_path / "hooks"})
    changelog, outage = in_failback(config)
    try:
        finish_failback(config, changelog, outage, FailbackReport(outage.id, "failback"), "test")
        assert seen_from_elsewhere(config, outage) == ("normal", "merged")
        record = changelog.last_outage()
        assert record is not None and record.merged_at is not None
        assert record.summary["outage"] == outage.id
    finally:
        changelog.store.close()


def test_a_failed_transition_leaves_the_record_merging(store_config: Config, tmp_path: Path,
                                                       mocker: MockerFixture) -> None:
    """Neither without the other: the audit insert fails, so the transaction rolls back."""
    config = store_config.model_copy(update={"hooks_dir": tmp_path / "hooks"})
    changelog, outage = in_failback(config)
    try:
        mocker.patch("mailcontinuity.store.state.insert_audit",
                     side_effect=RuntimeError("injected"))
        with pytest.raises(RuntimeError, match="injected"):
            finish_failback(config, changelog, outage, FailbackReport(outage.id, "failback"),
                            "test")
        assert seen_from_elsewhere(config, outage) == ("failback", "merging")
    finally:
        changelog.store.close()


def test_a_state_already_normal_still_closes_the_record(store_config: Config,
                                                        tmp_path: Path) -> None:
    config = store_config.model_copy(update={"hooks_dir": tmp_path / "hooks"})
    changelog, outage = in_failback(config)
    try:
        transition(changelog.store, "normal", cause="operator", actor="test")
        finish_failback(config, changelog, outage, FailbackReport(outage.id, "failback"), "test")
        assert seen_from_elsewhere(config, outage) == ("normal", "merged")
    finally:
        changelog.store.close()
