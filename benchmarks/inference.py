"""Inference throughput: generator inversion (`semgan_jax.infer.invert`) batched with vmap vs
one image at a time, with randomly initialised networks.

    python benchmarks/inference.py [--cases narrow32 full256] [--batch 8] [--step 100] [--json out.json]

narrow32: the demo's networks (experiments/synthetic_32.py G, FPN base width 16 / FPN width 64);
full256: reference widths (G 256 px, channel_multiplier 2; FPN encoder 64 / 512). LPIPS is off
(no weights here); it adds one VGG16 forward+backward per step. Reports compile time and
images/s for `--step` optimisation steps (for full256 timed over `--step-256` steps and scaled).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semgan_jax import infer  # noqa: E402
from semgan_jax.config import load_config_file  # noqa: E402
from semgan_jax.train import encoder as stage2  # noqa: E402
from semgan_jax.train import gan  # noqa: E402


def networks(case: str):
    if case == "narrow32":
        model = load_config_file(REPO / "experiments" / "synthetic_32.py").model
        enc = ml_collections.ConfigDict(dict(backbone="fpn", base_width=16, feature_dim=64, channel_max=512))
    else:
        model = gan.default_config().model
        enc = stage2.default_config().encoder
    g = gan.build_models(model, 0.002, 16, 4).g
    e = stage2.build_encoder(model, enc)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    g_params = jax.jit(lambda k: g.init({"params": k, "noise": k}, np.zeros((1, g.style_dim), np.float32)))(k1)
    e_vars = jax.jit(lambda k: e.init(k, np.zeros((1, g.size, g.size, g.image_channels), np.float32)))(k2)
    return infer.Inverter(g=g), {"g": g_params["params"], "e": e_vars, "lpips": None}, e


def timed(fn, *args):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return first - (time.perf_counter() - t0), time.perf_counter() - t0


def bench(case: str, batch: int, step: int) -> dict:
    inv, variables, e = networks(case)
    inv = infer.Inverter(g=inv.g, e=e)
    cfg = infer.InvertConfig(step=step)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, inv.g.size, inv.g.size, inv.g.image_channels))
    x = x.astype(np.float32)
    run = jax.jit(lambda v, xs, k: infer.invert(inv, v, cfg, xs, k))
    key = jax.random.PRNGKey(1)
    compile_b, t_batched = timed(run, variables, x, key)
    compile_1, t_one = timed(run, variables, x[:1], key)
    return {"case": case, "size": inv.g.size, "batch": batch, "step": step, "compile_s_batched": compile_b,
            "compile_s_single": compile_1, "s_batched": t_batched, "s_single_image": t_one,
            "images_per_s_batched": batch / t_batched, "images_per_s_one_at_a_time": 1 / t_one}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["narrow32", "full256"], choices=["narrow32", "full256"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--step", type=int, default=100)
    ap.add_argument("--step-256", type=int, default=2, help="steps actually timed for full256 (scaled to --step)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}, jax {jax.__version__})")
    print(f"{'case':9s} {'px':>4s} {'batch':>5s} {'steps':>5s} {'compile s':>10s} {'img/s batched':>14s} "
          f"{'img/s one-by-one':>17s} {'speed-up':>8s}")
    rows = []
    for case in args.cases:
        steps = args.step if case == "narrow32" else args.step_256
        r = bench(case, args.batch, steps)
        scale = steps / args.step  # images/s for the full --step optimisation
        r["images_per_s_batched"] *= scale
        r["images_per_s_one_at_a_time"] *= scale
        r["step_reported"] = args.step
        rows.append(r)
        print(f"{case:9s} {r['size']:4d} {r['batch']:5d} {args.step:5d} {r['compile_s_batched']:10.1f} "
              f"{r['images_per_s_batched']:14.3f} {r['images_per_s_one_at_a_time']:17.3f} "
              f"{r['images_per_s_batched'] / r['images_per_s_one_at_a_time']:8.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
