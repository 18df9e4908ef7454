"""What both sides of the benchmark share: timing statistics, the row printed per result, and
the device's peak FLOP/s for MFU (GPUs: nominal; CPU: a measured GEMM). JAX is imported only
by the CPU peak, which only our side calls; no torch import here."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

# Dense peak FLOP/s (no sparsity) by device kind substring and compute dtype: the vendor's
# figures. fp32 on H100/H200 is the plain (non-tensor-core) rate; XLA may run fp32 matmuls and
# convolutions in TF32 on tensor cores (jax_default_matmul_precision), so fp32 MFU above 100%
# of this would mean TF32 was used.
GPU_PEAK = {"H100": {"float32": 66.9e12, "bfloat16": 989.4e12},
            "H200": {"float32": 66.9e12, "bfloat16": 989.4e12},
            "A100": {"float32": 19.5e12, "bfloat16": 312e12}}


_CPU_PEAK: dict[str, float] = {}  # dtype -> best matmul FLOP/s this process has measured


def cpu_peak_flops(dtype: str = "float32") -> float:
    """The CPU's reference peak: the best throughput of a dense 2048 x 2048 matmul in `dtype`
    that this process has measured (10 timed calls per measurement, this process's threads).
    Measure once before the benchmark and once after: a single sample taken during a slow moment
    of a shared virtual machine read half the usual figure and gave an MFU above 100 %. A virtual
    machine's /proc/cpuinfo may hold no clock (this project's 2-core AMD EPYC shows only the TSC,
    and boosts above it), so a nominal cores x clock x FLOP/cycle figure is not knowable here;
    MFU on the CPU is thus the fraction of what XLA's own GEMM reaches."""
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jnp.ones((n, n), dtype)
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(a))
        best = min(best, time.perf_counter() - t0)
    _CPU_PEAK[dtype] = max(_CPU_PEAK.get(dtype, 0.0), 2 * n ** 3 / best)
    return _CPU_PEAK[dtype]


def peak_flops(device_kind: str, platform: str, dtype: str) -> float:
    """Nominal peak FLOP/s of one device (NaN when unknown)."""
    if platform == "cpu":
        return cpu_peak_flops(dtype)
    for name, peaks in GPU_PEAK.items():
        if name in device_kind:
            return peaks.get(dtype, float("nan"))
    return float("nan")


def time_calls(fn, repeats: int, warmup: int = 1) -> dict:
    """Wall time of `fn()` (which must block until its work is done): `warmup` untimed calls,
    then `repeats` timed ones. Returns ms: median, min, max, q1, q3 and all values."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "q1": q[0], "q3": q[2], "values": times}


def amortised_iteration(ms: dict, d_reg_every: int, g_reg_every: int) -> float:
    """A stage-1 iteration's mean time from the plain, +R1 and +path-length variants (medians):
    plain + (r1 - plain) / d_reg_every + (path - plain) / g_reg_every."""
    plain = ms["plain"]
    return plain + (ms["r1"] - plain) / d_reg_every + (ms["path"] - plain) / g_reg_every


def lowered_flops(jitted, *args) -> float:
    """FLOPs of `jitted(*args)`'s lowered program (XLA's cost analysis before optimisation; nothing
    compiled or run: seconds where a compile takes minutes)."""
    return float(jitted.lower(*args).cost_analysis()["flops"])


def spread(stats: dict) -> str:
    """'min-max' of a time_calls result, in ms."""
    return f"{stats['min']:.0f}-{stats['max']:.0f}"


HEADER = (f"{'impl':8s} {'what':7s} {'px':>4s} {'cm':>2s} {'batch':>5s} {'dtype':8s} {'ms/iter':>9s} "
          f"{'spread ms':>13s} {'img/s':>8s} {'compile s':>9s} {'GFLOP/it':>9s} {'MFU %':>6s} {'mem MiB':>8s}")


def format_row(r: dict) -> str:
    """One line of the table under HEADER; missing fields print as '-'."""
    def f(key, fmt):
        v = r.get(key)
        return "-" if v is None or v != v else format(v, fmt)
    return (f"{r['impl']:8s} {r['what']:7s} {r['size']:4d} {r['channel_multiplier']:2d} {r['batch']:5d} "
            f"{r.get('dtype', 'float32'):8s} {f('ms_iteration', '.1f'):>9s} {r.get('spread_ms') or '-':>13s} "
            f"{f('images_per_s', '.2f'):>8s} {f('compile_s', '.1f'):>9s} {f('gflop_per_iteration', '.1f'):>9s} "
            f"{f('mfu_percent', '.1f'):>6s} {f('peak_memory_mib', '.0f'):>8s}")


def report(r: dict, json_path: str | None) -> None:
    """Print the row under HEADER; append it to the JSON list file `json_path` if given."""
    print(HEADER)
    print(format_row(r), flush=True)
    if json_path:
        path = Path(json_path)
        rows = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(rows + [r], indent=1) + "\n")
