"""Where a test run's XLA time goes: the per-test tracing / lowering / compiling seconds that
tests/conftest.py records with SEMGAN_JAX_COMPILE_REPORT=DIR (one JSON per pytest worker).

    SEMGAN_JAX_COMPILE_REPORT=runs/compile make test PYTEST_ARGS='-m "not slow" --durations=30'
    python tools/compile_report.py runs/compile [--top 30]

Prints the totals and the tests with the most compile time (in-process only: CLI subprocesses
that tests start compile in their own processes and are not counted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(report_dir: str) -> dict:
    rows = {}
    for f in sorted(Path(report_dir).glob("*.json")):
        for test, r in json.loads(f.read_text()).items():
            rows[test] = {**r, "worker": f.stem}
    if not rows:
        raise SystemExit(f"{report_dir}: no <worker>.json files (was SEMGAN_JAX_COMPILE_REPORT set?)")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report_dir")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)
    rows = load(args.report_dir)
    total = {k: sum(r[k] for r in rows.values()) for k in ("trace_s", "lower_s", "compile_s", "compiles")}
    print(f"{len(rows)} tests: trace {total['trace_s']:.0f} s, lower {total['lower_s']:.0f} s, "
          f"XLA compile {total['compile_s']:.0f} s in {total['compiles']} compiles (CPU seconds, all workers)")
    print(f"{'compile s':>9s} {'trace s':>8s} {'n':>4s}  test")
    for test, r in sorted(rows.items(), key=lambda kv: -kv[1]["compile_s"])[:args.top]:
        print(f"{r['compile_s']:9.1f} {r['trace_s'] + r['lower_s']:8.1f} {r['compiles']:4d}  {test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
