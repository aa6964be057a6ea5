"""Several hosts, one store: how fast every gateway follows a transition, and what the
PostgreSQL backend costs policyd, side by side with SQLite, in one run.

1. Time from a transition (recorded on the standby host, which routes nothing) to the last of N
   gateways whose Postfix routes to the standby (transport table rewritten, Postfix reloaded),
   for N = 2 and 4, over several trials each way (failover, then back to normal).
2. policyd requests/s, p50 and p99 at 1 and 10 connections on two single-host labs up at the
   same time, identical but for the store (``lab up --state sqlite|postgresql``), measured in
   turn over several rounds so the machine's load falls on both alike; same load generator as
   bench/policyd_bench.py.
3. RTO with the default [health] settings, two gateways (the quorum of both deciding) beside
   the single-host lab: primary stopped -> every gateway's transport table routes to the
   standby.

    .venv/bin/python bench/multihost_bench.py [--trials 5] [--seconds 3] [--rounds 3]
        [--rto-trials 3] [--only-policyd | --only-rto]

Needs root (the labs).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import time
from pathlib import Path

from policyd_bench import measure, reset_normal

from mailcontinuity.config import Config, Endpoint, load_config
from mailcontinuity.deploy.routing import installed_route
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.process import free_ports, wait_for
from mailcontinuity.store.db import open_store
from mailcontinuity.store.state import StateName
from mailcontinuity.transitions import ROUTE_IN_STATE, change_state

CONNECTIONS = (1, 10)
LAB_TIMINGS = {"interval_seconds", "timeout_seconds", "failures", "failure_window_seconds",
               "successes", "hold_down_seconds"}


def gateway_configs(lab: Lab) -> list[Path]:
    description = json.loads((lab.dir / "lab.json").read_text())
    return [Path(gateway["config"]) for gateway in description["gateways"]]


def routed_everywhere(configs: list[Config], route: str) -> bool:
    return all(installed_route(config) == route for config in configs)


def follow_times(lab: Lab, trials: int) -> list[float]:
    """Seconds from each transition's commit to the last gateway routing by it."""
    configs = [load_config(path) for path in gateway_configs(lab)]
    store = open_store(lab.config)  # the standby host's: it records, the gateways route
    times = []
    try:
        for trial in range(2 * trials):
            to_state: StateName = "failover" if trial % 2 == 0 else "normal"
            route = ROUTE_IN_STATE[to_state]
            started = time.perf_counter()
            assert change_state(lab.config, store, to_state, "benchmark", "bench",
                                expect=("failback", "failover", "normal"))
            eventually(functools.partial(routed_everywhere, configs, route), 30,
                       f"every gateway routes to the {route}", interval=0.005)
            times.append(time.perf_counter() - started)
            time.sleep(0.5)
    finally:
        store.close()
    return times


def policyd_tcp(lab: Lab, config_file: Path, part: str) -> Endpoint:
    """Restart one policyd with a TCP listener added (as bench/policyd_bench.py does)."""
    port = free_ports(1)[0]
    text = config_file.read_text()
    config_file.write_text(text.replace("[policyd]\n", f'[policyd]\ntcp = "127.0.0.1:{port}"\n',
                                        1))
    lab.part(part).stop()
    lab.part(part).start()
    endpoint = Endpoint("127.0.0.1", port)
    wait_for([endpoint], up=True, what="policyd tcp")
    return endpoint


def rto_times(lab: Lab, config_files: list[Path], policyds: list[str],
              trials: int) -> list[float]:
    """Primary stopped -> every gateway's transport table routes to the standby, with the
    default [health] on every gateway's policyd. (Not "mail in the standby INBOX": the milter's
    journal copy is there at once whatever the routing.)"""
    for config_file, part in zip(config_files, policyds, strict=True):
        # The lab's short timings out ([health] keeps its other keys: the IMAP probe's login).
        config_file.write_text("".join(
            line for line in config_file.read_text().splitlines(keepends=True)
            if line.split("=")[0].strip() not in LAB_TIMINGS))
        lab.part(part).stop()
        lab.part(part).start()
    configs = [load_config(path) for path in config_files]
    interval = configs[0].health.interval_seconds
    results = []
    for _ in range(trials):
        reset_normal(lab)
        eventually(functools.partial(routed_everywhere, configs, "primary"), 30, "normal routes")
        time.sleep(interval * 2)  # a healthy round or two first
        started = time.monotonic()
        lab.part("primary").stop()
        try:
            eventually(functools.partial(routed_everywhere, configs, "standby"), 120,
                       "every gateway routes to the standby", interval=0.02)
            results.append(time.monotonic() - started)
        finally:
            lab.part("primary").start()
    reset_normal(lab)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rto-trials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved policyd measurements per store")
    parser.add_argument("--only-rto", action="store_true", help="skip sections 1 and 2")
    parser.add_argument("--only-policyd", action="store_true", help="section 2 only")
    args = parser.parse_args()
    if args.only_rto:
        rto_section(args.rto_trials)
        return
    if args.only_policyd:
        policyd_section(args.seconds, args.rounds)
        return

    print("## Time from the transition to the last gateway routing by it")
    print("| gateways | trials | median ms | max ms |")
    print("| --- | --- | --- | --- |")
    for count in (2, 4):
        with Lab.temporary(prefix="mcbench-mh-", gateways=count) as lab:
            times = follow_times(lab, args.trials)
        print(f"| {count} | {len(times)} | {statistics.median(times) * 1000:.0f} |"
              f" {max(times) * 1000:.0f} |")

    print()
    policyd_section(args.seconds, args.rounds)
    rto_section(args.rto_trials)


def policyd_section(seconds: float, rounds: int) -> None:
    """Two single-host labs up at once, identical but for the store (``lab up --state``), each
    policyd measured in turn, ``rounds`` times: the machine's load falls on both alike."""
    print(f"## policyd: SQLite beside PostgreSQL (single-host labs, {rounds} interleaved rounds"
          f" of {seconds:.0f} s; load average {os.getloadavg()[0]:.1f} at the start)")
    print("| store | connections | requests/s (median) | p50 ms (median) | p99 ms (median) |"
          " p99 ms (each round) |")
    print("| --- | --- | --- | --- | --- | --- |")
    with contextlib.ExitStack() as labs:
        endpoints = {}
        for backend in ("sqlite", "postgresql"):
            lab = labs.enter_context(Lab.temporary(prefix="mcbench-one-", state=backend))
            endpoints[backend] = policyd_tcp(lab, lab.config_file, "policyd")
        figures: dict[tuple[str, int], list[dict[str, float]]] = {}
        for _ in range(rounds):
            for connections in CONNECTIONS:
                for backend, endpoint in endpoints.items():
                    figures.setdefault((backend, connections), []).append(
                        measure(endpoint, connections, seconds))
    for (backend, connections), runs in sorted(figures.items(), key=lambda item: item[0][1]):
        name = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[backend]
        print(f"| {name} | {connections} |"
              f" {statistics.median(run['rps'] for run in runs):.0f} |"
              f" {statistics.median(run['p50'] for run in runs):.2f} |"
              f" {statistics.median(run['p99'] for run in runs):.2f} |"
              f" {', '.join(format(run['p99'], '.2f') for run in runs)} |")
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)")


def rto_section(trials: int) -> None:
    print()
    print("## RTO with the default [health]: primary stopped -> every gateway routes to the"
          " standby")
    print("| lab | trials | seconds | median s |")
    print("| --- | --- | --- | --- |")
    with Lab.temporary(prefix="mcbench-one-") as single:
        times = rto_times(single, [single.config_file], ["policyd"], trials)
        print(f"| one gateway (SQLite) | {trials} | {', '.join(f'{t:.2f}' for t in times)} |"
              f" {statistics.median(times):.2f} |")
    with Lab.temporary(prefix="mcbench-mh-", gateways=2) as site:
        times = rto_times(site, gateway_configs(site), ["gw1/policyd", "gw2/policyd"], trials)
        print(f"| two gateways (PostgreSQL, quorum of both) | {trials} |"
              f" {', '.join(f'{t:.2f}' for t in times)} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
