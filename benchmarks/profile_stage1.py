"""Where a stage-1 iteration's time goes: a `jax.profiler` trace of a few steps, summarised by
XLA op (the trace's complete events on the executing threads), grouped into kinds.

    python benchmarks/profile_stage1.py --size 64 --batch 8 [--variant plain|r1|path] [--profile-steps 3]
                                 [--trace-dir /tmp/semgan_profile] [--top 25] [--json out.json]

Same networks and options as benchmarks/ours.py (--width, --dtype, --channel-multiplier). The
trace (Perfetto / TensorBoard format) stays in --trace-dir for a closer look; the table gives each
op's share of the summed op time, and the kinds: convolution (XLA:CPU's YNNPACK / oneDNN calls or
GPU cuDNN kernels), transpose / copy (layout changes), other fusions (elementwise, reductions),
and the rest.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import sys
from pathlib import Path

import jax

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ours  # noqa: E402
from semgan_jax.parallel import make_mesh, replicated  # noqa: E402
from semgan_jax.train import gan  # noqa: E402
from semgan_jax.xla_cpu import use_cpu_conv_library  # noqa: E402

# Events that are not XLA ops: host-side runtime and Python frames.
NOT_OPS = re.compile(r"^(\$|Pjit|PjitFunction|CommonPjRt|Allocate|Handle inputs|ParseArguments|end: |"
                     r"Thunk|TfrtCpu|PjRt|ExecuteHelper|Execute|BufferFromHost|copy_to_host)")


def kind(name: str) -> str:
    n = name.lower()
    if "ynn" in n or "onednn" in n or "conv" in n or "cudnn" in n or "gemm" in n or "dot" in n:
        return "convolution / matmul"
    if "transpose" in n or "copy" in n:
        return "transpose / copy"
    if "fusion" in n or "reduce" in n:
        return "other fusions (elementwise, reductions)"
    return "other"


def summarise(trace_file: str, top: int) -> dict:
    """Per-op total microseconds (numbered instances merged: 'fusion.12' -> 'fusion')."""
    events = json.load(gzip.open(trace_file))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not NOT_OPS.match(e.get("name", "")):
            per_op[re.sub(r"\.\d+$", "", e["name"])] += e.get("dur", 0.0)
    total = sum(per_op.values()) or 1.0
    kinds = collections.Counter()
    for name, us in per_op.items():
        kinds[kind(name)] += us
    return {"total_op_ms": total / 1e3,
            "kinds": {k: 100 * v / total for k, v in kinds.most_common()},
            "ops": [{"op": n, "ms": us / 1e3, "percent": 100 * us / total} for n, us in per_op.most_common(top)]}


def main(argv=None) -> dict:
    p = ours.build_parser()
    p.description = __doc__
    p.add_argument("--variant", choices=sorted(ours.STAGE1_VARIANTS), default="plain")
    p.add_argument("--profile-steps", type=int, default=3, help="steps traced after one warm-up")
    p.add_argument("--trace-dir", default="/tmp/semgan_profile")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args(argv)
    use_cpu_conv_library(ours.cpu_convs(a))
    cfg, _ = ours.configs(a)
    models = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    mesh = make_mesh(1)
    batch = ours.random_batch(a, mesh)
    state = jax.jit(lambda key: gan.init_state(models, key), out_shardings=replicated(mesh))(jax.random.PRNGKey(0))
    step = gan.jit_train_step(models, gan.hparams_from_config(cfg.train), mesh)
    compiled, *_ = ours.compile_timed(step, state, batch, *ours.STAGE1_VARIANTS[a.variant])
    call, _ = ours.run_donated(compiled, state, batch)
    call()  # warm-up
    jax.profiler.start_trace(a.trace_dir, create_perfetto_trace=True)
    for _ in range(a.profile_steps):
        call()
    jax.profiler.stop_trace()
    trace = max(glob.glob(f"{a.trace_dir}/**/*.trace.json.gz", recursive=True), key=lambda f: Path(f).stat().st_mtime)
    s = summarise(trace, a.top)
    s.update(trace=trace, size=a.size, batch=a.batch, width=a.width, dtype=a.dtype, variant=a.variant, steps=a.profile_steps)
    print(f"stage-1 step ({a.variant}), {a.size} px, batch {a.batch}, {a.width}, {a.dtype}: "
          f"{s['total_op_ms'] / a.profile_steps:.0f} ms of XLA ops per step; trace {trace}")
    for k, pct in s["kinds"].items():
        print(f"  {pct:5.1f}%  {k}")
    print(f"  top {a.top} ops:")
    for o in s["ops"]:
        print(f"  {o['percent']:5.1f}%  {o['ms'] / a.profile_steps:8.1f} ms/step  {o['op']}")
    if a.json:
        Path(a.json).write_text(json.dumps(s, indent=1) + "\n")
    return s


if __name__ == "__main__":
    main()
