"""policyd benchmark: policy requests/s and latency against postfwd, route switch and RTO.

One run, on one lab, prints three tables:

1. requests/s, p50 and p99 at 1, 10 and 50 concurrent connections for (a) our policyd and
   (b) Debian's postfwd2 with an equivalent one-rule config, both over TCP loopback, driven by
   the same asyncio load generator (its own process), each request with a new recipient so that
   no request cache can answer for the server;
2. the routing switch: switch_route's own duration, then how long a deferred message (queued for
   the dead primary) and a new message take to reach the standby INBOX;
3. RTO over 5 trials with the default [health] settings: primary stopped -> a message sent right
   after the stop is in the standby INBOX.

    .venv/bin/python bench/policyd_bench.py [--seconds 3] [--trials 5]

Needs root (the lab) and postfwd (installed with apt-get if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from mailcontinuity.config import Endpoint, load_config
from mailcontinuity.deploy.routing import switch_route
from mailcontinuity.lab import Lab
from mailcontinuity.lab.lab import LAB_HEALTH_SECTION
from mailcontinuity.lab.mailbox import INTERNET_CLIENT, wait_for_message
from mailcontinuity.lab.process import free_ports, stop_process_tree, wait_for
from mailcontinuity.mail.smtp import make_message, send_message
from mailcontinuity.store.db import open_store
from mailcontinuity.transitions import change_state

CONCURRENCY = (1, 10, 50)
MAX_REQUESTS_PER_RUN = 500_000
REQUEST = (
    "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    "helo_name=mx.remote.test\nqueue_id=\nsender=a@remote.test\nrecipient={n}@example.test\n"
    "recipient_count=0\nclient_address=192.0.2.7\nclient_name=unknown\n"
    "reverse_client_name=unknown\nclient_port=40000\nserver_address=127.0.0.1\n"
    "server_port=25\ninstance=1a2b.5f3c.{n}\nsize=0\netrn_domain=\nstress=\nsasl_method=\n"
    "sasl_username=\nsasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n"
    "ccert_pubkey_fingerprint=\nencryption_protocol=\nencryption_cipher=\n"
    "encryption_keysize=0\npolicy_context=\n\n"
)
POSTFWD_RULE = "id=R1; recipient_domain=example.test; action=DUNNO"


# --- load generator (runs in its own process) --------------------------------------------------

async def _connection(endpoint: Endpoint, deadline: float, offset: int,
                      latencies: list[float]) -> None:
    """One client like an smtpd: a persistent connection, reopened if the server closes it
    (postfwd2's children exit after a number of requests; Postfix reconnects, and so do we)."""
    n = offset
    while time.perf_counter() < deadline and len(latencies) < MAX_REQUESTS_PER_RUN:
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        try:
            while time.perf_counter() < deadline and len(latencies) < MAX_REQUESTS_PER_RUN:
                started = time.perf_counter()
                writer.write(REQUEST.format(n=n).encode())
                reply = await reader.readuntil(b"\n\n")
                latencies.append(time.perf_counter() - started)
                if not reply.startswith(b"action="):
                    raise RuntimeError(f"unexpected reply {reply!r}")
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # closed by the server: reconnect (the lost request is not counted)
        finally:
            writer.close()


def _generate(endpoint: Endpoint, connections: int, seconds: float) -> tuple[float, list[float]]:
    async def run() -> tuple[float, list[float]]:
        latencies: list[float] = []
        started = time.perf_counter()
        await asyncio.gather(*(_connection(endpoint, started + seconds, i * 10_000_000, latencies)
                               for i in range(connections)))
        return time.perf_counter() - started, latencies

    return asyncio.run(run())


def measure(endpoint: Endpoint, connections: int, seconds: float) -> dict[str, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        elapsed, latencies = pool.apply(_generate, (endpoint, connections, seconds))
    latencies.sort()
    return {"rps": len(latencies) / elapsed,
            "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000}


# --- servers ---------------------------------------------------------------------------------

def policyd_on_tcp(lab: Lab) -> Endpoint:
    """Restart the lab's policyd with a TCP listener added."""
    port = free_ports(1)[0]
    text = lab.config_file.read_text()
    listener = f'[policyd]\ntcp = "127.0.0.1:{port}"\n'
    lab.config_file.write_text(text.replace("[policyd]\n", listener))
    lab.part("policyd").stop()
    lab.part("policyd").start()
    endpoint = Endpoint("127.0.0.1", port)
    wait_for([endpoint], up=True, what="policyd tcp")
    return endpoint


def postfwd_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"postfwd2" in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def start_postfwd(workdir: Path) -> tuple[Endpoint, set[int]]:
    """postfwd2 with the one rule; returns its endpoint and the processes this run started
    (it daemonises into several process trees, so they are found by name, new ones only)."""
    if shutil.which("postfwd2") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfwd"],
                       check=True, stdout=subprocess.DEVNULL)
    rundir = workdir / "postfwd"
    rundir.mkdir()
    shutil.chown(rundir, "nobody", "nogroup")  # its cache daemon runs as nobody
    before = postfwd_pids()
    port = free_ports(1)[0]
    subprocess.run(
        ["postfwd2", "--nodns", "--perfmon", "-u", "nobody", "-g", "nogroup",
         "--server_socket", f"tcp:127.0.0.1:{port}",
         "--cache_socket", f"unix::{rundir}/cache.sock", "--pidfile", f"{rundir}/postfwd.pid",
         "--min_servers", "10", "--max_servers", "64", "--min_spare_servers", "5",
         "--max_spare_servers", "60", "-r", POSTFWD_RULE],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = Endpoint("127.0.0.1", port)
    wait_for([endpoint], up=True, what="postfwd2")
    time.sleep(1)  # its prefork children come up after the listener
    return endpoint, postfwd_pids() - before


def stop_postfwd(started: set[int]) -> None:
    for pid in started:
        stop_process_tree(pid)


def throughput(lab: Lab, workdir: Path, seconds: float) -> None:
    ours = policyd_on_tcp(lab)
    postfwd, postfwd_started = start_postfwd(workdir)
    try:
        print("== policy requests over TCP loopback "
              f"({seconds:g} s per run, one load-generator process)")
        print(f"{'connections':>11} | {'policyd req/s':>13} {'p50 ms':>7} {'p99 ms':>7} | "
              f"{'postfwd2 req/s':>14} {'p50 ms':>7} {'p99 ms':>7} | {'ratio':>5}")
        for connections in CONCURRENCY:
            a = measure(ours, connections, seconds)
            b = measure(postfwd, connections, seconds)
            print(f"{connections:>11} | {a['rps']:>13.0f} {a['p50']:>7.2f} {a['p99']:>7.2f} | "
                  f"{b['rps']:>14.0f} {b['p50']:>7.2f} {b['p99']:>7.2f} | "
                  f"{a['rps'] / b['rps']:>5.1f}")
    finally:
        stop_postfwd(postfwd_started)


# --- routing switch and RTO ------------------------------------------------------------------

def reset_normal(lab: Lab) -> None:
    store = open_store(lab.config)
    try:
        change_state(lab.config, store, "normal", "benchmark reset", "bench")
    finally:
        store.close()


def deliver_time(lab: Lab, message_id: str, since: float, address: str, password: str) -> float:
    raw = wait_for_message(lab.endpoint("standby", "imap"), address, password, message_id,
                           timeout=60)
    if raw is None:
        raise RuntimeError(f"{message_id} never reached the standby")
    return time.monotonic() - since


def route_switch(lab: Lab) -> None:
    alice = lab.users[0]
    lab.part("policyd").stop()  # the monitor must not switch on its own here
    lab.part("primary").stop()
    try:
        deferred = make_message("bench@remote.test", [alice.address], "deferred before switch")
        send_message(lab.gateway.smtp, deferred, "bench@remote.test", [alice.address],
                     source=INTERNET_CLIENT)
        time.sleep(1)  # the delivery attempt to the dead primary fails: deferred
        started = time.monotonic()
        switch_route(lab.config, "standby")
        switched = time.monotonic() - started
        new = make_message("bench@remote.test", [alice.address], "new after switch")
        send_message(lab.gateway.smtp, new, "bench@remote.test", [alice.address],
                     source=INTERNET_CLIENT)
        new_sent = time.monotonic()
        deferred_s = deliver_time(lab, deferred["Message-ID"], started, alice.login,
                                  alice.password)
        new_s = deliver_time(lab, new["Message-ID"], new_sent, alice.login, alice.password)
    finally:
        switch_route(lab.config, "primary")
        lab.part("primary").start()
        lab.part("policyd").start()
    print("== routing switch (hash: transport table + postfix reload + postqueue -f)")
    print(f"   switch_route itself                          {switched:6.2f} s")
    print(f"   deferred message in standby INBOX after      {deferred_s:6.2f} s from switch start")
    print(f"   new message in standby INBOX after           {new_s:6.2f} s from sending")


def rto(lab: Lab, trials: int) -> None:
    """Primary stopped -> a message sent right after the stop is in the standby INBOX."""
    text = lab.config_file.read_text()
    lab.config_file.write_text(text.replace(LAB_HEALTH_SECTION, "[health]\n"))
    defaults = load_config(lab.config_file).health
    lab.part("policyd").stop()
    lab.part("policyd").start()
    alice = lab.users[0]
    results = []
    for trial in range(trials):
        reset_normal(lab)
        time.sleep(defaults.interval_seconds * 2)  # a healthy round or two first
        started = time.monotonic()
        lab.part("primary").stop()
        try:
            message = make_message("bench@remote.test", [alice.address], f"rto trial {trial}")
            send_message(lab.gateway.smtp, message, "bench@remote.test", [alice.address],
                         source=INTERNET_CLIENT)
            results.append(deliver_time(lab, message["Message-ID"], started, alice.login,
                                        alice.password))
        finally:
            lab.part("primary").start()
    reset_normal(lab)
    print(f"== RTO with the default [health] settings (interval {defaults.interval_seconds:g} s,"
          f" timeout {defaults.timeout_seconds:g} s, {defaults.failures} failures over"
          f" >= {defaults.failure_window_seconds:g} s)")
    print("   primary stopped -> first new message in the standby INBOX, over"
          f" {trials} trials: " + ", ".join(f"{r:.2f}" for r in results) + " s")
    print(f"   median {statistics.median(results):.2f} s, max {max(results):.2f} s"
          " (target: under 15 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    parser.add_argument("--trials", type=int, default=5, help="RTO trials")
    args = parser.parse_args()
    with Lab.temporary(prefix="mcbench-") as lab:
        throughput(lab, lab.dir, args.seconds)
        route_switch(lab)
        rto(lab, args.trials)


if __name__ == "__main__":
    main()
