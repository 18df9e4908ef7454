"""Forward + backward throughput of the two modulated-conv forms and of the generator.

    python benchmarks/modconv.py [--sizes 64 256] [--batch 8] [--repeats 5] [--json out.json]

Each case is jitted, run once to compile (compile time reported), then timed `--repeats` times;
the median and the spread (min-max) are printed with samples/s. Both forms must agree, so the
script also prints their max abs difference on the measured case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from semgan_jax.models.generator import Generator, init_generator
from semgan_jax.nn.modconv import IMPLS, ModulatedConv


def time_fn(fn, args, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, times


def fwd_bwd(apply):
    """jit(value_and_grad) of sum(sin(outputs)) w.r.t. params and inputs."""
    def loss(params, *inputs):
        outs = apply(params, *inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return sum(jnp.sum(jnp.sin(o)) for o in outs)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def bench_modconv(batch, res, cin, cout, upsample, repeats):
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, res, res, cin))
    s = jax.random.normal(jax.random.PRNGKey(1), (batch, 512))
    rows, outs = [], {}
    for impl in IMPLS:
        m = ModulatedConv(cout, 3, upsample=upsample, impl=impl)
        p = m.init(jax.random.PRNGKey(2), x, s)
        outs[impl] = jax.jit(m.apply)(p, x, s)
        c, t = time_fn(fwd_bwd(lambda pp, xx, ss, m=m: m.apply(pp, xx, ss)), (p, x, s), repeats)
        rows.append(dict(case=f"modconv {res}px {cin}->{cout}{' up' if upsample else ''}", impl=impl,
                         batch=batch, compile_s=c, times=t))
    diff = float(jnp.abs(outs[IMPLS[0]] - outs[IMPLS[1]]).max())
    for r in rows:
        r["max_abs_diff"] = diff
    return rows


def bench_generator(batch, size, repeats, impls=IMPLS, channel_multiplier=2):
    rows = []
    z = jax.random.normal(jax.random.PRNGKey(0), (batch, 512))
    for impl in impls:
        g = Generator(size=size, channel_multiplier=channel_multiplier, impl=impl)
        v = init_generator(g, jax.random.PRNGKey(0))
        c, t = time_fn(fwd_bwd(lambda p, zz, g=g: g.apply({"params": p, "noises": v["noises"]}, zz,
                                                            randomize_noise=False)),
                       (v["params"], z), repeats)
        rows.append(dict(case=f"generator {size}px cm{channel_multiplier}", impl=impl, batch=batch,
                         compile_s=c, times=t))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="generator sizes")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gen-batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--grouped-max-size", type=int, default=64,
                    help="time the grouped form of G only up to this size (it is the slow one)")
    ap.add_argument("--json", help="write all rows here")
    args = ap.parse_args(argv)

    print(f"device: {jax.devices()[0].device_kind}  ({jax.default_backend()}, jax {jax.__version__})")
    print(f"{'case':34s} {'impl':14s} {'batch':>5s} {'compile s':>9s} {'median ms':>10s} "
          f"{'spread ms':>15s} {'samples/s':>10s}")
    cases = [lambda: bench_modconv(args.batch, 32, 512, 512, False, args.repeats),
             lambda: bench_modconv(args.batch, 16, 512, 512, True, args.repeats),
             lambda: bench_modconv(args.batch, 64, 256, 256, False, args.repeats)]
    cases += [lambda size=size: bench_generator(
        args.gen_batch, size, args.repeats, IMPLS if size <= args.grouped_max_size else IMPLS[:1])
        for size in args.sizes]
    rows = []
    for case in cases:
        new = case()
        rows += new
        report(new)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def report(rows):
    for r in rows:
        med = statistics.median(r["times"])
        r.update(median_s=med, samples_per_s=r["batch"] / med)
        spread = f"{min(r['times']) * 1e3:.1f}-{max(r['times']) * 1e3:.1f}"
        print(f"{r['case']:34s} {r['impl']:14s} {r['batch']:5d} {r['compile_s']:9.2f} {med * 1e3:10.1f} "
              f"{spread:>15s} {r['samples_per_s']:10.2f}" + (f"  (|diff| {r['max_abs_diff']:.1e})"
                                                             if "max_abs_diff" in r else ""), flush=True)


if __name__ == "__main__":
    main()
