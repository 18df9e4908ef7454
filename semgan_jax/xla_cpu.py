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
"""

from __future__ import annotations

import os

CONV_LIBRARIES = ("ynnpack", "eigen")
_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


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
