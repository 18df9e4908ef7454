"""Our side of the side-by-side benchmark (benchmarks/official.py is the other; compare.py runs
both): one stage-1 iteration, one stage-2 encoder iteration, or test-time segmentation, with
randomly initialised networks and random batches.

    python benchmarks/ours.py --what stage1  --size 64  --channel-multiplier 2 --batch 8
    python benchmarks/ours.py --what encoder --size 64  --batch 8
    python benchmarks/ours.py --what segment --size 256 --batch 64 --steps 100 --steps-timed 5
    python benchmarks/ours.py --what encoder --size 256 --batch 16 --flops-only   # XLA's FLOPs, nothing run
    options: --width full|narrow  --dtype float32|bfloat16  --repeats 5 --warmup 1  --json out.json
             --cpu-convs auto|ynnpack|eigen  --tf32

stage1: `gan.train_step` (Dr, Dm, G updates, style mixing, EMA; one jit, state donated) in its
three compiled variants, plain, +lazy R1 (Dr and Dm) and +path length; the iteration time is the
reference schedule's mean, plain + (r1 - plain) / 16 + (path - plain) / 4 (common.py).
encoder: `encoder.train_step` (unlabeled MSE + LPIPS update, then labeled CE + Dice + MSE +
LPIPS update; Ranger) with G frozen. segment: `infer.invert` (E(x) then `--steps` Adam steps on
w+ and the noises with MSE + LPIPS + encoder consistency), `--batch` images at once under vmap;
`--batch 1` is the one-image-at-a-time loop. LPIPS (VGG16) has random weights (none can be
downloaded here; the cost is the same); `--no-lpips` drops it.

Widths: `full` = the reference (style_dim 512, 8 mapping layers, the StyleGAN2 channel table with
--channel-multiplier, Dm ndf 64, FPN encoder 64 / 512); `narrow` = experiments/synthetic_32.py's
(<= 64 channels). Reported: median ms per iteration with the min-max spread over --repeats,
images/s, compile time (ahead-of-time `lower().compile()`, persistent cache off), FLOPs per
iteration from XLA's cost analysis, achieved FLOP/s and MFU against the device's nominal peak
(common.peak_flops), and peak memory (the device's peak_bytes_in_use where the backend reports
it, else XLA's estimate for the largest compiled program: arguments + outputs + temporaries -
aliased).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import amortised_iteration, lowered_flops, peak_flops, report, spread, time_calls  # noqa: E402

from semgan_jax import infer  # noqa: E402
from semgan_jax.config import apply_overrides, load_config_file  # noqa: E402
from semgan_jax.models.generator import init_generator  # noqa: E402
from semgan_jax.parallel import global_batch, make_mesh, replicated  # noqa: E402
from semgan_jax.perceptual.lpips import LPIPS  # noqa: E402
from semgan_jax.train import encoder as stage2  # noqa: E402
from semgan_jax.train import gan  # noqa: E402
from semgan_jax.xla_cpu import CONV_LIBRARIES, use_cpu_conv_library  # noqa: E402

FULL_GAN = {"model.style_dim": 512, "model.n_mlp": 8, "model.channel_base": 0, "model.channel_max": 512,
            "model.dm_ndf": 64, "model.dm_max_channels": 512}
FULL_ENCODER = {"encoder.base_width": 64, "encoder.feature_dim": 512}
STAGE1_VARIANTS = {"plain": (False, False), "r1": (True, False), "path": (False, True)}
# Every d_reg_every-th iteration is also a g_reg_every-th one: a run compiles this fourth variant
# too. Timing leaves it out (the schedule's mean counts its extra work through r1 and path);
# --compile-only compiles it.
STAGE1_BOTH = {"both": (True, True)}


def configs(a):
    """(stage-1 config, stage-2 config) for the command line's size, width, batch and dtype."""
    g = load_config_file(REPO / "experiments" / "synthetic_32.py")
    apply_overrides(g, [f"config.{k}={v}" for k, v in {
        "model.size": a.size, "data.resolution": a.size, "model.channel_multiplier": a.channel_multiplier,
        "model.seg_dim": a.seg_dim, "model.dtype": a.dtype, "train.batch_size": a.batch,
        **(FULL_GAN if a.width == "full" else {})}.items()])
    e = load_config_file(REPO / "experiments" / "synthetic_32_encoder.py")
    lp = 10.0 if a.lpips else 0.0
    apply_overrides(e, [f"config.{k}={v}" for k, v in {
        "train.batch_size": a.batch, "train.lambda_unlabel_lpips": lp, "train.lambda_label_lpips": lp,
        **(FULL_ENCODER if a.width == "full" else {})}.items()])
    return g, e


def random_batch(a, mesh):
    rng = np.random.default_rng(0)
    b, s, k = a.batch, a.size, a.seg_dim
    return global_batch({
        "image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
        "seg_image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
        "seg_mask": (2 * np.eye(k)[rng.integers(0, k, (b, s, s))] - 1).astype(np.float32)}, mesh)


def compile_timed(jitted, *args):
    """(compiled executable, seconds of tracing + lowering + XLA compile, FLOPs, XLA memory
    estimate in bytes)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    m = compiled.memory_analysis()
    mem = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return compiled, seconds, float(cost.get("flops", float("nan"))), mem


def run_donated(compiled, state, *args):
    """A zero-argument callable running `state = compiled(state, *args)[0]` to completion, and
    a getter for the latest state (the input is donated)."""
    box = [state]

    def call():
        box[0], metrics = compiled(box[0], *args)
        jax.block_until_ready(metrics)
    return call, lambda: box[0]


def lpips_params(size: int, key):
    x = jnp.zeros((1, size, size, 3))
    return jax.jit(LPIPS(net="vgg").init)(key, x, x)["params"]


def bench_stage1(a) -> dict:
    cfg, _ = configs(a)
    models = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    hp = gan.hparams_from_config(cfg.train)
    mesh = make_mesh(1)
    batch = random_batch(a, mesh)
    state = jax.jit(lambda key: gan.init_state(models, key), out_shardings=replicated(mesh))(jax.random.PRNGKey(0))
    step = gan.jit_train_step(models, hp, mesh)
    ms, flops, compile_s, mem, stats = {}, {}, {}, 0, {}
    for variant, flags in {**STAGE1_VARIANTS, **(STAGE1_BOTH if a.compile_only else {})}.items():
        compiled, compile_s[variant], flops[variant], m = compile_timed(step, state, batch, *flags)
        mem = max(mem, m)
        if a.compile_only:
            continue
        call, latest = run_donated(compiled, state, batch)
        stats[variant] = time_calls(call, a.repeats, a.warmup)
        ms[variant], state = stats[variant]["median"], latest()
    it_flops = amortised_iteration(flops, hp.d_reg_every, hp.g_reg_every)
    total_s = sum(compile_s.values())
    if a.compile_only:
        return row(a, float("nan"), it_flops, total_s, mem, None, compile_only=True, compile_s_variants=compile_s)
    it_ms = amortised_iteration(ms, hp.d_reg_every, hp.g_reg_every)
    params = {k: sum(x.size for x in jax.tree.leaves(getattr(state, k))) for k in ("g", "d_img", "d_seg")}
    return row(a, it_ms, it_flops, total_s, mem, stats["plain"], ms_variants=ms, params=params,
               compile_s_variants=compile_s)


def frozen_networks(a, g_cfg, e_cfg):
    """(encoder models, frozen {'g', 'lpips'} params, E's initial variables' state)."""
    lp = LPIPS(net="vgg") if a.lpips else None
    models = stage2.build_models(g_cfg.model, e_cfg, lp)
    k_g, k_l, k_e = jax.random.split(jax.random.PRNGKey(0), 3)
    g_vars = jax.jit(lambda k: init_generator(models.g, k))(k_g)
    frozen = {"g": g_vars["params"], "lpips": lpips_params(a.size, k_l) if a.lpips else None}
    return models, frozen, k_e


def bench_encoder(a) -> dict:
    g_cfg, e_cfg = configs(a)
    models, frozen, key = frozen_networks(a, g_cfg, e_cfg)
    mesh = make_mesh(1)
    batch = random_batch(a, mesh)
    state = jax.jit(lambda k: stage2.init_state(models, k), out_shardings=replicated(mesh))(key)
    step = stage2.jit_train_step(models, stage2.hparams_from_config(e_cfg.train), mesh)
    frozen = jax.device_put(frozen, replicated(mesh))
    if a.flops_only:
        return {"impl": "ours", "what": a.what, "size": a.size, "batch": a.batch, "width": a.width, "lpips": a.lpips,
                "gflop_per_iteration": lowered_flops(step, state, batch, frozen) / 1e9, "flops_only": True}
    compiled, compile_s, flops, mem = compile_timed(step, state, batch, frozen)
    call, latest = run_donated(compiled, state, batch, frozen)
    stats = time_calls(call, a.repeats, a.warmup)
    params = {"e": sum(x.size for x in jax.tree.leaves(latest().params))}
    return row(a, stats["median"], flops, compile_s, mem, stats, params=params)


def bench_segment(a) -> dict:
    g_cfg, e_cfg = configs(a)
    models, frozen, key = frozen_networks(a, g_cfg, e_cfg)
    x = np.random.default_rng(0).uniform(-1, 1, (a.batch, a.size, a.size, 3)).astype(np.float32)
    e_vars = jax.jit(lambda k: models.e.init(k, jnp.zeros((1, a.size, a.size, 3)), train=False))(key)
    inv = infer.Inverter(g=models.g, e=models.e, lpips=models.lpips)
    variables = {"g": frozen["g"], "e": e_vars, "lpips": frozen["lpips"]}
    cfg = infer.InvertConfig(step=a.steps_timed or a.steps)

    def program(steps):
        c = dataclasses.replace(cfg, step=steps)
        return infer.jit_invert(inv, c)

    compiled, compile_s, loop_flops, mem = compile_timed(program(cfg.step), variables, x, jax.random.PRNGKey(1))
    if a.compile_only:
        return row(a, float("nan"), float("nan"), compile_s, mem, None, compile_only=True,
                   compile_s_variants={"loop": compile_s}, steps_timed=cfg.step)
    stats = time_calls(lambda: jax.block_until_ready(compiled(variables, x, jax.random.PRNGKey(1))),
                       a.repeats, a.warmup)
    scale = a.steps / cfg.step  # to the full --steps optimisation
    stats = {k: (v * scale if k != "values" else [t * scale for t in v]) for k, v in stats.items()}
    flops = scan_flops(program, variables, x, jax.random.PRNGKey(1), steps=a.steps, loop_flops=loop_flops)
    return row(a, stats["median"], flops, compile_s, mem, stats, steps=a.steps, steps_timed=cfg.step)


def scan_flops(program, *args, steps: int, loop_flops: float) -> float:
    """FLOPs of `program(steps)(*args)`, whose optimisation steps run in a `lax.scan`. XLA's cost
    analysis counts a loop body once whatever its trip count, so `loop_flops` (that analysis of
    `program(k)` for any k >= 1) is the prologue / epilogue plus one step; the prologue / epilogue
    alone come from the 0-step program."""
    f0 = compile_timed(program(0), *args)[2]
    return f0 + steps * (loop_flops - f0)


def row(a, ms_iteration, flops, compile_s, xla_bytes, stats, **extra) -> dict:
    """The result dict shared with official.py (common.format_row prints it)."""
    dev = jax.devices()[0]
    device_stats = dev.memory_stats() or {}
    peak_bytes = device_stats.get("peak_bytes_in_use")
    achieved = flops / (ms_iteration / 1e3)
    peak = peak_flops(dev.device_kind, dev.platform, a.dtype)
    return {"impl": "ours", "what": a.what, "size": a.size, "channel_multiplier": a.channel_multiplier,
            "batch": a.batch, "width": a.width, "dtype": a.dtype, "lpips": a.lpips,
            "ms_iteration": ms_iteration, "spread_ms": spread(stats) if stats else None, "timings_ms": stats,
            "images_per_s": a.batch / (ms_iteration / 1e3), "compile_s": compile_s,
            "gflop_per_iteration": flops / 1e9, "achieved_tflops": achieved / 1e12,
            "peak_tflops": peak / 1e12, "mfu_percent": 100 * achieved / peak,
            "peak_memory_mib": (peak_bytes if peak_bytes is not None else xla_bytes) / 2 ** 20,
            "memory_source": "device peak_bytes_in_use" if peak_bytes is not None else "XLA estimate",
            "device": f"{dev.device_kind} ({dev.platform})", "jax": jax.__version__,
            **({"cpu_convs": cpu_convs(a)} if dev.platform == "cpu" else
               {"matmul_precision": jax.config.jax_default_matmul_precision}),
            "repeats": a.repeats, "warmup": a.warmup,
            **{k: v for k, v in extra.items() if v is not None}}


BENCHES = {"stage1": bench_stage1, "encoder": bench_encoder, "segment": bench_segment}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=sorted(BENCHES), default="stage1")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channel-multiplier", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seg-dim", type=int, default=6)
    p.add_argument("--width", choices=("full", "narrow"), default="full")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--lpips", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--steps", type=int, default=100, help="segment: optimisation steps per image")
    p.add_argument("--steps-timed", type=int, default=0, help="segment: steps actually run (0 = --steps), scaled")
    p.add_argument("--compile-only", action="store_true",
                   help="compile, time nothing (stage1: the four variants plain, +R1, +path, both; segment: the "
                        "--steps-timed loop); reports compile time and, on the CPU, XLA's memory estimate")
    p.add_argument("--flops-only", action="store_true",
                   help="encoder: lower the step and print XLA's FLOPs per iteration; compile and run nothing "
                        "(stage 1: benchmarks/seg_branch.py --flops-only)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cpu-convs", choices=("auto", *CONV_LIBRARIES), default="auto",
                   help="XLA:CPU convolution library (semgan_jax/xla_cpu.py); auto: eigen for --width full, "
                        "ynnpack (JAX's default) for narrow")
    p.add_argument("--tf32", action="store_true",
                   help="GPU, float32: convolutions and matmuls in TF32 (default: IEEE fp32, precision 'float32')")
    p.add_argument("--json", help="append the result row to this JSON list file")
    return p


def cpu_convs(a) -> str:
    return a.cpu_convs if a.cpu_convs != "auto" else ("eigen" if a.width == "full" else "ynnpack")


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    if a.flops_only and a.what != "encoder":
        raise SystemExit("--flops-only: --what encoder only (stage 1: benchmarks/seg_branch.py --flops-only)")
    use_cpu_conv_library(cpu_convs(a))
    dev = jax.devices()[0]
    if dev.platform != "cpu" and a.dtype == "float32":  # the official side sets torch's TF32 flags alike
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if a.tf32 else "float32")
    peak_flops(dev.device_kind, dev.platform, a.dtype)  # a first CPU sample, before the benchmark loads the machine
    r = BENCHES[a.what](a)
    if a.flops_only:
        print(f"encoder {a.size} px batch {a.batch} {a.width}: {r['gflop_per_iteration']:.1f} GFLOP per iteration")
        return r
    report(r, a.json)
    return r


if __name__ == "__main__":
    main()
