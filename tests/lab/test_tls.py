"""TLS on the hops to the primary: a client given the wrong CA refuses and says why, the right
one works. (The journal LMTP hop to the standby is tested in test_milter_lmtp.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.config import load_config
from mailcontinuity.deploy.routing import tls_policy_entries, write_tls_policy_map
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.mailbox import wait_for_message
from mailcontinuity.lab.scenario import restored
from mailcontinuity.lab.tls import LabCertificates
from mailcontinuity.mail.postfix import reload_postfix, run_postfix, write_indexed_map
from mailcontinuity.mail.tls import TLSPolicy
from mailcontinuity.monitor.probes import probe_primary
from tests.lab.outage_helpers import (
    begin_outage,
    forced_outage,
    gateway_mail,
    on_primary_once,
    wait_all,
)
from tests.lab.policyd_helpers import wait_for_state


@pytest.fixture(scope="module")
def distrusting_config(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's configuration with both sides' tls_ca_file pointing at an unrelated CA."""
    directory = tmp_path_factory.mktemp("wrong-ca")
    # In the lab's directory: Postfix's delivery agents must be able to read it (as tafile).
    other = LabCertificates(lab.dir / "wrong-ca").create("some other CA")
    lab_ca = json.dumps(str(LabCertificates(lab.dir / "tls").ca_file))
    text = lab.config_file.read_text()
    assert text.count(f"tls_ca_file = {lab_ca}") == 3
    path = directory / "mailcontinuity.toml"
    path.write_text(text.replace(f"tls_ca_file = {lab_ca}",
                                 f"tls_ca_file = {json.dumps(str(other.ca_file))}"))
    return path


def run_cli(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    return result.exit_code, result.stderr


def test_failback_with_a_wrong_ca_refuses_and_says_why(lab: Lab,
                                                      distrusting_config: Path) -> None:
    alice = lab.users[0]
    with restored(lab):
        begin_outage(lab)
        during = gateway_mail(lab, [alice], "during an outage, merged over TLS")
        wait_all(lab, "standby", [alice], during["Message-ID"])
        code, stderr = run_cli(distrusting_config, "failback", "--yes")
        assert code == 1
        reason = stderr.strip().splitlines()[-1]
        # Refused by the preflight, before the state switches.
        assert reason.startswith("Error: failback not started, the state stays failover"), stderr
        assert "primary IMAP" in reason and "certificate not accepted" in reason
        assert "primary.tls_ca_file" in reason
        # The lab's own configuration trusts the lab's CA: the same failback goes through,
        # run here or by the lab's sync agent, which resumes a failback it finds in progress.
        code, stderr = run_cli(lab.config_file, "failback", "--yes")
        assert code == 0 or "is in progress in process" in stderr, stderr
        wait_for_state(lab, "normal", timeout=30)
    assert on_primary_once(lab, alice, during["Message-ID"]) == ["INBOX"]


def gateway_log_after(lab: Lab, offset: int) -> str:
    return lab.gateway.log_file.read_bytes()[offset:].decode("utf-8", "replace")


def test_the_gateway_delivers_to_both_stores_over_verified_tls(lab: Lab) -> None:
    alice = lab.users[0]
    offset = lab.gateway.log_file.stat().st_size
    normal = gateway_mail(lab, [alice], "verified TLS to the primary")
    wait_all(lab, "primary", [alice], normal["Message-ID"])
    with forced_outage(lab):
        outage = gateway_mail(lab, [alice], "verified TLS to the standby")
        wait_all(lab, "standby", [alice], outage["Message-ID"])
    log = gateway_log_after(lab, offset)
    for side in ("primary", "standby"):
        port = lab.endpoint(side, "lmtp").port
        assert f"Verified TLS connection established to 127.0.0.1[127.0.0.1]:{port}" in log


def test_the_gateway_defers_rather_than_deliver_to_an_unverified_store(
        lab: Lab, distrusting_config: Path) -> None:
    """With the primary's entry trusting another CA, Postfix keeps the mail queued; once the
    table is right again the same message is delivered: deferred, never lost or sent in clear."""
    alice = lab.users[0]
    config_dir = lab.config.gateway.postfix_config_dir
    offset = lab.gateway.log_file.stat().st_size
    write_indexed_map(config_dir, lab.config.gateway.tls_policy_map,
                      tls_policy_entries(load_config(distrusting_config)))
    # A restart, not a reload: Postfix's connection cache may hold a session verified before.
    lab.gateway.stop()
    lab.gateway.start()
    try:
        held = gateway_mail(lab, [alice], "held back: the primary cannot be verified")
        eventually(lambda: "Server certificate not verified" in gateway_log_after(lab, offset),
                   20, "a deferral for the unverified certificate")
        assert wait_for_message(lab.endpoint("primary", "imap"), alice.login, alice.password,
                                held["Message-ID"], timeout=1) is None
    finally:
        write_tls_policy_map(lab.config)
        reload_postfix(config_dir)
    run_postfix(config_dir, "postqueue", "-f")
    wait_all(lab, "primary", [alice], held["Message-ID"])


def test_health_probes_with_a_wrong_ca_fail_with_the_reason(lab: Lab,
                                                           distrusting_config: Path) -> None:
    wrong = load_config(distrusting_config)
    results = asyncio.run(probe_primary(wrong, TLSPolicy.of(wrong, "primary")))
    assert {result.probe for result in results} == {"delivery", "imap", "imap_login"}
    for result in results:
        assert not result.ok
        assert "certificate not accepted" in result.error, result.error
    results = asyncio.run(probe_primary(lab.config, lab.tls("primary")))
    assert all(result.ok for result in results), results


def test_a_probe_secret_with_a_bad_mode_does_not_fail_the_primary(
        lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A mistake on this host (someone rewrote the probe password file with umask 022) is
    logged; the primary is still probed, without LOGIN, and stays healthy."""
    exposed = tmp_path / "imap-probe-password"
    exposed.write_text("whatever\n")
    settings = lab.config.health.model_copy(update={"imap_password_file": exposed})
    config = lab.config.model_copy(update={"health": settings})
    exposed.chmod(0o644)
    results = asyncio.run(probe_primary(config, lab.tls("primary")))
    assert all(result.ok for result in results), results
    assert "event=probe_login_skipped" in caplog.text and "chmod 600" in caplog.text


def test_sieve_sync_with_a_wrong_ca_reports_it_per_user(lab: Lab,
                                                       distrusting_config: Path) -> None:
    code, stderr = run_cli(distrusting_config, "sieve-sync")
    assert code == 1
    reason = stderr.strip().splitlines()[-1]
    assert "certificate not accepted" in reason and "primary ManageSieve" in reason, stderr
