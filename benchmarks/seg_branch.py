"""Stage-1 iteration: seg_branch mode (train/seg_branch.py: G frozen, ToSEG and Dm train) against
the joint step, same config, random networks and batches.

    python benchmarks/seg_branch.py --width full   --size 32 --batch 8 --repeats 3
    python benchmarks/seg_branch.py --width narrow --size 32 --batch 8 --repeats 3
    python benchmarks/seg_branch.py --width full --flops-only     # lowered programs' FLOPs, nothing run

Per mode: the median ms of each compiled variant (joint: plain, +R1, +path length; seg_branch:
plain, +R1 on Dm) and the reference schedule's mean iteration (common.amortised_iteration; no
path length in seg_branch); XLA's FLOPs per variant and per mean iteration (load-independent);
and the FLOPs of one G forward (style mixing, fresh noise) for scale: a seg_branch iteration
runs one, plus Dm's updates and ToSEG's backward. --flops-only counts the FLOPs of the lowered
(not yet XLA-optimised) programs and compiles and runs nothing: seconds where a compile takes
minutes. Widths and --cpu-convs as benchmarks/ours.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import amortised_iteration, lowered_flops, time_calls  # noqa: E402
from ours import compile_timed, configs, cpu_convs, random_batch, run_donated  # noqa: E402

from semgan_jax.parallel import make_mesh, replicated  # noqa: E402
from semgan_jax.train import gan, seg_branch  # noqa: E402
from semgan_jax.xla_cpu import use_cpu_conv_library  # noqa: E402

VARIANTS = {"all": {"plain": (False, False), "r1": (True, False), "path": (False, True)},
            "seg_branch": {"plain": (False,), "r1": (True,)}}


def bench_mode(trainable: str, cfg, mesh, batch, a) -> dict:
    cfg.train.trainable = trainable
    models = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    hp = gan.hparams_from_config(cfg.train)
    mode = seg_branch.stage1_mode(cfg.train, models, hp, mesh)
    state = jax.jit(mode.init, out_shardings=replicated(mesh))(jax.random.PRNGKey(0))
    out = {"ms": {}, "flops": {}, "compile_s": {}, "spread_ms": {}}
    for variant, flags in VARIANTS[trainable].items():
        if a.flops_only:
            out["flops"][variant] = lowered_flops(mode.step, state, batch, *flags)
            continue
        compiled, out["compile_s"][variant], out["flops"][variant], _ = compile_timed(mode.step, state, batch, *flags)
        call, latest = run_donated(compiled, state, batch)
        stats = time_calls(call, a.repeats, a.warmup)
        out["ms"][variant], out["spread_ms"][variant], state = stats["median"], (stats["min"], stats["max"]), latest()
    for key in ("flops",) if a.flops_only else ("ms", "flops"):
        v = out[key]
        out[f"{key}_iteration"] = amortised_iteration({"path": v["plain"], **v}, hp.d_reg_every, hp.g_reg_every)
    if trainable == "all":
        out["g_forward_flops"] = lowered_flops(jax.jit(lambda p, k: gan.generate(models, p, k, hp.batch_size, hp.mixing)),
                                               state.g, jax.random.PRNGKey(1))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channel-multiplier", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seg-dim", type=int, default=6)
    p.add_argument("--width", choices=("full", "narrow"), default="full")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cpu-convs", choices=("auto", "ynnpack", "eigen"), default="auto")
    p.add_argument("--flops-only", action="store_true", help="lower the programs and count FLOPs; run nothing")
    p.add_argument("--json", help="append the result row to this JSON list file")
    a = p.parse_args(argv)
    a.lpips = False  # (ours.configs reads it for stage 2)
    use_cpu_conv_library(cpu_convs(a))
    cfg, _ = configs(a)
    mesh = make_mesh(1)
    batch = random_batch(a, mesh)
    load = os.getloadavg()[0]
    res = {m: bench_mode(m, cfg, mesh, batch, a) for m in ("all", "seg_branch")}
    row = {"width": a.width, "size": a.size, "batch": a.batch, "device": jax.devices()[0].device_kind,
           "cpus": os.cpu_count(), "load_before": load, "load_after": os.getloadavg()[0], **res,
           "speedup_flops": res["all"]["flops_iteration"] / res["seg_branch"]["flops_iteration"]}
    times = ""
    if not a.flops_only:
        row["speedup_ms"] = res["all"]["ms_iteration"] / res["seg_branch"]["ms_iteration"]
        times = (f"joint {res['all']['ms_iteration']:.0f} ms/iter, seg_branch {res['seg_branch']['ms_iteration']:.0f} "
                 f"ms/iter: {row['speedup_ms']:.2f}x; ")
    print(f"{a.width} {a.size} px batch {a.batch}: {times}FLOPs per iteration {res['all']['flops_iteration'] / 1e9:.2f} "
          f"vs {res['seg_branch']['flops_iteration'] / 1e9:.2f} GFLOP: {row['speedup_flops']:.2f}x; one G forward "
          f"{res['all']['g_forward_flops'] / 1e9:.2f} GFLOP; load {load:.1f} -> {row['load_after']:.1f} on "
          f"{row['cpus']} CPUs")
    if a.json:
        path = Path(a.json)
        rows = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(rows + [row], indent=2))
    return row


if __name__ == "__main__":
    main()
