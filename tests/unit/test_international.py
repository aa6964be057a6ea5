"""SMTPUTF8 answers: which route refuses what, and what check-config tells the administrator."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from mailcontinuity.cli.main import main
from mailcontinuity.journal.international import (
    OUTAGE_REFUSAL,
    PRIMARY_REFUSAL,
    needs_smtputf8,
    route_refusal,
    strongest,
)
from tests.unit.test_config import VALID, write


def test_a_route_without_smtputf8_refuses_temporarily_only_during_an_outage() -> None:
    assert route_refusal(to_standby=True, primary_smtputf8=True, standby_smtputf8=False) \
        == OUTAGE_REFUSAL
    assert route_refusal(to_standby=True, primary_smtputf8=False, standby_smtputf8=False) \
        == OUTAGE_REFUSAL
    assert route_refusal(to_standby=False, primary_smtputf8=False, standby_smtputf8=True) \
        == PRIMARY_REFUSAL
    assert route_refusal(to_standby=True, primary_smtputf8=False, standby_smtputf8=True) is None
    assert route_refusal(to_standby=False, primary_smtputf8=True, standby_smtputf8=False) is None
    assert OUTAGE_REFUSAL.temporary and OUTAGE_REFUSAL.code == "451"
    assert OUTAGE_REFUSAL.status == "4.6.7"
    assert not PRIMARY_REFUSAL.temporary and PRIMARY_REFUSAL.status == "5.6.7"


def test_whole_message_answer_is_temporary_if_any_route_may_take_it_later() -> None:
    assert strongest([]) is None
    assert strongest([PRIMARY_REFUSAL, OUTAGE_REFUSAL]) == OUTAGE_REFUSAL
    assert strongest([PRIMARY_REFUSAL]) == PRIMARY_REFUSAL


@given(st.text(max_size=40))
def test_an_address_needs_smtputf8_exactly_when_it_is_not_ascii(address: str) -> None:
    assert needs_smtputf8(address) == any(ord(c) > 127 for c in address)


def test_check_config_says_what_happens_to_international_mail(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    out = CliRunner().invoke(main, ["--config", str(path), "check-config"]).stdout
    assert "# International mail (SMTPUTF8" in out
    assert "standby.smtputf8 = false: during an outage internationalised mail is refused" \
        " with 451 4.6.7" in out
    assert "Dovecot 2.3's LMTP cannot offer SMTPUTF8" in out
    enabled = write(tmp_path, VALID.replace('imap = "mail.example.org:143"',
                                            'imap = "mail.example.org:143"\nsmtputf8 = true'))
    report = json.loads(CliRunner().invoke(
        main, ["--config", str(enabled), "check-config", "--json"]).stdout)
    assert report["smtputf8"]["primary"] is True and report["smtputf8"]["standby"] is False
    assert any("waits in senders' queues" in note for note in report["smtputf8"]["notes"])
