"""Every watched part stopped in turn on the lab: ``status --json`` names it within 30 s,
``status --check`` exits 2, the metric changes, and the matching example alert rule's
expression is true on what the endpoint serves. And a milter that answers but that Postfix does
not reach: the journal's pace gives it away."""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT
from mailcontinuity.mail.postfix import run_postfix
from mailcontinuity.mail.smtp import make_message, send_message
from tests.lab.backends import lab_on_both_stores
from tests.lab.policyd_helpers import back_to_normal
from tests.lab.promql import fires
from tests.lab.test_metrics import scrape

DOCS = Path(__file__).resolve().parents[2] / "docs"
DETECTION_SECONDS = 30
# The example rule that must fire when the part is down (docs/prometheus-alerts.yml).
ALERT_FOR_PART = {
    "milter": "MailcontinuityMilterDown",
    "standby": "MailcontinuityStandbyDown",
    "sync-agent": "MailcontinuitySyncAgentDown",
    "policyd": "MailcontinuityEndpointDown",
    "store": "MailcontinuityStoreUnavailable",
    "webmail": "MailcontinuityWebmailDown",
}

lab_fixture = lab_on_both_stores()  # every verdict is read from the store: run on both


def alert_expr(name: str) -> str:
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    [expr] = [rule["expr"] for group in rules["groups"] for rule in group["rules"]
              if rule["alert"] == name]
    return str(expr)


def status(lab: Lab, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(lab.config_file), "status", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def status_json(lab: Lab) -> dict[str, Any]:
    code, out = status(lab, "--json")
    assert code == 0, out
    return dict(json.loads(out))


def wait_protected(lab: Lab, timeout: float = 120) -> dict[str, Any]:
    """The lab back to protected; on timeout, the problems it still has."""
    seen: list[dict[str, Any]] = []

    def protected() -> bool:
        seen[:] = [status_json(lab)]
        return bool(seen[0]["protected"])

    try:
        eventually(protected, timeout, "the lab protected", interval=1)
    except AssertionError:
        raise AssertionError(f"not protected within {timeout}s: {seen[0]['problems']}") from None
    return seen[0]


@pytest.fixture
def watched_lab(lab: Lab) -> Iterator[Lab]:
    """The session lab with every part running, its webmail too (``standby.webmail`` in the
    config, policyd restarted to read it), protected before and after."""
    back_to_normal(lab)
    full = Lab.up(lab.dir, webmail=True)
    assert full.config.standby.webmail is not None
    wait_protected(full)
    try:
        yield full
    finally:
        for part in full.parts.values():
            part.start()
        back_to_normal(full)


@contextmanager
def store_unavailable(lab: Lab) -> Iterator[None]:
    """The state store gone. SQLite: a directory where the file was, so every new connection
    fails; the daemons' open ones keep the file, which comes back afterwards. PostgreSQL: the
    lab's server (part ``state``) stopped, every connection gone; the daemons reconnect when it
    is started again."""
    if lab.config.state.url is not None:
        lab.part("state").stop()
        try:
            yield
        finally:
            lab.part("state").start()
        return
    path = lab.config.state.path
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    path.mkdir()
    try:
        yield
    finally:
        path.rmdir()
        aside.rename(path)


@contextmanager
def stopped(lab: Lab, part: str) -> Iterator[None]:
    if part == "store":
        with store_unavailable(lab):
            yield
        return
    lab.part(part).stop()
    try:
        yield
    finally:
        lab.part(part).start()


def served(lab: Lab) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The endpoint's samples, plus the ``up`` Prometheus records for the scrape (0 when the
    endpoint does not answer)."""
    try:
        samples = dict(scrape(lab.config.metrics.listen).samples)
        up = 1.0
    except (urllib.error.URLError, ConnectionError):
        samples, up = {}, 0.0
    samples[("up", frozenset({("job", "mailcontinuity")}))] = up
    return samples


@pytest.mark.parametrize("part", list(ALERT_FOR_PART))
def test_each_watched_part_stopped_is_named_checked_served_and_alerted(
        watched_lab: Lab, part: str) -> None:
    lab = watched_lab
    before = served(lab)
    if part != "policyd":
        assert before[("mailcontinuity_part_ok", frozenset({("part", part)}))] == 1
    assert not fires(alert_expr(ALERT_FOR_PART[part]), before)
    assert not fires(alert_expr("MailcontinuityNotProtected"), before)
    with stopped(lab, part):
        report = eventually(lambda: (got := status_json(lab))["problems"]
                            and part in {p["part"] for p in got["problems"]} and got,
                            DETECTION_SECONDS, f"status naming {part}", interval=0.5)
        assert report["protected"] is False
        problem = next(p for p in report["problems"] if p["part"] == part)
        assert problem["detail"] and problem["action"] and problem["since"] <= report[
            "generated_at"]
        code, line = status(lab, "--check")
        assert code == 2, line
        assert line.startswith("MAILCONTINUITY CRITICAL - NOT PROTECTED:") and part in line
        assert len(line.strip().splitlines()) == 1 and " | " in line
        text = status(lab)[1]
        assert text.startswith("NOT PROTECTED (CRITICAL)") and f"  {part}" in text
        during = eventually(lambda: (s := served(lab)) and fires(
            alert_expr(ALERT_FOR_PART[part]), s) and s, DETECTION_SECONDS,
            f"{ALERT_FOR_PART[part]} true on the served metrics")
        if part != "policyd":
            assert during[("mailcontinuity_part_ok", frozenset({("part", part)}))] == 0
            assert during[("mailcontinuity_protected", frozenset())] == 0
            assert fires(alert_expr("MailcontinuityNotProtected"), during)
    wait_protected(lab, timeout=60)


def test_a_milter_postfix_does_not_reach_shows_in_the_journal_pace(watched_lab: Lab) -> None:
    """The milter answers its probe, but the gateway's smtpd_milters names another socket:
    mail is accepted unjournaled (milter_default_action = accept) and the pace check says so."""
    lab = watched_lab
    config_dir = lab.gateway.config_dir
    original = run_postfix(config_dir, "postconf", "-h", "smtpd_milters").strip()
    run_postfix(config_dir, "postconf", "-e", f"smtpd_milters = unix:{lab.dir}/no-milter.sock")
    lab.gateway.reload()
    try:
        recipient = lab.users[2].address
        for number in range(lab.config.watch.journal_pace_min_messages + 1):
            message = make_message("partner@remote.test", [recipient], f"unjournaled {number}")
            send_message(lab.gateway.smtp, message, "partner@remote.test", [recipient],
                         source=INTERNET_CLIENT)
        report = eventually(lambda: (got := status_json(lab))["problems"] and got,
                            DETECTION_SECONDS, "status naming the milter", interval=0.5)
        [problem] = report["problems"]
        assert problem["part"] == "milter" and "does not reach the milter" in problem["detail"]
        assert "socket" not in {c["check"] for c in report["checks"] if not c["ok"]}
        assert status(lab, "--check")[0] == 2
        metrics = eventually(lambda: (s := served(lab)) and fires(
            alert_expr("MailcontinuityJournalNotKeepingPace"), s) and s, DETECTION_SECONDS,
            "the pace alert true on the served metrics")
        assert metrics[("mailcontinuity_pace_journaled_messages", frozenset())] * 2 < metrics[
            ("mailcontinuity_pace_accepted_messages", frozenset())]
    finally:
        run_postfix(config_dir, "postconf", "-e", f"smtpd_milters = {original}")
        lab.gateway.reload()
