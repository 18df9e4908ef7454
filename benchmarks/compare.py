"""Side by side: ours (benchmarks/ours.py) against the official PyTorch code
(benchmarks/official.py) for the same configuration, batch, resolution and precision, each case
in its own fresh process, one after another on the same device and thread settings.

    git clone https://github.com/nv-tlabs/semanticGAN_code /tmp/official   # never commit it
    python benchmarks/compare.py --official /tmp/official --preset cpu  --out benchmarks/results/cpu
    python benchmarks/compare.py --official /tmp/official --preset gpu  --out benchmarks/results/gpu
    python benchmarks/compare.py --official /tmp/official --preset cpu-sweep --repeats 2 --out benchmarks/results/cpu_sweep
    python benchmarks/compare.py --preset cpu --only ours                  # without the official code

Writes OUT/results.json (every row), OUT/table.md (the table printed at the end: images/s of both
and the ratio ours / official) and OUT/batch_sweep.png (stage-1 images/s against batch size, both
implementations). Presets (PRESETS below) hold the issue's targets: on the CPU, stage 1 at 64 px,
channel_multiplier 2, batch 8; on a GPU, 256 px, batch 16, fp32 both and bf16 ours; test-time
segmentation of 64 images (ours batched, the official loop one image at a time); the 256-px
stage-1 compile time. A case that fails or runs past its time is reported with the tail of its
output and the sweep goes on. `--deadline S` bounds the whole sweep (a lent GPU's time is
counted): a case starts only while at least `--min-case` seconds are left, runs at most until the
deadline, and the cases not run are listed in the table; cases run in the preset's order, the
issue's targets first. On GPUs both sides compute fp32 in IEEE fp32 unless `--tf32` (both
then use TF32 tensor cores for fp32 convolutions and matmuls; left alone, PyTorch uses TF32 for
its convolutions only and JAX for both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import HEADER, format_row  # noqa: E402

SWEEP = "sweep"  # case group drawn in batch_sweep.png


def case(what, size, batch, impls=("ours", "official"), group="main", **flags):
    return {"what": what, "size": size, "batch": batch, "impls": impls, "group": group, "flags": flags}


PRESETS = {
    "cpu": [
        case("stage1", 64, 8),
        case("stage1", 64, 8, impls=("ours",), dtype="bfloat16"),
        case("encoder", 64, 8),
        # test-time segmentation of 64 images: official one at a time, ours batched (5 of 100 steps timed)
        case("segment", 64, 1, impls=("official",), steps_timed=5, repeats=2),
        case("segment", 64, 64, impls=("ours",), steps_timed=5, repeats=2),
        case("segment", 64, 1, impls=("ours",), steps_timed=5, repeats=2),
        *[case("stage1", 64, b, group=SWEEP, repeats=3) for b in (2, 4, 16)],
        case("stage1", 256, 16, impls=("ours",), group="compile", compile_only=True),
    ],
    # the CPU target alone (about 20 minutes on 2 cores: official 12, ours 8.5)
    "cpu-target": [case("stage1", 64, 8, repeats=2)],
    # batch sweep and test-time segmentation at 32 px (full width), affordable on 2 cores
    "cpu-sweep": [
        *[case("stage1", 32, b, group=SWEEP, repeats=2) for b in (2, 4, 8, 16)],
        case("segment", 32, 1, impls=("official",), steps_timed=5, repeats=2),
        case("segment", 32, 64, impls=("ours",), steps_timed=5, repeats=2),
        case("segment", 32, 1, impls=("ours",), steps_timed=5, repeats=2),
    ],
    # the 256-px stage-1 compile target alone: the four static variants, one after another (5 min)
    "cpu-compile": [case("stage1", 256, 16, impls=("ours",), group="compile", compile_only=True)],
    # the three GPU targets first (fp32 stage 1, bf16 MFU, batched segmentation), then the rest
    "gpu": [
        case("stage1", 256, 16),
        case("stage1", 256, 16, impls=("ours",), dtype="bfloat16"),
        case("segment", 256, 1, impls=("official",), steps_timed=10, repeats=3),
        case("segment", 256, 64, impls=("ours",), steps_timed=10, repeats=3),
        case("encoder", 256, 16),
        *[case("stage1", 256, b, group=SWEEP) for b in (4, 8, 32)],
    ],
}


def argv_for(impl: str, c: dict, args) -> list[str]:
    script = HERE / ("ours.py" if impl == "ours" else "official.py")
    argv = [sys.executable, str(script), "--what", c["what"], "--size", str(c["size"]), "--batch", str(c["batch"]),
            "--channel-multiplier", str(args.channel_multiplier), "--repeats", str(args.repeats)]
    if impl == "official":
        argv += ["--official", str(args.official), "--device", args.device]
    if args.tf32:
        argv += ["--tf32"]
    for key, value in c["flags"].items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def text(output) -> str:
    """A subprocess's captured output as str (TimeoutExpired keeps bytes, or None)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_case(impl: str, c: dict, args, timeout: float) -> dict:
    """One case in a fresh process, stopped after `timeout` seconds; its row, or
    {'error': ...} with the output's tail."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        argv = argv_for(impl, c, args) + ["--json", str(out)]
        failed = {"impl": impl, "what": c["what"], "size": c["size"], "batch": c["batch"], "command": " ".join(argv)}
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy(), timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return {**failed, "error": f"stopped after {timeout:.0f} s\n" + (text(e.stdout) + text(e.stderr))[-2000:]}
        if proc.returncode != 0 or not out.is_file():
            return {**failed, "error": (proc.stdout + proc.stderr)[-2000:]}
        r = json.loads(out.read_text())[-1]
        r.update(group=c["group"], command=" ".join(argv[1:]))
        return r


def ratio_rows(rows: list[dict]) -> list[dict]:
    """Pairs ours/official of the same (what, size, batch, dtype), with their images/s ratio;
    segmentation pairs ours at any batch with the official one-image loop."""
    ok = [r for r in rows if "error" not in r and not r.get("compile_only")]
    out = []
    for o in (r for r in ok if r["impl"] == "ours"):
        def same(r):
            if r["impl"] != "official" or r["what"] != o["what"] or r["size"] != o["size"]:
                return False
            return o["what"] == "segment" or (r["batch"] == o["batch"] and r.get("dtype", "float32") == o["dtype"])
        ref = next((r for r in ok if same(r)), None)
        out.append({"ours": o, "official": ref,
                    "ratio": o["images_per_s"] / ref["images_per_s"] if ref else None})
    return out


def markdown(rows: list[dict], pairs: list[dict], device: str, not_run: tuple[str, ...] = ()) -> str:
    lines = [f"Device: {device}", "",
             "| what | px | batch | dtype | ours img/s | official img/s | ours / official | ours ms/iter (spread) "
             "| official ms/iter (spread) | GFLOP/iter | MFU % | compile s | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        o, r = p["ours"], p["official"]
        ref_batch = f" (official batch {r['batch']})" if r and r["batch"] != o["batch"] else ""
        lines.append(
            f"| {o['what']} | {o['size']} | {o['batch']}{ref_batch} | {o['dtype']} | {o['images_per_s']:.2f} | "
            + (f"{r['images_per_s']:.2f} | **{p['ratio']:.2f}x** | " if r else "– | – | ")
            + f"{o['ms_iteration']:.0f} ({o['spread_ms']}) | "
            + (f"{r['ms_iteration']:.0f} ({r.get('spread_ms', '-')}) | " if r else "– | ")
            + f"{o['gflop_per_iteration']:.1f} | {o['mfu_percent']:.1f} | {o['compile_s']:.1f} | "
            f"{o['peak_memory_mib']:.0f} |")
    compile_only = [r for r in rows if r.get("compile_only") and "error" not in r]
    for r in compile_only:
        each = ", ".join(f"{k} {v:.1f} s" for k, v in r["compile_s_variants"].items())
        lines.append(f"\nCompile time of ours (trace + lower + XLA compile), {r['what']} at {r['size']} px, "
                     f"batch {r['batch']}, {r['dtype']}: {each}; {r['compile_s']:.1f} s in all.")
    errors = [r for r in rows if "error" in r]
    for r in errors:
        lines.append(f"\nFailed: {r['impl']} {r['what']} {r['size']} px batch {r['batch']}: `{r['command']}`")
    if not_run:
        lines.append("\nNot run (deadline): " + "; ".join(not_run))
    return "\n".join(lines) + "\n"


def plot_sweep(path: Path, rows: list[dict]) -> None:
    """Stage-1 images/s against batch size (fp32), one line per implementation."""
    from semgan_jax.plot import plot_lines

    series, top = [], 0.0
    styles = {"ours": ((31, 119, 180), "circle"), "official": ((214, 39, 40), "square")}
    for impl, (color, marker) in styles.items():
        pts = sorted((r["batch"], r["images_per_s"]) for r in rows
                     if "error" not in r and r["impl"] == impl and r["what"] == "stage1"
                     and r.get("dtype", "float32") == "float32" and r["group"] in ("main", SWEEP))
        if pts:
            top = max(top, max(y for _, y in pts))
            series.append({"label": impl, "x": [b for b, _ in pts], "y": [y for _, y in pts],
                           "color": color, "marker": marker})
    if not series:
        return
    sizes = sorted({r["size"] for r in rows if r["what"] == "stage1" and r["group"] == SWEEP})
    step = 10 ** max(0, len(str(int(top))) - 1) / (2 if top < 5 * 10 ** (len(str(int(top))) - 1) else 1)
    plot_lines(path, series, title=f"Stage-1 iteration, {sizes[0] if sizes else ''} px, fp32",
               xlabel="batch size (log scale)", ylabel="images / s",
               y_range=(0.0, step * (int(top / step) + 1)), y_step=step)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", help="a local checkout of nv-tlabs/semanticGAN_code")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--only", choices=("ours", "official"), help="run one implementation only")
    p.add_argument("--device", default="cpu", help="torch device of the official code (cpu | cuda)")
    p.add_argument("--channel-multiplier", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    p.add_argument("--deadline", type=float, help="seconds for the whole sweep; cases that do not fit are not run")
    p.add_argument("--min-case", type=float, default=60, help="with --deadline: the fewest seconds a case starts with")
    p.add_argument("--tf32", action="store_true", help="GPU: fp32 convolutions and matmuls in TF32, both sides")
    p.add_argument("--out", default="benchmarks/results/latest")
    args = p.parse_args(argv)
    if args.only != "ours" and not args.official:
        p.error("--official PATH is needed (or --only ours)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, not_run, start = [], [], time.monotonic()
    print(HEADER, flush=True)
    for c in PRESETS[args.preset]:
        for impl in c["impls"]:
            if args.only and impl != args.only:
                continue
            left = args.timeout if args.deadline is None else args.deadline - (time.monotonic() - start)
            if args.deadline is not None and left < args.min_case:
                not_run.append(f"{impl} {c['what']} {c['size']} px batch {c['batch']} {c['flags'].get('dtype', '')}".rstrip())
                print(f"not run (deadline): {not_run[-1]}", flush=True)
                continue
            r = run_case(impl, c, args, min(args.timeout, left))  # a case's own --repeats comes last and wins
            rows.append(r)
            print(format_row(r) if "error" not in r else f"{impl} {c['what']} {c['size']} px batch {c['batch']}: "
                  f"FAILED\n{r['error']}", flush=True)
            write_outputs(out, rows, not_run)
    print("\n" + write_outputs(out, rows, not_run))
    return 1 if any("error" in r for r in rows) else 0


def write_outputs(out: Path, rows: list[dict], not_run: list[str]) -> str:
    """results.json, table.md and batch_sweep.png of the rows so far (written after every case,
    so a sweep stopped from outside keeps what it measured); returns the table."""
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    device = next((r["device"] for r in rows if "error" not in r and r["impl"] == "ours"), "?")
    table = markdown(rows, ratio_rows(rows), device, tuple(not_run))
    (out / "table.md").write_text(table)
    plot_sweep(out / "batch_sweep.png", rows)
    return table


if __name__ == "__main__":
    sys.exit(main())
