"""XLA:CPU's convolution library, chosen before JAX starts its CPU backend.

jax 0.10's XLA:CPU hands convolutions to YNNPACK by default; `--xla_cpu_experimental_ynn_fusion_type=`
(empty: no YNNPACK fusions) sends them to XLA's Eigen kernels instead. Neither wins everywhere
(2-core AMD EPYC Zen 4, fp32, 3x3 conv forward + both gradients, batch 8; `benchmarks/RESULTS.md`):

    channels x px      YNNPACK     Eigen   (GFLOP/s)
    512 x 64             117        199
    256 x 16             186        103
     64 x 32              89        170

and a whole stage-1 step: full width (512 channels) at 64 px, batch 8, 45 s with YNNPACK and
31 s with Eigen; the narrow 32-px demo networks 0.19 s and 0.22 s. So full-width CPU runs pass
`eigen` (the CLI's `--cpu-convs`, the benchmarks' `--cpu-convs`), the default stays JAX's.

`compiler_options` lowers LLVM's optimisation level for the code XLA:CPU generates itself (its
fusions; convolutions and matmuls are library calls at any level). Measured on the same machine:

    program (stage-1 step unless named)     XLA compile -O2 -> -O1    run -O2 -> -O1
    256 px full width, batch 16, R1 + path        74.9 -> 64.7 s              —
    64 px full width, batch 8                     25.0 -> 23.3 s        27.9 -> 26.9 s
    32 px narrow demo nets, batch 8               25.7 -> 20.2 s       0.187 -> 0.192 s
    segmentation 32 px full width (100 steps)     10.9 -> 10.7 s        21.6 -> 21.4 s

(-O0: 50 s to compile the first, but the 64-px step runs 57 s instead of 28.)
"""

from __future__ import annotations

import os

CONV_LIBRARIES = ("ynnpack", "eigen")
_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_LLVM_LEVEL = "xla_backend_optimization_level"


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge
        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API moved: assume not started
        return False


def use_cpu_conv_library(name: str) -> None:
    """Route XLA:CPU convolutions to `name` ('ynnpack' = JAX's default, or 'eigen') by editing
    XLA_FLAGS. Must run before the first JAX computation; raises RuntimeError after it, and
    ValueError for an unknown name. Other XLA_FLAGS are kept."""
    if name not in CONV_LIBRARIES:
        raise ValueError(f"cpu conv library must be one of {CONV_LIBRARIES}, got {name!r}")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_FLAG)]
    if name == "eigen":
        flags.append(_FLAG + "=")
    new = " ".join(flags)
    if new == os.environ.get("XLA_FLAGS", ""):
        return
    if _backend_started():
        raise RuntimeError("use_cpu_conv_library must run before the first JAX computation "
                           "(XLA reads XLA_FLAGS once, when its backend starts)")
    os.environ["XLA_FLAGS"] = new


def compiler_options(platform: str) -> dict:
    """`jax.jit(..., compiler_options=)` for a program on `platform` ('cpu', 'gpu', 'tpu'):
    LLVM -O1 on the CPU, nothing elsewhere, nothing when XLA_FLAGS already sets the level."""
    if platform != "cpu" or _LLVM_LEVEL in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {_LLVM_LEVEL: 1}
