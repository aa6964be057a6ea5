"""Failback on the lab: a scripted outage merged into the primary, each message exactly once."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mailcontinuity.cli import main
from mailcontinuity.lab import Lab
from mailcontinuity.routing import transport_entries
from mailcontinuity.state import StateStore
from tests.outage_script import assert_on_primary_once, restored, run_outage_script


def invoke(lab: Lab, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout) if "--json" in args else {}


def test_scripted_outage_merges_each_message_once_and_verify_is_clean(lab: Lab) -> None:
    with restored(lab):
        expected = run_outage_script(lab)
        code, plan = invoke(lab, "failback", "--dry-run", "--json")
        assert code == 0
        assert plan["counts"]["append"] >= 7 and plan["state"] == "failover"

        code, report = invoke(lab, "failback", "--yes", "--json")
        assert code == 0, report
        assert report["state"] == "normal" and report["refused"] == []
        assert_on_primary_once(lab, expected)
        code, audit = invoke(lab, "verify", "--json")
        assert code == 0 and audit["ok"], audit

        store = StateStore(lab.config.state.path)
        try:
            assert store.current_state().name == "normal"
            moves = [e.to_state for e in store.audit_log() if e.event == "transition"][-3:]
            assert moves == ["failover", "failback", "normal"]
        finally:
            store.close()
        routes = lab.config.gateway.transport_map.read_text()
        assert transport_entries(lab.config, "primary")[0] in routes.splitlines()

        code, again = invoke(lab, "failback", "--yes", "--json")
        assert code == 0 and again["note"] == "no outage to merge"
