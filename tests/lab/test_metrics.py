"""The Prometheus endpoint on the lab's policyd: what it serves in normal times, during an
outage and after failback; off by default, loopback unless allowed; the docs' example rules
and dashboard use only names it serves."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pytest_mock import MockerFixture

from mailcontinuity.cli.main import main
from mailcontinuity.config import ConfigError, Endpoint, MetricsSection, load_config
from mailcontinuity.lab import Lab
from mailcontinuity.lab.daemon import DaemonPart
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import INTERNET_CLIENT
from mailcontinuity.lab.process import accepts_unix_connections, free_ports
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.monitor.protocol import action_kind
from mailcontinuity.reports.metrics import MetricsEndpoint, StoreCollector
from mailcontinuity.store.db import open_store
from tests.lab.backends import lab_on_both_stores
from tests.lab.journal_helpers import wait_for_empty_spool
from tests.lab.policyd_helpers import back_to_normal, refusal
from tests.lab.test_milter_faults import send_batch, stop_standby, wait_for_spooled
from tests.unit.test_config import VALID, write

lab_fixture = lab_on_both_stores()  # these tests touch the store: run on both

DOCS = Path(__file__).resolve().parents[2] / "docs"
SENDER = "partner@remote.test"


@dataclass
class Scrape:
    """One scrape of the endpoint: sample (name, labels) -> value."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` whose labels include ``labels``."""
        found = [value for (sample, have), value in self.samples.items()
                 if sample == name and set(labels.items()) <= have]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    def total(self, name: str) -> float:
        return sum(value for (sample, _), value in self.samples.items() if sample == name)

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def scrape(endpoint: Endpoint) -> Scrape:
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5) as response:
        return parse(response.read().decode())


def parse(text: str) -> Scrape:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples)


def assert_plausible(metrics: Scrape) -> None:
    """Nothing the endpoint serves about the journal is negative or not a number."""
    for name in ("mailcontinuity_journal_lag_seconds", "mailcontinuity_journal_spooled_messages",
                 "mailcontinuity_journal_spool_bytes", "mailcontinuity_journal_shipped_total",
                 "mailcontinuity_journal_failed_total"):
        value = metrics.value(name)
        assert math.isfinite(value) and value >= 0, f"{name} = {value}"
    assert metrics.total("mailcontinuity_scrape_error") == 0


@pytest.fixture
def normal_lab(lab: Lab) -> Iterator[Lab]:
    """The lab in ``normal`` before and after (primary, standby and policyd running)."""
    back_to_normal(lab)
    try:
        yield lab
    finally:
        lab.part("standby").start()
        back_to_normal(lab)


def test_normal_state_is_served(normal_lab: Lab) -> None:
    lab = normal_lab
    metrics = eventually(lambda: (m := scrape(lab.config.metrics.listen)).value(
        "mailcontinuity_probe_up", probe="delivery") == 1 and m, 10, "primary probed healthy")
    assert metrics.value("mailcontinuity_state", state="normal") == 1
    assert metrics.value("mailcontinuity_state", state="failover") == 0
    for probe in ("delivery", "imap"):
        assert metrics.value("mailcontinuity_probe_up", probe=probe) == 1
        assert 0 < metrics.value("mailcontinuity_probe_latency_seconds", probe=probe) < 1
    assert metrics.value("mailcontinuity_sync_agent_heartbeat_timestamp_seconds") > 0
    assert metrics.value("process_open_fds") > 0
    assert_plausible(metrics)


def test_spool_growth_and_drain_are_served(normal_lab: Lab) -> None:
    lab = normal_lab
    listen, spool_dir = lab.config.metrics.listen, lab.config.milter.spool_dir
    wait_for_empty_spool(spool_dir)
    shipped = scrape(listen).value("mailcontinuity_journal_shipped_total")
    stop_standby(lab)
    try:
        send_batch(lab, 2, "while the standby is down")
        wait_for_spooled(spool_dir, 2)
        held = scrape(listen)
        assert held.value("mailcontinuity_journal_spooled_messages") == 2
        assert held.value("mailcontinuity_journal_spool_bytes") > 200  # two whole messages
        assert held.value("mailcontinuity_journal_lag_seconds") > 0
        assert_plausible(held)
    finally:
        lab.part("standby").start()
    drained = eventually(lambda: (m := scrape(listen)).value(
        "mailcontinuity_journal_spooled_messages") == 0 and m, 30, "spool drained")
    assert drained.value("mailcontinuity_journal_spool_bytes") == 0
    assert drained.value("mailcontinuity_journal_lag_seconds") == 0
    assert drained.value("mailcontinuity_journal_shipped_total") >= shipped + 2
    assert_plausible(drained)


def test_outage_failover_policy_requests_and_failback_are_served(normal_lab: Lab) -> None:
    lab = normal_lab
    listen = lab.config.metrics.listen
    bob = lab.users[1]
    before = scrape(listen)
    lab.part("primary").stop()
    try:
        during = eventually(lambda: (m := scrape(listen)).value(
            "mailcontinuity_state", state="failover") == 1 and m, 15, "state failover served")
        assert during.value("mailcontinuity_state", state="normal") == 0
        assert during.value("mailcontinuity_probe_up", probe="delivery") == 0
        assert during.value("mailcontinuity_probe_up", probe="imap") == 0
        assert during.value("mailcontinuity_probe_latency_seconds", probe="delivery") > 0
        assert_plausible(during)

        requests = during.total("mailcontinuity_policy_requests_total")
        message = make_message(SENDER, [bob.address], "to the standby, counted by policyd")
        send_message(lab.gateway.smtp, message, SENDER, [bob.address], source=INTERNET_CLIENT)
        # An unknown recipient of a protected domain is deferred by policyd during failover
        # (policyd reads the state a fraction of a second after the store has it).
        eventually(lambda: refusal(lab, "nobody@example.test"), 5, "unknown recipient deferred")
        after = scrape(listen)
        assert after.total("mailcontinuity_policy_requests_total") >= requests + 2
        assert after.value("mailcontinuity_policy_requests_total", action="DEFER") >= 1
        # The sync agent opens the outage record on its next look at the state.
        recording = eventually(lambda: (m := scrape(listen)).value(
            "mailcontinuity_outage_status", status="recording") == 1 and m.value(
            "mailcontinuity_outage_activity", kind="new_messages") >= 1 and m, 15,
            "the message to bob recorded as outage activity of a new outage")
        assert recording.value("mailcontinuity_outage_status", status="recording") == 1, {
            key: value for key, value in recording.samples.items() if "outage" in key[0]}
        assert recording.value("mailcontinuity_outage_id") > before.value(
            "mailcontinuity_outage_id")
    finally:
        lab.part("primary").start()

    # The monitor fails back after the hold-down; the sync agent merges and sets normal (a
    # scrape may fall between the two: the record says merged, the state is still failback).
    merged = eventually(lambda: (m := scrape(listen)).value(
        "mailcontinuity_outage_status", status="merged") == 1 and m.value(
        "mailcontinuity_state", state="normal") == 1 and m,
        lab.config.health.hold_down_seconds + 30, "outage merged and the state normal")
    assert merged.value("mailcontinuity_failback_actions", status="done") >= 1
    assert merged.value("mailcontinuity_failback_actions", status="refused") == 0
    assert merged.value("mailcontinuity_outage_merged_timestamp_seconds") >= merged.value(
        "mailcontinuity_outage_started_timestamp_seconds")
    assert merged.value("mailcontinuity_probe_up", probe="delivery") == 1
    assert_plausible(merged)


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports a process listens on: its socket inodes matched against /proc/net/tcp*."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since the listing (the daemon opens and closes files)
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def test_metrics_are_off_by_default(lab: Lab, tmp_path: Path) -> None:
    """A policyd whose config has no [metrics] section listens on no TCP port at all (its own
    state store and socket, so that it never touches the lab's state)."""
    text = re.sub(r"\n\[metrics\]\n(?:[^\[].*\n|\n)*", "\n", lab.config_file.read_text())
    text = (text.replace(str(lab.config.state.path), str(tmp_path / "state.db"))
            .replace(str(lab.config.policyd.socket), str(tmp_path / "policyd.sock")))
    config_file = tmp_path / "mailcontinuity.toml"
    config_file.write_text(text)
    config = load_config(config_file)
    assert not config.metrics.enabled and config.metrics.listen == Endpoint("127.0.0.1", 9469)
    policyd = DaemonPart("policyd", config_file, tmp_path / "daemons",
                         lambda: accepts_unix_connections(tmp_path / "policyd.sock"))
    policyd.start()
    try:
        pid = policyd.pid()
        assert pid is not None
        assert listening_tcp_ports(pid) == set()
    finally:
        policyd.stop()
    assert "event=metrics_" not in policyd.log_file.read_text()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "[::]", "metrics.example.org"])
def test_remote_listen_needs_allow_remote(tmp_path: Path, host: str) -> None:
    path = write(tmp_path, VALID + f'\n[metrics]\nenabled = true\nlisten = "{host}:9469"\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and "metrics" in message and "allow_remote = true" in message
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code != 0
    assert "allow_remote" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    allowed = load_config(write(tmp_path, path.read_text() + "allow_remote = true\n"))
    assert allowed.metrics.listen.port == 9469


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "[::1]", "localhost"])
def test_loopback_listen_needs_nothing_more(tmp_path: Path, host: str) -> None:
    config = load_config(write(tmp_path, VALID + f'\n[metrics]\nlisten = "{host}:9100"\n'))
    assert config.metrics.listen.port == 9100 and not config.metrics.allow_remote


def docs_queries() -> list[str]:
    """Every PromQL expression in the example rules and the dashboard."""
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    queries = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    queries += [target["expr"] for panel in dashboard["panels"]
                for target in panel.get("targets", [])]
    return queries


def metric_names(node: object) -> set[str]:
    """Names of the series a parsed PromQL expression selects."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    names: set[str] = set()
    for attribute in ("lhs", "rhs", "expr", "args", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None:
                names |= metric_names(item)
    return names


def test_docs_rules_and_dashboard_use_only_served_metrics(normal_lab: Lab) -> None:
    served = scrape(normal_lab.config.metrics.listen).names
    used: set[str] = set()
    for query in docs_queries():
        # Grafana's interval variable is not PromQL; everything else must parse.
        used |= metric_names(promql_parser.parse(query.replace("$__rate_interval", "5m")))
    assert used - served - {"up"} == set(), "used in docs/ but not served"
    dashboard = (DOCS / "grafana-dashboard.json").read_text()
    unshown = {name for name in served if name.startswith("mailcontinuity_")
               and not name.endswith("_created") and name not in dashboard}
    assert unshown == set(), "served but on no dashboard panel"
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    for rule in (rule for group in rules["groups"] for rule in group["rules"]):
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
        assert rule["labels"]["severity"] in ("critical", "warning"), rule
    assert "up" in used, "no rule alerts on the endpoint itself being down"
    assert json.loads(dashboard)["__inputs"][0]["pluginId"] == "prometheus"


@pytest.mark.parametrize(("action", "kind"), [
    ("DUNNO", "DUNNO"), ("550 5.1.1 no such user", "REJECT"),
    ("450 4.2.0 mailbox temporarily unavailable, try again later", "DEFER"),
    ("REJECT go away", "REJECT"), ("450 4.7.1 later", "DEFER"), ("DEFER_IF_PERMIT x", "DEFER"),
    ("ok", "OK"), ("PREPEND X-Test: 1", "other"), ("250 fine", "other"),
])
def test_policy_answers_are_counted_by_a_few_kinds(action: str, kind: str) -> None:
    assert action_kind(action) == kind


def test_an_unreadable_part_is_a_metric_not_a_crash(lab: Lab, mocker: MockerFixture,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The spool becomes unreadable (fault injected): that section reports an error, the others
    are still served, the failure is logged once, and the next good scrape recovers."""
    store = open_store(lab.config)
    registry = CollectorRegistry()
    registry.register(StoreCollector(lab.config, store))
    try:
        mocker.patch("mailcontinuity.reports.metrics.spool_usage",
                     side_effect=PermissionError(13, "Permission denied"))
        with caplog.at_level(logging.DEBUG, logger="mailcontinuity.reports.metrics"):
            failing = [parse(generate_latest(registry).decode()) for _ in range(2)]
            mocker.stopall()
            recovered = parse(generate_latest(registry).decode())
        for metrics in failing:
            assert metrics.value("mailcontinuity_scrape_error", section="journal") == 1
            assert metrics.value("mailcontinuity_scrape_error", section="state") == 0
            assert metrics.total("mailcontinuity_state") == 1
            assert "mailcontinuity_journal_lag_seconds" not in metrics.names
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "section=journal" in errors[0].getMessage()
        assert recovered.total("mailcontinuity_scrape_error") == 0
        assert "event=metrics_section_recovered section=journal" in caplog.text
    finally:
        store.close()


def test_a_taken_port_is_logged_and_start_reports_it(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    """policyd (daemon.py) goes on without the endpoint when ``start`` says False."""
    port = free_ports(1)[0]
    config = lab.config.model_copy(update={
        "metrics": MetricsSection(enabled=True, listen=Endpoint("127.0.0.1", port))})
    with socket.create_server(("127.0.0.1", port)):
        endpoint = MetricsEndpoint(config, CollectorRegistry())
        try:
            assert endpoint.start() is False
        finally:
            endpoint.close()
    assert f"event=metrics_listen_failed listen=127.0.0.1:{port}" in caplog.text
