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
        if f.name.endswith(".programs.json"):
            continue
        for test, r in json.loads(f.read_text()).items():
            rows[test] = {**r, "worker": f.stem}
    if not rows:
        raise SystemExit(f"{report_dir}: no <worker>.json files (was SEMGAN_JAX_COMPILE_REPORT set?)")
    return rows


def programs(report_dir: str) -> list[dict]:
    """Every compile the workers recorded: test, module, key, outcome (hit / miss / uncached), s."""
    return [dict(r, worker=f.name.split(".")[0]) for f in sorted(Path(report_dir).glob("*.programs.json"))
            for r in json.loads(f.read_text())]


def print_programs(rows: list[dict], top: int) -> None:
    """Programs by the seconds spent compiling them: how often each was compiled (misses: the
    persistent cache did not have it yet, e.g. two workers at once), loaded (hits), and by how many
    tests; then the small programs below the cache's threshold, by module name."""
    by_key: dict = {}
    for r in rows:
        if r["key"]:
            p = by_key.setdefault(r["key"], {"module": r["module"], "miss": 0, "hit": 0, "miss_s": 0.0,
                                             "hit_s": 0.0, "tests": set()})
            p[r["outcome"]] += 1
            p[f"{r['outcome']}_s"] += r["s"]
            p["tests"].add(r["test"])
    small = [r for r in rows if not r["key"]]
    print(f"\n{len(by_key)} programs with a cache key: compiled {sum(p['miss'] for p in by_key.values())} times in "
          f"{sum(p['miss_s'] for p in by_key.values()):.0f} s, loaded {sum(p['hit'] for p in by_key.values())} "
          f"times in {sum(p['hit_s'] for p in by_key.values()):.0f} s; {len(small)} compiles without a key "
          f"(cache off) in {sum(r['s'] for r in small):.0f} s")
    print(f"{'compile s':>9s} {'miss':>4s} {'hit':>4s} {'tests':>5s}  module  (first test)")
    for p in sorted(by_key.values(), key=lambda p: -p["miss_s"])[:top]:
        print(f"{p['miss_s']:9.1f} {p['miss']:4d} {p['hit']:4d} {len(p['tests']):5d}  {p['module']}  "
              f"({sorted(p['tests'])[0]})")
    mods: dict = {}
    for r in small:
        m = mods.setdefault(r["module"], [0, 0.0])
        m[0] += 1
        m[1] += r["s"]
    print("uncached, by module: " + ", ".join(f"{k} {n}x {s:.0f} s" for k, (n, s) in
                                            sorted(mods.items(), key=lambda kv: -kv[1][1])[:12]))


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
    if detail := programs(args.report_dir):
        print_programs(detail, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
