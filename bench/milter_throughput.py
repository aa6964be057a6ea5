"""Journal milter throughput: Postfix's smtp-source into the lab gateway, smtp-sink as the primary.

One run, three set-ups side by side (issue 3):
  (a) no journaling: no milter, no bcc;
  (b) our milter (the lab's: unix socket, maildir sink into the standby);
  (c) what an administrator would do without us: ``always_bcc`` to the standby over LMTP.
Prints messages/s at acceptance (smtp-source's wall time) and until everything is delivered
(queue empty, and for (b) the journal spool shipped), then (b)/(a) and (b)/(c). With
``--modes none,empty,milter,bcc`` it also measures the floor: an empty pymilter
(bench/empty_milter.py) on a unix socket; ``steps`` adds an empty pymilter negotiating the
journal milter's own protocol steps (HELO, DATA, an answered RCPT), to tell what those steps
cost from what our work costs.

CPU per message, broken down by part (bench/cpu_accounting.py, control groups): the milter
process, the Postfix gateway, policyd, the standby Dovecot, the load generator (smtp-source,
smtp-sink, this script), kernel threads, and the whole machine; user and kernel time apart.

    .venv/bin/python bench/milter_throughput.py --messages 5000 --sessions 20 --size 10240

``--lab-parent DIR`` runs the lab (Postfix's queue, the journal spool, the standby's Maildirs)
on the file system holding DIR: every mode creates and deletes files there, so the file
system's inode allocator is part of what is measured (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cpu_accounting import CpuGroups, CpuTime

from mailcontinuity.config import Endpoint
from mailcontinuity.deploy.routing import ROUTE_HEADER
from mailcontinuity.deploy.settings import postfix_main_settings
from mailcontinuity.journal.spool import spool_usage
from mailcontinuity.lab import Lab
from mailcontinuity.lab.eventually import eventually
from mailcontinuity.lab.lab import JOURNAL_LMTP_HOST
from mailcontinuity.lab.process import descendants, free_ports, wait_for
from mailcontinuity.mail.postfix import run_postfix, write_indexed_map

RECIPIENT = "alice@example.test"
GROUPS = ("milter", "postfix", "policyd", "sync-agent", "standby", "load")
BCC = "alice+journal@example.test"


def configure(lab: Lab, mode: str, sink: Endpoint) -> None:
    """Point the gateway at smtp-sink and switch journaling: none, empty, milter or always_bcc."""
    milters = postfix_main_settings(lab.config)
    for empty in EMPTY_MILTERS:
        milters[empty] = f"unix:{empty_socket(lab, empty)}"
    journal_lmtp = f"lmtp:inet:[{JOURNAL_LMTP_HOST}]:{lab.config.standby.lmtp.port}"
    settings = {
        "smtpd_milters": {"milter": milters["smtpd_milters"],
                          **{empty: milters[empty] for empty in EMPTY_MILTERS}}.get(mode, ""),
        "non_smtpd_milters": milters["non_smtpd_milters"] if mode == "milter" else "",
        "always_bcc": BCC if mode == "bcc" else "",
    }
    run_postfix(lab.gateway.config_dir, "postconf", "-e",
                *[f"{key}={value}" for key, value in settings.items()])
    # The header says "routed to the primary": the lab's policyd follows the state and puts
    # back any table without it (the primary's LMTP instead of smtp-sink, and a reload).
    write_indexed_map(lab.gateway.config_dir, lab.config.gateway.transport_map, [
        f"{ROUTE_HEADER}primary",
        f"{BCC} {journal_lmtp}",
        *[f"{domain} smtp:[{sink.host}]:{sink.port}" for domain in lab.config.domains.protected],
    ])
    run_postfix(lab.gateway.config_dir, "postfix", "reload")
    time.sleep(2)  # let the reload settle before measuring


def as_a_site_runs_it(lab: Lab) -> None:
    """The lab's milter asks the standby's userdb about a recipient again after 1 s, so that
    tests see a stopped standby at once; a site keeps the answer for the default 300 s
    (``milter.recipient_cache_seconds``). Left at 1 s, the bench timed a ``doveadm user`` run
    a second, ~25 ms of CPU each, ~0.1 ms a message at these rates."""
    config = lab.config.source
    setting = "recipient_cache_seconds = 1\n"
    text = config.read_text()
    assert setting in text, f"the lab's {config} no longer sets {setting.strip()!r}"
    config.write_text(text.replace(setting, ""))
    milter = lab.part("milter")
    milter.stop()
    milter.start()


def empty_socket(lab: Lab, mode: str) -> Path:
    return lab.dir / "bench" / f"{mode}.sock"


QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


def queue_empty(queue_directory: Path) -> bool:
    """No queue file left: a walk of Postfix's queue directories, not ``postqueue -j``, which
    forks and has showq read every queued file; polled ten times a second, that cost grew with
    the queue and ran beside the deliveries being timed (in the load row, most of it)."""
    return not any(files for queue in QUEUES
                   for _, _, files in os.walk(queue_directory / queue))


def measure(lab: Lab, args: argparse.Namespace, groups: CpuGroups,
            ) -> tuple[float, float, dict[str, CpuTime]]:
    """(seconds until smtp-source finished, seconds until delivered and journaled, the CPU
    each part had used when smtp-source finished)."""
    gateway = lab.gateway.smtp
    started = time.monotonic()
    subprocess.run(
        ["smtp-source", "-4", "-s", str(args.sessions), "-m", str(args.messages),
         "-l", str(args.size), "-f", "bench@remote.test", "-t", RECIPIENT,
         f"{gateway.host}:{gateway.port}"],
        check=True, stdout=subprocess.DEVNULL, timeout=args.timeout,
    )
    accepted = time.monotonic() - started
    at_acceptance = groups.read()
    deadline = started + args.timeout
    spool = lab.config.milter.spool_dir
    while not (queue_empty(lab.gateway.queue_dir) and spool_usage(spool).entries == 0):
        if time.monotonic() > deadline:
            raise SystemExit("queue or journal spool did not drain in time")
        time.sleep(0.1)
    return accepted, time.monotonic() - started, at_acceptance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240, help="payload bytes per message")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--modes", default="none,milter,bcc")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every mode this many times, in the order given, then"
                             " reversed, and so on: a mode's place in the run (what the lab"
                             " still does after start-up, the queue the last mode left) weighs"
                             " on every mode alike; ratios are the median of the rounds'")
    parser.add_argument("--lab-parent", type=Path, default=Path("/tmp"),
                        help="where the lab lives, with its queue, spool and Maildirs: a"
                             " directory on the file system to measure on")
    args = parser.parse_args()
    [sink_port] = free_ports(1)
    sink = Endpoint("127.0.0.1", sink_port)
    results: dict[str, list[tuple[float, float]]] = {}
    cpu: dict[str, dict[str, CpuTime]] = {}
    accepting: dict[str, dict[str, CpuTime]] = {}
    empties: list[subprocess.Popen[bytes]] = []
    with CpuGroups(GROUPS) as groups:
        groups.add("load", [os.getpid()])  # smtp-source and smtp-sink follow
        sink_process = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", f"{sink.host}:{sink.port}", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for([sink], up=True, what="smtp-sink")
            with Lab.temporary(prefix="mcbench-", parent=args.lab_parent) as lab:
                as_a_site_runs_it(lab)
                for part in ("milter", "policyd", "sync-agent", "standby"):
                    pid = lab.part(part).pid()
                    if pid is not None:
                        groups.add(part, [pid, *descendants(pid)])
                gateway = lab.gateway.pid()
                assert gateway is not None, "the lab gateway is not running"
                groups.add("postfix", [gateway, *descendants(gateway)])
                modes = args.modes.split(",")
                for mode, options in EMPTY_MILTERS.items():
                    if mode not in modes:
                        continue
                    empty_socket(lab, mode).parent.mkdir(exist_ok=True)
                    empties.append(subprocess.Popen([sys.executable, str(Path(
                        __file__).with_name("empty_milter.py")), f"unix:{empty_socket(lab, mode)}",
                        *options]))
                    groups.add("milter", [empties[-1].pid])
                    wait_for_socket(empty_socket(lab, mode))
                for round_ in range(args.rounds):
                    for mode in modes if round_ % 2 == 0 else modes[::-1]:
                        configure(lab, mode, sink)
                        before = groups.read()
                        accepted, delivered, at_acceptance = measure(lab, args, groups)
                        after = groups.read()
                        results.setdefault(mode, []).append((accepted, delivered))
                        add_cpu(cpu.setdefault(mode, {}), before, after)
                        add_cpu(accepting.setdefault(mode, {}), before, at_acceptance)
                        print(f"{LABELS[mode]:<34} accepted"
                              f" {args.messages / accepted:8.1f} msg/s  delivered+journaled"
                              f" {args.messages / delivered:8.1f} msg/s  (round {round_ + 1})",
                              flush=True)
        finally:
            for empty in empties:
                empty.terminate()
                empty.wait(timeout=15)
            sink_process.terminate()
            sink_process.wait(timeout=10)
    report(args, results, cpu, accepting)


def add_cpu(total: dict[str, CpuTime], before: dict[str, CpuTime],
            after: dict[str, CpuTime]) -> None:
    for name in after:
        used = after[name] - before[name]
        total[name] = total[name] + used if name in total else used


RATIOS = (("floor/(a)", "empty", "none"), ("(b)/floor", "milter", "empty"),
          ("(b)/(empty, journal steps)", "milter", "steps"), ("(b)/(a)", "milter", "none"),
          ("(b)/(c)", "milter", "bcc"))


def report(args: argparse.Namespace, results: dict[str, list[tuple[float, float]]],
           cpu: dict[str, dict[str, CpuTime]], accepting: dict[str, dict[str, CpuTime]],
           ) -> None:
    """The ratios the issue names (each round's, and their median), then CPU milliseconds per
    message by part over all rounds."""
    for label, high, low in RATIOS:
        if not {high, low} <= results.keys():
            continue
        for column, name in ((0, "accepted"), (1, "delivered+journaled")):
            # Rates are messages / seconds: the ratio of rates is the inverse ratio of times.
            rounds = [slow[column] / fast[column]
                      for fast, slow in zip(results[high], results[low], strict=True)]
            each = " ".join(f"{ratio:.2f}" for ratio in rounds)
            print(f"{name:<20} {label} = {statistics.median(rounds):.2f}"
                  + (f"   (rounds: {each})" if len(rounds) > 1 else ""))
    n = args.messages * args.rounds
    print(f"messages {args.messages} x {args.rounds} rounds, sessions {args.sessions},"
          f" payload {args.size} bytes")
    print("\nCPU ms per message (user+kernel) while smtp-source sent (the accepted rate's"
          " share):")
    cpu_table(accepting, n)
    print("\nCPU ms per message (user+kernel), from accepting the first message until delivered"
          " and journaled:")
    cpu_table(cpu, n)
    # On a shared machine the rates move with other people's load; the CPU our own parts
    # spend per message moves much less. On a machine of our own, CPU-bound, the rate would be
    # about 1 / that CPU: the same ratios, estimated from it.
    own = {mode: sum(cpu[mode][part].total for part in GROUPS) * 1000 / n for mode in cpu}
    print(f"{'own parts':<16}" + "".join(f"{own[mode]:22.3f}" for mode in cpu))
    estimates = [(label, own[low] / own[high]) for label, high, low in (
        ("(b)/floor", "milter", "empty"), ("(b)/(empty, journal steps)", "milter", "steps"),
        ("(b)/(a)", "milter", "none"), ("(b)/(c)", "milter", "bcc")) if {high, low} <= own.keys()]
    if estimates:
        print("estimated from own CPU: " + "   ".join(f"{label} = {value:.2f}"
                                                      for label, value in estimates))


def cpu_table(cpu: dict[str, dict[str, CpuTime]], n: int) -> None:
    print(f"{'part':<16}" + "".join(f"{m:>22}" for m in cpu))
    for part in [*GROUPS, "kernel threads", "machine"]:
        cells = []
        for mode in cpu:
            used = cpu[mode][part]
            cells.append(f"{used.user * 1000 / n:6.3f}+{used.system * 1000 / n:6.3f}"
                         f"={used.total * 1000 / n:6.3f}")
        print(f"{part:<16}" + "".join(f"{cell:>22}" for cell in cells))


LABELS = {"none": "(a) no journaling", "milter": "(b) journal milter",
          "bcc": "(c) always_bcc to standby LMTP", "empty": "floor: empty pymilter",
          "steps": "empty pymilter, journal's steps"}
EMPTY_MILTERS = {"empty": [], "steps": ["--journal-steps"]}


def wait_for_socket(path: Path, timeout: float = 30.0) -> None:
    eventually(path.exists, timeout, f"the empty milter's socket {path}")


if __name__ == "__main__":
    main()
