"""``make demo``: the full outage drill on a fresh local lab, with what it measured.

Lab up; mail before the outage; the primary killed; mail during; a user working on the standby;
the primary back; automatic failback; then every delivery checked on the primary, and the
administrators' continuity drill. Exits non-zero if anything was lost or duplicated, so the demo
doubles as the project's end-to-end acceptance check.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from mailcontinuity.lab import Lab
from mailcontinuity.lab.errors import LabError
from mailcontinuity.lab.scenario import OutageScenario
from mailcontinuity.outage.incident import render_incident
from mailcontinuity.reports.drill import Drill, archive, render_report
from mailcontinuity.store.db import open_store


def run_demo(directory: Path) -> int:
    print(f"== lab up in {directory}", flush=True)
    lab = Lab.up(directory)
    try:
        print(f"   gateway smtp {lab.gateway.smtp}, primary imap {lab.endpoint('primary', 'imap')},"
              f" standby imap {lab.endpoint('standby', 'imap')}; running:"
              f" {', '.join(name for name, up in lab.running().items() if up)}", flush=True)
        print("== outage scenario: mail before, primary killed, mail and user activity during,"
              " primary back, automatic failback", flush=True)
        scenario = OutageScenario(lab)
        try:
            report = scenario.run()
        except LabError as exc:
            print(f"   FAILED: {exc}")
            return 1
        width = max(len(name) for name, _ in report.rows())
        for name, value in report.rows():
            print(f"   {name:<{width}}  {value}")
        for problem in report.lost + report.duplicated + report.misplaced:
            print(f"   problem: {problem}")
        print("== incident report (mailcontinuity report), archived at failback", flush=True)
        print("\n".join(f"   {line}" for line in render_incident(scenario.incident()).splitlines()))
        print("== continuity drill (mailcontinuity drill)", flush=True)
        store = open_store(lab.config)
        try:
            drill = Drill(lab.config, store).run()
            archive(drill, lab.config.drill.report_dir)
        finally:
            store.close()
        print("\n".join(f"   {line}" for line in render_report(drill).splitlines()))
        verdict = report.passed and drill.passed
        print(f"== {'PASSED' if verdict else 'FAILED'}: lost {len(report.lost)},"
              f" duplicated {len(report.duplicated)},"
              f" drill {'passed' if drill.passed else 'failed'}")
        return 0 if verdict else 1
    finally:
        print("== lab down", flush=True)
        Lab.down(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, help="lab directory (default: a fresh one in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the lab directory afterwards")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s %(message)s")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="mailcontinuity-demo-", dir="/tmp"))
    try:
        code = run_demo(directory)
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
