"""Chaos run on a fresh lab: steady mail while parts are killed and restarted at random.

    .venv/bin/python bench/chaos.py --seed 11 --duration 300 --rate 3

Prints the figures (sent, accepted, journaled, routed to the standby, merged, lost, duplicated,
longest wait) and the seeded log of kills and restarts; exits 1 if anything was lost,
duplicated or bounced. tests/lab/test_chaos.py runs a short version of the same thing in CI.
"""

from __future__ import annotations

import argparse
import sys

from mailcontinuity.lab import Lab
from mailcontinuity.lab.chaos import ChaosRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of chaos")
    parser.add_argument("--rate", type=float, default=3.0, help="messages per second")
    args = parser.parse_args()
    with Lab.temporary(prefix="mailcontinuity-chaos-") as lab:
        report = ChaosRun(lab, args.seed, args.duration, args.rate).run()
    for line in report.actions:
        print(f"  {line}")
    width = max(len(name) for name, _ in report.rows())
    for name, value in report.rows():
        print(f"{name:<{width}}  {value}")
    for problem in report.lost + report.duplicated:
        print(f"problem: {problem}")
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
