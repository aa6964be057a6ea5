"""Several hosts, one truth: two gateways and a standby host sharing a real PostgreSQL store
(``lab up --gateways 2``), with real Postfix and Dovecot.

The primary stops: both gateways' policyds vote, one transition is recorded, both Postfix route
to the standby, mail through gw2 reaches the standby, users' activity is recorded on the standby
host; the primary returns: the quorum fails back, the standby host's agent merges exactly once,
both gateways route to the primary again. Every host's ``status --json`` agrees at each step.
The store stopped during an outage: mail keeps flowing with the last routing and every host
catches up when it returns. gw2 cut off from the primary alone (``lab isolate``): no failover,
status says gw2 cannot see the primary, mail through gw2 waits in its queue and arrives after
``lab heal``, none bounced.

The deciding policyd killed with SIGKILL inside its transition: exactly one transition.

Cuts that no source address could tell apart (each host runs in a cgroup of its own,
``lab.cgroups``): the standby cut from the primary during an outage's failback (``failback``
run on the standby host fails naming the primary, loses nothing, merges exactly once after the
heal); gw2 cut from the standby (its milter's journal LMTP waits in gw2's spool and arrives
after the heal); gw2 cut from the store (``status`` run on gw2 says the store is unreachable,
other hosts read it).

The whole lab runs in a network namespace of the module's own (``own_network_namespace``), so
the cuts' nftables table never touches the machine's ruleset.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailcontinuity.cli.main import main
from mailcontinuity.config import load_config, parse_endpoint
from mailcontinuity.deploy.routing import installed_route
from mailcontinuity.journal.spool import spool_usage
from mailcontinuity.lab import Lab
from mailcontinuity.lab.cgroups import run_on_host
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.hosts import part_host
from mailcontinuity.lab.mailbox import wait_for_message
from mailcontinuity.lab.netcut import (
    CUTS_FILE,
    cgroup_name,
    own_network_namespace,
    table_name,
)
from mailcontinuity.lab.postgres import DATABASE
from mailcontinuity.mail.imap import imap_login
from mailcontinuity.mail.postfix import run_postfix
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.store.audit import audit_log
from mailcontinuity.store.db import open_store

OUTSIDER = "sender@remote.test"
HOSTS = ("gw1", "gw2", "standby")


@pytest.fixture(scope="module")
def site() -> Iterator[Lab]:
    with own_network_namespace(), Lab.temporary(prefix="mcmh-", gateways=2) as lab:
        yield lab


def host_json(lab: Lab, host: str, *args: str) -> tuple[int, dict[str, Any]]:
    """A command's exit status and its JSON (the last object printed) on ``host``."""
    config = lab.dir / "hosts" / host / "mailcontinuity.toml"
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, dict(json.loads(result.stdout[: result.stdout.rindex("}") + 1]))


def host_status(lab: Lab, host: str) -> dict[str, Any]:
    return host_json(lab, host, "status", "--json")[1]


def agreed_state(lab: Lab) -> str | None:
    """The state every host's status reports, or None while they differ."""
    states = {host_status(lab, host)["state"] for host in HOSTS}
    return states.pop() if len(states) == 1 else None


def routes(lab: Lab) -> set[str | None]:
    """The route of each gateway's own Postfix (its transport table)."""
    description = json.loads((lab.dir / "lab.json").read_text())
    return {installed_route(load_config(Path(gateway["config"])))
            for gateway in description["gateways"]}


def transitions(lab: Lab) -> list[tuple[str | None, str | None]]:
    store = open_store(lab.config)
    try:
        return [(e.from_state, e.to_state) for e in audit_log(store) if e.event == "transition"]
    finally:
        store.close()


def test_lab_json_keeps_its_keys_and_names_every_host(site: Lab) -> None:
    description = json.loads((site.dir / "lab.json").read_text())
    for key in ("gateway", "primary", "standby", "users", "domains", "config"):
        assert key in description
    assert [g["name"] for g in description["gateways"]] == ["gw1", "gw2"]
    assert description["gateway"]["smtp"] == description["gateways"][0]["smtp"]
    assert set(description["hosts"]) == {"gw1", "gw2", "standby"}
    assert description["config"] == description["hosts"]["standby"]["config"]
    for host in HOSTS:
        config = load_config(Path(description["hosts"][host]["config"]))
        assert config.state.backend == "postgresql"
        assert config.cluster is not None and config.cluster.host == host
    assert set(site.parts) >= {"state", "primary", "standby", "sync-agent", "gw1/policyd",
                               "gw2/policyd", "gw2/milter", "gw2/gateway"}


def test_every_host_runs_in_its_own_cgroup(site: Lab) -> None:
    """What the cuts match on (lab.cgroups): each running part's processes are in its host's
    group, and 'lab run' puts a command there too."""
    assert site.hosts is not None
    cgroups = site.hosts.cgroups
    for name, part in site.parts.items():
        pid = part.pid()
        host = part_host(name)
        if pid is None or host not in site.hosts.host_names:
            continue
        assert pid in cgroups.processes(host), (name, pid, host)
    # 'lab run HOST' exits with the command's status: status --json on gw2 reads the store.
    ran = CliRunner().invoke(main, ["lab", "run", "gw2", "--dir", str(site.dir), "--",
                                    "status", "--json"])
    assert ran.exit_code == 0, ran.output
    shown = run_on_host(cgroups, "standby", ["cat", "/proc/self/cgroup"]).stdout
    assert shown.strip().endswith(f"/{cgroup_name(site.dir)}/standby"), shown


def test_outage_and_failback_across_hosts(site: Lab) -> None:
    lab = site
    eventually(lambda: agreed_state(lab) == "normal", 20, "every host says normal")
    assert routes(lab) == {"primary"}
    before = len(transitions(lab))
    alice = lab.users[0]
    gw2 = parse_endpoint(json.loads((lab.dir / "lab.json").read_text())["gateways"][1]["smtp"])

    lab.part("primary").stop()
    try:
        eventually(lambda: agreed_state(lab) == "failover", 30, "every host says failover")
        eventually(lambda: routes(lab) == {"standby"}, 20, "both gateways route to the standby")
        made = transitions(lab)[before:]
        assert made == [("normal", "failover")], made  # exactly one, however many voted
        status = host_status(lab, "standby")
        assert {g["name"]: g["vote"] for g in status["cluster"]["gateways"]} == {
            "gw1": "down", "gw2": "down"}

        message = make_message(OUTSIDER, [alice.address], "through gw2 during the outage")
        send_message(gw2, message, OUTSIDER, [alice.address])
        assert wait_for_message(lab.endpoint("standby", "imap"), alice.login, alice.password,
                                message["Message-ID"], timeout=30)
        outage = host_status(lab, "gw1")["outage"]
        assert outage is not None
        eventually(lambda: host_status(lab, "gw2")["outage"]["activity"]["new_messages"] >= 1,
                   20, "the standby host's agent recorded the outage mail")
    finally:
        lab.part("primary").start()

    eventually(lambda: agreed_state(lab) == "normal", 60, "failback merged, every host normal")
    eventually(lambda: routes(lab) == {"primary"}, 20, "both gateways route to the primary")
    made = transitions(lab)[before:]
    assert made == [("normal", "failover"), ("failover", "failback"), ("failback", "normal")]
    assert wait_for_message(lab.endpoint("primary", "imap"), alice.login, alice.password,
                            message["Message-ID"], timeout=30)
    store = open_store(lab.config)
    try:
        merges = [e for e in audit_log(store) if e.event == "merge"]
    finally:
        store.close()
    assert len(merges) == 1 and merges[0].actor == "sync-agent"
    # verify and drill answer the same on every host (they read the shared store and the
    # primary, not this host's files).
    verdicts = [host_json(lab, host, "verify", "--json") for host in HOSTS]
    assert all(code == 0 for code, _ in verdicts), verdicts
    assert verdicts[0][1]["ok"] is True and all(v == verdicts[0][1] for _, v in verdicts), verdicts


def test_store_stopped_during_an_outage(site: Lab) -> None:
    """Mail keeps flowing with the last routing; status says the store is the problem; every
    host catches up when it returns."""
    lab = site
    eventually(lambda: agreed_state(lab) == "normal", 30, "every host says normal")
    alice = lab.users[0]
    gw2 = parse_endpoint(json.loads((lab.dir / "lab.json").read_text())["gateways"][1]["smtp"])
    lab.part("primary").stop()
    try:
        eventually(lambda: agreed_state(lab) == "failover", 30, "every host says failover")
        eventually(lambda: routes(lab) == {"standby"}, 20, "both gateways route to the standby")
        lab.part("state").stop()
        try:
            status = host_status(lab, "gw2")
            assert status["state"] is None and status["store"]["reachable"] is False
            assert any(p["part"] == "store" for p in status["problems"])
            message = make_message(OUTSIDER, [alice.address], "while the store is down")
            send_message(gw2, message, OUTSIDER, [alice.address])
            assert wait_for_message(lab.endpoint("standby", "imap"), alice.login,
                                    alice.password, message["Message-ID"], timeout=30)
            assert routes(lab) == {"standby"}  # fail-open: the last routing stays
        finally:
            lab.part("state").start()
        eventually(lambda: agreed_state(lab) == "failover", 30, "every host reads it again")
    finally:
        lab.part("primary").start()
    eventually(lambda: agreed_state(lab) == "normal", 60, "failback merged, every host normal")
    eventually(lambda: routes(lab) == {"primary"}, 20, "both gateways route to the primary")
    assert wait_for_message(lab.endpoint("primary", "imap"), alice.login, alice.password,
                            message["Message-ID"], timeout=30)


def policyd_blocked_in_the_transition(lab: Lab, pids: dict[int, str]) -> str | None:
    """The gateway whose policyd's transition waits on the state row (its UPDATE is running,
    inside the transaction), found from its store connection's client port."""
    assert lab.hosts is not None
    with lab.hosts.store_server().admin(DATABASE) as admin:
        row = admin.execute("SELECT client_port FROM pg_stat_activity WHERE wait_event_type ="
                            " 'Lock' AND query LIKE 'UPDATE state %'").fetchone()
    if row is None:
        return None
    sockets = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{row[0]} )"],
                             capture_output=True, text=True, check=True).stdout
    owners = [name for pid, name in pids.items() if f"pid={pid}," in sockets]
    return owners[0] if owners else None


def test_deciding_policyd_killed_during_the_transition(site: Lab) -> None:
    """The primary stops; the state row is held so that the gateway's policyd that decides
    is caught inside its transition (after the quorum guard, at the UPDATE); it is killed
    with SIGKILL there. Its transaction dies with it, the other gateway makes the transition:
    exactly one is recorded; the killed policyd, started again, routes by it and adds none."""
    lab = site
    assert lab.hosts is not None
    eventually(lambda: agreed_state(lab) == "normal", 30, "every host says normal")
    before = len(transitions(lab))
    pids = {pid: name for name in ("gw1", "gw2")
            if (pid := lab.part(f"{name}/policyd").pid()) is not None}
    assert len(pids) == 2
    lab.part("primary").stop()
    try:
        with lab.hosts.store_server().admin(DATABASE) as holder, holder.transaction():
            holder.execute("SELECT name FROM state WHERE id = 1 FOR UPDATE")
            # Detection (probes failing over the window, on both gateways for the quorum)
            # takes 10-20 s; CI's loaded run once needed more than 30.
            decider = eventually(lambda: policyd_blocked_in_the_transition(lab, pids), 60,
                                 "a gateway's policyd inside its transition")
            os.kill(lab.part(f"{decider}/policyd").pid() or 0, signal.SIGKILL)
            eventually(lambda: lab.part(f"{decider}/policyd").pid() is None, 10,
                       f"{decider}'s policyd gone")
        # The row is free: the killed policyd's transaction is rolled back, the other's runs.
        eventually(lambda: len(transitions(lab)) > before, 30, "the other gateway decides")
        lab.part(f"{decider}/policyd").start()
        eventually(lambda: agreed_state(lab) == "failover", 30, "every host says failover")
        eventually(lambda: routes(lab) == {"standby"}, 30, "both gateways route to the standby")
        assert transitions(lab)[before:] == [("normal", "failover")]
    finally:
        lab.part("primary").start()
    eventually(lambda: agreed_state(lab) == "normal", 60, "failback merged, every host normal")
    eventually(lambda: routes(lab) == {"primary"}, 20, "both gateways route to the primary")
    assert transitions(lab)[before:] == [("normal", "failover"), ("failover", "failback"),
                                         ("failback", "normal")]


def lab_command(lab: Lab, *args: str) -> str:
    result = CliRunner().invoke(main, ["lab", *args, "--dir", str(lab.dir)])
    assert result.exit_code == 0, result.output
    return result.output


def gateway_sees_primary(lab: Lab, gateway: str, host: str = "gw1") -> bool | None:
    """What ``host``'s status says ``gateway`` sees of the primary (None: no fresh report)."""
    cluster = host_status(lab, host)["cluster"]
    return {g["name"]: g["sees_primary"] for g in cluster["gateways"]}[gateway]


def test_gateway_cut_off_from_the_primary_alone(site: Lab) -> None:
    """gw2 cannot reach the primary, gw1 can: no failover (quorum); every host's status says
    gw2 cannot see it; mail through gw2 waits in gw2's queue and is delivered after the
    heal, none bounced."""
    lab = site
    eventually(lambda: agreed_state(lab) == "normal", 30, "every host says normal")
    eventually(lambda: gateway_sees_primary(lab, "gw2") is True, 20, "gw2 sees the primary")
    before = len(transitions(lab))
    alice = lab.users[0]
    gw2 = lab.hosts.gateway("gw2") if lab.hosts else None
    assert gw2 is not None
    log_start = gw2.log_file.stat().st_size if gw2.log_file.exists() else 0
    out = lab_command(lab, "isolate", "gw2", "--from", "primary")
    assert "gw2 cut from primary" in out, out
    try:
        rules = subprocess.run(["nft", "list", "table", "inet", table_name(lab.dir)],
                               capture_output=True, text=True, check=True).stdout
        group = cgroup_name(lab.dir)
        assert f"{group}/gw2" in rules and f"{group}/primary" in rules, rules
        eventually(lambda: gateway_sees_primary(lab, "gw2") is False, 30,
                   "gw2's probes of the primary fail")
        status = host_status(lab, "gw2")
        assert status["state"] == "normal"
        problems = [p["detail"] for p in status["problems"] if p["part"] == "primary"]
        assert any("gw2 cannot reach the primary" in detail for detail in problems), status
        assert gateway_sees_primary(lab, "gw1", host="gw2") is True
        text = CliRunner().invoke(main, ["--config", str(lab.dir / "hosts" / "gw2" /
                                                          "mailcontinuity.toml"), "status"])
        assert "gw2: policyd" in text.stdout and "sees the primary FAILING" in text.stdout

        message = make_message(OUTSIDER, [alice.address], "through gw2, cut from the primary")
        send_message(gw2.smtp, message, OUTSIDER, [alice.address])  # accepted: 250

        def queued() -> bool:
            return alice.address in run_postfix(gw2.config_dir, "postqueue", "-p")

        eventually(queued, 10, "the message in gw2's queue")
        # Several probe rounds (0.5 s each) later: not delivered, still queued, no failover.
        assert not wait_for_message(lab.endpoint("primary", "imap"), alice.login,
                                    alice.password, message["Message-ID"], timeout=4)
        assert queued() and gateway_sees_primary(lab, "gw2") is False
        assert len(transitions(lab)) == before and agreed_state(lab) == "normal"
        assert routes(lab) == {"primary"}
    finally:
        healed = lab_command(lab, "heal")
    assert "gw2|primary" in healed, healed
    assert not (lab.dir / CUTS_FILE).exists()
    gw2.flush()  # retry the deferred mail now rather than at the next queue run
    assert wait_for_message(lab.endpoint("primary", "imap"), alice.login, alice.password,
                            message["Message-ID"], timeout=60)
    log = gw2.log_file.read_bytes()[log_start:].decode(errors="replace")
    assert "status=bounced" not in log and "sender non-delivery notification" not in log, log
    eventually(lambda: gateway_sees_primary(lab, "gw2") is True, 30, "gw2 sees it again")
    assert len(transitions(lab)) == before


def test_drill_passes_on_every_gateway(site: Lab) -> None:
    """The drill from each gateway, through that gateway's own Postfix (the probe account into
    the standby, the routing switch for the probe address in its transport table...): every
    step runs, none is skipped but the credentials copy (no [credentials] here). (The lab's
    hosts share one file system, so a drill on the standby host would pass by editing gw1's
    transport table; on real hosts it belongs on a gateway, docs/topologies.md.)"""
    eventually(lambda: agreed_state(site) == "normal", 30, "every host says normal")
    for host in ("gw1", "gw2"):
        code, report = host_json(site, host, "drill", "--json")
        failed = [step["name"] for step in report["steps"]
                  if not step["passed"] and not step["skipped"]]
        # The lab has no directory, hence no [credentials]: that step alone has nothing to do.
        skipped = [step["name"] for step in report["steps"] if step["skipped"]
                   and step["name"] != "credentials copy on the standby"]
        assert (code, report["passed"], failed, skipped) == (0, True, [], []), (host, report)


def merges(lab: Lab) -> list[str]:
    store = open_store(lab.config)
    try:
        return [e.actor for e in audit_log(store) if e.event == "merge"]
    finally:
        store.close()


def test_standby_cut_from_the_primary_during_the_failback(site: Lab) -> None:
    """Neither side a gateway, every connection from 127.0.0.1: the standby host's failback
    cannot reach the primary, says so naming it, loses nothing; after the heal a re-run merges
    exactly once."""
    lab = site
    assert lab.hosts is not None
    eventually(lambda: agreed_state(lab) == "normal", 30, "every host says normal")
    alice = lab.users[0]
    before, merged = len(transitions(lab)), len(merges(lab))
    lab.part("sync-agent").stop()  # the failback is the operator's, run on the standby host
    try:
        lab.part("primary").stop()
        try:
            eventually(lambda: agreed_state(lab) == "failover", 30, "every host says failover")
            eventually(lambda: routes(lab) == {"standby"}, 20, "both gateways route to standby")
            message = make_message(OUTSIDER, [alice.address], "outage mail, failback cut off")
            send_message(lab.gateway.smtp, message, OUTSIDER, [alice.address])
            assert wait_for_message(lab.endpoint("standby", "imap"), alice.login,
                                    alice.password, message["Message-ID"], timeout=30)
            lab_command(lab, "isolate", "standby", "--from", "primary")
        finally:
            lab.part("primary").start()
        try:
            # The gateways see the primary again (they are not cut): the quorum fails back.
            eventually(lambda: agreed_state(lab) == "failback", 60, "every host says failback")
            cut = lab.hosts.run("standby", "failback", "--yes")
            assert cut.returncode != 0, cut.stdout + cut.stderr
            error = cut.stderr.strip().splitlines()[-1]
            # "Error: primary IMAP 127.0.0.1:PORT: timed out; is the primary up ...?"
            assert error.startswith("Error: primary IMAP ") and "timed out" in error, error
            assert "Traceback" not in cut.stderr, cut.stderr
            assert len(fetch_by_id(lab, "standby", message["Message-ID"])) == 1  # kept
            assert len(merges(lab)) == merged and agreed_state(lab) == "failback"
            assert not wait_for_message(lab.endpoint("primary", "imap"), alice.login,
                                        alice.password, message["Message-ID"], timeout=1)
        finally:
            lab_command(lab, "heal")
        healed = lab.hosts.run("standby", "failback", "--yes", "--json")
        assert healed.returncode == 0, healed.stdout + healed.stderr
    finally:
        lab.part("sync-agent").start()
    eventually(lambda: agreed_state(lab) == "normal", 30, "every host says normal")
    assert len(merges(lab)) == merged + 1
    assert transitions(lab)[before:] == [("normal", "failover"), ("failover", "failback"),
                                         ("failback", "normal")]
    assert wait_for_message(lab.endpoint("primary", "imap"), alice.login, alice.password,
                            message["Message-ID"], timeout=30)
    assert len(fetch_by_id(lab, "primary", message["Message-ID"])) == 1  # merged once


def fetch_by_id(lab: Lab, role: str, message_id: str) -> list[int]:
    alice = lab.users[0]
    with imap_login(lab.endpoint(role, "imap"), alice.login, alice.password) as client:
        client.select_folder("INBOX", readonly=True)
        return list(client.search(["HEADER", "Message-ID", message_id]))


def test_gateway_cut_from_the_standby_keeps_its_journal_copies(site: Lab) -> None:
    """gw2's milter ships its journal copies to the standby's LMTP from 127.0.0.1: cut, they
    wait in gw2's spool (the mail itself reaches the primary); healed, each arrives once."""
    lab = site
    assert lab.hosts is not None
    eventually(lambda: agreed_state(lab) == "normal", 30, "every host says normal")
    alice = lab.users[0]
    gw2 = lab.hosts.gateway("gw2")
    spool = lab.hosts.config("gw2").milter.spool_dir
    eventually(lambda: spool_usage(spool).entries == 0, 20, "gw2's spool empty")
    lab_command(lab, "isolate", "gw2", "--from", "standby")
    try:
        message = make_message(OUTSIDER, [alice.address], "journal copy through a cut")
        send_message(gw2.smtp, message, OUTSIDER, [alice.address])
        assert wait_for_message(lab.endpoint("primary", "imap"), alice.login, alice.password,
                                message["Message-ID"], timeout=30)
        # Several retries (0.5 s to 5 s apart) later: the copy is still in gw2's spool.
        assert not wait_for_message(lab.endpoint("standby", "imap"), alice.login,
                                    alice.password, message["Message-ID"], timeout=6)
        assert spool_usage(spool).entries >= 1
    finally:
        lab_command(lab, "heal")
    assert wait_for_message(lab.endpoint("standby", "imap"), alice.login, alice.password,
                            message["Message-ID"], timeout=30)
    eventually(lambda: spool_usage(spool).entries == 0, 30, "gw2's spool drained")
    assert len(fetch_by_id(lab, "standby", message["Message-ID"])) == 1


def test_gateway_cut_from_the_store(site: Lab) -> None:
    """Store connections (psycopg, from 127.0.0.1) are cut too: ``status`` run on gw2 says
    the store is unreachable while gw1 reads it; healed, gw2 reads it again."""
    lab = site
    assert lab.hosts is not None
    eventually(lambda: agreed_state(lab) == "normal", 30, "every host says normal")
    lab_command(lab, "isolate", "gw2", "--from", "state")
    try:
        cut = lab.hosts.run("gw2", "status", "--json")
        status = json.loads(cut.stdout[: cut.stdout.rindex("}") + 1])
        assert status["state"] is None and status["store"]["reachable"] is False, status
        assert any(p["part"] == "store" for p in status["problems"])
        other = lab.hosts.run("gw1", "status", "--json")
        assert json.loads(other.stdout[: other.stdout.rindex("}") + 1])["state"] == "normal"
    finally:
        lab_command(lab, "heal")
    healed = lab.hosts.run("gw2", "status", "--json")
    assert json.loads(healed.stdout[: healed.stdout.rindex("}") + 1])["state"] == "normal"
