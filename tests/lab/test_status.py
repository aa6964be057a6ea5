"""``mailcontinuity status`` on the lab's configuration."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from tests.lab.backends import lab_on_both_stores

lab_fixture = lab_on_both_stores()  # these tests touch the store: run on both


def test_status_json_reports_normal_on_a_fresh_store(lab: Lab) -> None:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "status", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["state"] == "normal"
    assert report["primary"]["policyd"]["running"] is True
    assert report["primary"]["healthy"] in (True, None)  # None until policyd's first probe
    assert report["outage"] is None
    assert report["protected_domains"] == ["example.test"]
    assert isinstance(report["protected"], bool) and isinstance(report["problems"], list)
    assert report["protected"] == (report["problems"] == [])


def test_status_text_is_readable(lab: Lab) -> None:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "status"])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith(("PROTECTED: ", "NOT PROTECTED ("))  # the verdict comes first
    assert "\nstate:    normal since " in result.stdout
    assert "\nprimary:  " in result.stdout
    assert "\npolicyd:  running (pid " in result.stdout
