"""Throughput of one full stage-1 iteration (Dr, Dm, G updates; lazy R1 and path length
amortised as the reference schedules them) and its compile time.

    python benchmarks/stage1.py [--cases narrow32 narrow64 full64] [--repeats 5] [--json out.json]

Cases: narrow32 = experiments/synthetic_32.py (<= 64 channels, batch 16); narrow64 = the same at
64 px; full32 / full64 = the reference widths (channel_multiplier 2, style_dim 512, n_mlp 8,
Dm ndf 64) at batch 8. Each of the three compiled variants (plain, +R1, +path length) is
compiled (time reported) and timed; images/s uses the amortised iteration time
plain + (R1 extra) / d_reg_every + (path extra) / g_reg_every.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semgan_jax.config import apply_overrides, load_config_file  # noqa: E402
from semgan_jax.parallel import global_batch, make_mesh, replicated  # noqa: E402
from semgan_jax.train import gan  # noqa: E402

FULL = {"model.style_dim": 512, "model.n_mlp": 8, "model.channel_base": 0, "model.channel_max": 512,
        "model.dm_ndf": 64, "model.dm_max_channels": 512, "train.batch_size": 8}
CASES = {
    "narrow32": {},
    "narrow64": {"model.size": 64, "data.resolution": 64},
    "full32": FULL,
    "full64": {**FULL, "model.size": 64, "data.resolution": 64},
}
VARIANTS = {"plain": (False, False), "r1": (True, False), "path": (False, True)}


def bench_case(name: str, repeats: int) -> dict:
    cfg = load_config_file(REPO / "experiments" / "synthetic_32.py")
    apply_overrides(cfg, [f"config.{k}={v}" for k, v in CASES[name].items()])
    models = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    hp = gan.hparams_from_config(cfg.train)
    mesh = make_mesh(1)
    b, s, k = cfg.train.batch_size, cfg.model.size, cfg.model.seg_dim
    rng = np.random.default_rng(0)
    batch = global_batch({
        "image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
        "seg_image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
        "seg_mask": (2 * np.eye(k)[rng.integers(0, k, (b, s, s))] - 1).astype(np.float32)}, mesh)
    state = jax.jit(lambda key: gan.init_state(models, key), out_shardings=replicated(mesh))(jax.random.PRNGKey(0))
    step = gan.jit_train_step(models, hp, mesh)
    row = {"case": name, "size": s, "batch": b,
           "g_params": sum(x.size for x in jax.tree.leaves(state.g))}
    for variant, flags in VARIANTS.items():
        t0 = time.perf_counter()
        state, m = step(state, batch, *flags)
        jax.block_until_ready(m)
        row[f"compile_s_{variant}"] = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, m = step(state, batch, *flags)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        row[f"ms_{variant}"] = 1e3 * statistics.median(times)
    iteration = (row["ms_plain"] + (row["ms_r1"] - row["ms_plain"]) / hp.d_reg_every
                 + (row["ms_path"] - row["ms_plain"]) / hp.g_reg_every)
    row.update(ms_iteration=iteration, images_per_s=b / iteration * 1e3)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["narrow32", "narrow64"], choices=sorted(CASES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}, jax {jax.__version__})")
    print(f"{'case':9s} {'px':>3s} {'batch':>5s} {'G params':>10s} {'compile s (plain/r1/path)':>26s} "
          f"{'ms plain/r1/path':>22s} {'ms/iter':>8s} {'img/s':>7s}")
    rows = []
    for name in args.cases:
        r = bench_case(name, args.repeats)
        rows.append(r)
        comp = "/".join(f"{r[f'compile_s_{v}']:.0f}" for v in VARIANTS)
        ms = "/".join(f"{r[f'ms_{v}']:.0f}" for v in VARIANTS)
        print(f"{r['case']:9s} {r['size']:3d} {r['batch']:5d} {r['g_params']:10,d} {comp:>26s} {ms:>22s} "
              f"{r['ms_iteration']:8.0f} {r['images_per_s']:7.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
