"""Is bf16 training stable? Stage 1 on the built-in synthetic data (generated in memory) twice
from the same seed, `model.dtype=float32` and `model.dtype=bfloat16` (bf16 compute, f32 params, losses and
optimiser state), with the losses drawn side by side.

    python benchmarks/bf16_curves.py --iterations 1000 --out benchmarks/results/bf16
    options: --config experiments/synthetic_32.py  --smooth 10 (logged points per running mean)
             --max-minutes M (each run stops there, with a checkpoint, if not done)

Writes OUT/bf16_curves.png (Dr, Dm and G losses against iterations: fp32 solid, bf16 dashed;
running means), OUT/bf16_curves.json (per dtype, over the iterations both runs reached: the mean
of each loss over the last quarter, non-finite counts, skipped updates, images/s) and keeps both
runs' workdirs (metrics.jsonl, samples) under OUT; a workdir that already holds metrics.jsonl is
read, not trained again (delete it to rerun).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semgan_jax import cli  # noqa: E402
from semgan_jax.plot import plot_lines  # noqa: E402

LOSSES = {"d_img": (31, 119, 180), "d_seg": (44, 160, 44), "g": (214, 39, 40)}
DTYPES = ("float32", "bfloat16")


def train(a, dtype: str) -> Path:
    workdir = Path(a.out) / dtype
    if not (workdir / "metrics.jsonl").is_file():
        cli.main(["train-gan", "--config", str(a.config), "--workdir", str(workdir),
                  f"--config.model.dtype={dtype}", f"--config.train.iterations={a.iterations}",
                  f"--config.seed={a.seed}", f"--config.log.max_minutes={a.max_minutes}"])
    return workdir


def read_metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def running_mean(values: list[float], n: int) -> list[float]:
    out, window = [], []
    for v in values:
        window = (window + [v])[-n:]
        out.append(sum(window) / len(window))
    return out


def summarise(rows: list[dict]) -> dict:
    tail = rows[-max(1, len(rows) // 4):]
    speeds = [r["images_per_s"] for r in rows if "images_per_s" in r]
    return {"last_quarter_mean": {k: sum(r[k] for r in tail) / len(tail) for k in LOSSES},
            "non_finite": {k: sum(k in r and not math.isfinite(r[k]) for r in rows) for k in LOSSES},
            "skipped_updates": max((r.get("skipped_updates", 0.0) for r in rows), default=0.0),
            "images_per_s_median": statistics.median(speeds) if speeds else None,
            "logged_steps": len(rows)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=REPO / "experiments" / "synthetic_32.py", type=Path)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smooth", type=int, default=10)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop each run after this wall time (0: none)")
    p.add_argument("--out", default="benchmarks/results/bf16")
    a = p.parse_args(argv)
    out = Path(a.out)
    runs = {dtype: read_metrics(train(a, dtype)) for dtype in DTYPES}
    series = []
    for dtype, rows in runs.items():
        for loss, color in LOSSES.items():
            pts = [(r["step"], r[loss]) for r in rows if loss in r and math.isfinite(r[loss])]
            series.append({"label": f"{loss} {'fp32' if dtype == 'float32' else 'bf16'}", "x": [s for s, _ in pts],
                           "y": running_mean([v for _, v in pts], a.smooth), "color": color,
                           "dashed": dtype == "bfloat16", "marker": None})
    top = max(max(s["y"]) for s in series if s["y"])
    last = max(max(s["x"]) for s in series if s["x"])
    ticks = [round(last * k / 4) for k in range(5)]
    plot_lines(out / "bf16_curves.png", series, title="Stage-1 losses on synthetic 32 px: fp32 (solid) vs bf16 (dashed)",
               xlabel="iteration", ylabel=f"loss (running mean of {a.smooth} logged points)", log_x=False,
               x_ticks=ticks, y_range=(0.0, math.ceil(top * 2) / 2), y_step=0.5)
    common = min(rows[-1]["step"] for rows in runs.values())  # runs cut by --max-minutes end apart
    summary = {dtype: summarise([r for r in rows if r["step"] <= common]) for dtype, rows in runs.items()}
    summary["compared_up_to_step"] = common
    (out / "bf16_curves.json").write_text(json.dumps(summary, indent=1) + "\n")
    for key, value in summary.items():
        print(key, json.dumps(value))
    return summary


if __name__ == "__main__":
    main()
