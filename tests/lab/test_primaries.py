"""Failback, verify and the probes against every kind of primary the lab offers: the scripted
outage merged into a Dovecot primary whose user has a nested ``Parent/Child`` folder (its
parent not selectable), and into a real Cyrus IMAP (folders under ``INBOX.``, no master user:
an admin with SASL PLAIN proxy authentication)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.scenario import OutageScenario, audit_deliveries, restored
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.smtp import make_message
from mailcontinuity.store.db import open_store
from mailcontinuity.transitions import change_state

KINDS = ["dovecot", "cyrus"]


@pytest.fixture(scope="module", params=KINDS)
def kind_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab.temporary(prefix=f"mclab-{request.param}-", primary=request.param) as lab:
        yield lab


def invoke(lab: Lab, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout) if "--json" in args else {}


def nested_folder_on_primary(lab: Lab) -> str:
    """Alice has ``Parent/Child`` on the primary (created as a client would: the child only)
    with a message in it; returns that message's Message-ID."""
    alice = lab.users[0]
    message = make_message("old@remote.test", [alice.address], "kept in a nested folder")
    with imap_login(lab.endpoint("primary", "imap"), alice.login, alice.password) as client:
        separator = client.list_folders()[0][1].decode()
        prefix = client.namespace().personal[0][0]
        prefix = prefix.decode() if isinstance(prefix, bytes) else prefix
        name = f"{prefix}Parent{separator}Child"
        if not client.folder_exists(name):
            client.create_folder(name)
        client.append(name, message.as_bytes())
    return str(message["Message-ID"])


def test_primary_is_healthy_and_its_kind_is_the_one_asked_for(kind_lab: Lab) -> None:
    description = json.loads((kind_lab.dir / "lab.json").read_text())
    assert description["primary_kind"] == kind_lab.primary_kind
    assert set(description["primary"]) == {"imap", "lmtp", "managesieve"}
    report = eventually(lambda: (got := invoke(kind_lab, "status", "--json")[1])["primary"]
                        ["healthy"] and got, 30, "the primary's probes to pass")
    assert {probe["probe"] for probe in report["primary"]["last_probes"]} == {"delivery", "imap"}
    assert all(probe["ok"] for probe in report["primary"]["last_probes"]), report


def test_scripted_outage_merges_once_into_the_primary_twice_over(kind_lab: Lab) -> None:
    nested = nested_folder_on_primary(kind_lab)
    scenario = OutageScenario(kind_lab)
    scenario.before_outage()
    scenario.force_failover()
    scenario.during_outage()
    scenario.activity_on_standby()
    eventually(lambda: invoke(kind_lab, "status", "--json")[1]["outage"]["activity"]
               ["new_messages"] >= 8, 15, "the agent's record of the outage activity")

    code, report = invoke(kind_lab, "failback", "--yes", "--json")
    assert code == 0, report
    assert report["state"] == "normal" and report["refused"] == [], report
    checked = scenario.check_primary()
    assert (checked.lost, checked.duplicated, checked.misplaced) == ([], [], [])
    code, audit = invoke(kind_lab, "verify", "--json")
    assert code == 0 and audit["ok"], audit

    # A second failback finds nothing to do and changes nothing on the primary.
    code, again = invoke(kind_lab, "failback", "--yes", "--json")
    assert code == 0 and again["refused"] == [], again
    checked = scenario.check_primary()
    assert (checked.lost, checked.duplicated, checked.misplaced) == ([], [], [])
    alice = kind_lab.users[0]
    lost, duplicated, _ = audit_deliveries(kind_lab, [("nested", nested, [alice.address])])
    assert (lost, duplicated) == ([], [])


def test_wrong_failback_credentials_fail_the_drill_and_failback_refuses_to_start(
        kind_lab: Lab, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-admin-password\n")
    wrong.chmod(0o600)
    text = kind_lab.config_file.read_text()
    broken = tmp_path / "mailcontinuity.toml"
    broken.write_text(re.sub(r"(?m)^password_file = .*$", f'password_file = "{wrong}"', text))
    result = CliRunner().invoke(main, ["--config", str(broken), "drill", "--json"])
    steps = {step["name"]: step for step in json.loads(result.stdout)["steps"]}
    step = steps["failback credentials on the primary"]
    assert not step["passed"] and not step["skipped"] and step["advice"], step
    assert "login as probe@example.test" in step["detail"], step

    with restored(kind_lab):
        store = open_store(kind_lab.config)
        try:
            assert change_state(kind_lab.config, store, "failover", "test", "test",
                                expect=("normal",))
        finally:
            store.close()
        result = CliRunner().invoke(main, ["--config", str(broken), "failback", "--yes"])
        assert result.exit_code != 0
        assert "preflight" in result.output and "stays failover" in result.output, result.output
        assert invoke(kind_lab, "status", "--json")[1]["state"] == "failover"
        code, report = invoke(kind_lab, "failback", "--yes", "--json")
        assert code == 0 and report["state"] == "normal", report
