#!/usr/bin/env python3
"""Run the fault-injection suite and print a table of cases and invariants.

    tools/faults.py            the fast cases (the ones CI runs)
    tools/faults.py --all      every case, the slow ones too (about 6 minutes)
    tools/faults.py -k frozen  only cases whose name matches (pytest's -k)

Each case runs the real ``nodepool-launcher`` process (two of them for an
HA pair) against its own ZooKeeper server and the fakecloud while a
Zuul-like workload runs, injects one fault (ZooKeeper frozen or restarted,
a launcher killed or frozen past its session, the cloud API failing or
hanging), and checks the invariants listed in tests/faults.py.
Exit status 0 when every invariant of every case held.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--all", action="store_true", help="run the slow cases too")
    p.add_argument("-k", dest="keyword", help="only cases matching this pytest -k expression")
    args = p.parse_args(argv)
    python = os.path.join(ROOT, ".venv", "bin", "python")
    if not os.path.exists(python):
        python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "faults.jsonl")
        cmd = [python, "-m", "pytest", "tests/test_fault_suite.py", "-p", "no:cacheprovider",
               "-m", "" if args.all else "not slow", "-q"]
        if args.keyword:
            cmd += ["-k", args.keyword]
        env = dict(os.environ, NODEPOOL_FAULTS_REPORT=report)
        run = subprocess.run(cmd, cwd=ROOT, env=env)
        rows = []
        if os.path.exists(report):
            with open(report) as f:
                rows = [json.loads(line) for line in f if line.strip()]
    print_table(rows)
    return run.returncode


def print_table(rows: list[dict]) -> None:
    if not rows:
        print("no case reported its invariants (see the pytest output above)")
        return
    print()
    print(f"{'case':44} {'invariant':32} {'result':6} detail")
    print("-" * 110)
    for row in rows:
        first = True
        for name, (ok, detail) in row["invariants"].items():
            case = row["case"] if first else ""
            print(f"{case:44} {name:32} {'ok' if ok else 'FAIL':6} {detail[:60]}")
            first = False
    cases = len(rows)
    held = sum(all(ok for ok, _ in r["invariants"].values()) for r in rows)
    print("-" * 110)
    print(f"{held} of {cases} case(s) held every invariant")


if __name__ == "__main__":
    sys.exit(main())
