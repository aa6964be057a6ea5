"""``mailcontinuity drill`` on the lab: passes when everything runs, names the broken step
otherwise."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.reports.drill import Drill, StepFailed
from mailcontinuity.store.db import open_store
from tests.lab.backends import lab_on_both_stores

lab_fixture = lab_on_both_stores()  # these tests touch the store: run on both


def run_drill(lab: Lab) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "drill", "--json"])
    report = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    return result.exit_code, report


def failed_steps(report: dict) -> list[str]:
    return [step["name"] for step in report["steps"] if not step["passed"] and not step["skipped"]]


@contextmanager
def stopped(lab: Lab, name: str) -> Iterator[None]:
    lab.part(name).stop()
    try:
        yield
    finally:
        lab.part(name).start()


def test_drill_passes_on_a_healthy_lab_and_archives_its_report(lab: Lab) -> None:
    code, report = run_drill(lab)
    assert code == 0, report
    assert report["passed"] is True
    assert [step["name"] for step in report["steps"]] == [
        "standby reachable", "login with production credentials", "send from the standby",
        "receive through the gateway into the standby", "journal lag",
        "routing switch for the probe address", "failback credentials on the primary",
        "international mail (SMTPUTF8)", "sieve scripts in sync",
        "credentials copy on the standby"]
    # The session lab has no directory ([credentials]): the step says so and is skipped.
    copy = next(s for s in report["steps"] if s["name"] == "credentials copy on the standby")
    assert copy["skipped"] and "no [credentials]" in copy["detail"]
    utf8 = next(s for s in report["steps"] if s["name"] == "international mail (SMTPUTF8)")
    # The lab's stores are Dovecot 2.3: neither LMTP offers SMTPUTF8, and the drill says so.
    assert "standby lmtp:" in utf8["detail"] and "does not offer SMTPUTF8" in utf8["detail"]
    assert "refused during an outage (451 4.6.7" in utf8["detail"]
    archived = json.loads(Path(report["archived_to"]).read_text())
    assert archived["passed"] is True
    # The probe's override is gone: the protected domain alone routes to the primary again.
    table = lab.config.gateway.transport_map.read_text()
    assert "probe@" not in table


@pytest.mark.parametrize(
    ("part", "first_failure"),
    [
        ("standby", "standby reachable"),
        ("gateway", "send from the standby"),
        ("milter", "receive through the gateway into the standby"),
    ],
)
def test_drill_names_the_failing_step(lab: Lab, part: str, first_failure: str) -> None:
    with stopped(lab, part):
        code, report = run_drill(lab)
    assert code == 1
    failures = failed_steps(report)
    assert failures and failures[0] == first_failure, report["steps"]
    failed = next(step for step in report["steps"] if step["name"] == first_failure)
    assert failed["advice"], "a failed step must tell the operator what to check next"
    # Whatever failed, the probe's routing override does not outlive the drill.
    assert "probe@" not in lab.config.gateway.transport_map.read_text()


def test_drill_fails_a_standby_said_to_take_smtputf8_that_does_not(lab: Lab) -> None:
    """Told "yes" wrongly, the gateway would accept and bounce: the drill must catch it."""
    config = lab.config.model_copy(
        update={"standby": lab.config.standby.model_copy(update={"smtputf8": True})})
    store = open_store(config)
    try:
        with pytest.raises(StepFailed) as failed:
            Drill(config, store).smtputf8_routes()
    finally:
        store.close()
    assert "standby.smtputf8 = true but" in str(failed.value)
    assert "standby.smtputf8 = false" in failed.value.advice
