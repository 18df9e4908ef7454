"""semgan_jax.xla_cpu: the XLA:CPU convolution library switch (XLA_FLAGS before the backend starts)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from semgan_jax import xla_cpu

# a conv and its weight gradient, printed as JSON, after choosing the library named in argv[1]
_PROBE = """
import json, os, sys
import numpy as np
from semgan_jax.xla_cpu import use_cpu_conv_library
use_cpu_conv_library(sys.argv[1])
import jax, jax.numpy as jnp
x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 16)), jnp.float32)
w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 16, 8)), jnp.float32)
f = lambda w: jnp.sum(jnp.square(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))))
v, g = jax.value_and_grad(f)(w)
try:
    use_cpu_conv_library("ynnpack" if sys.argv[1] == "eigen" else "eigen")
    late = "no error"
except RuntimeError as e:
    late = str(e)
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "value": float(v), "grad": np.asarray(g).ravel()[:20].tolist(),
                  "late": late}))
"""


def _probe(library, env_flags=""):
    env = {"PATH": "/usr/bin:/bin", "XLA_FLAGS": env_flags, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _PROBE, library], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_libraries_agree_and_flags_are_kept():
    eigen = _probe("eigen", env_flags="--xla_cpu_enable_fast_math=false")
    ynn = _probe("ynnpack", env_flags="--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_enable_fast_math=false")
    assert eigen["flags"] == "--xla_cpu_enable_fast_math=false --xla_cpu_experimental_ynn_fusion_type="
    assert ynn["flags"] == "--xla_cpu_enable_fast_math=false"  # the user's other flags stay
    assert eigen["value"] == pytest.approx(ynn["value"], rel=1e-5)
    assert eigen["grad"] == pytest.approx(ynn["grad"], rel=1e-4, abs=1e-3)
    for r in (eigen, ynn):  # switching after the backend started is refused
        assert "before the first JAX computation" in r["late"]


def test_unknown_library_is_refused():
    with pytest.raises(ValueError, match="ynnpack"):
        xla_cpu.use_cpu_conv_library("mkl")


def test_cpu_programs_compile_at_llvm_O1_unless_the_user_chose(monkeypatch):
    import jax
    import jax.numpy as jnp

    from semgan_jax.parallel import compiler_options, make_mesh

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    opts = xla_cpu.compiler_options("cpu")
    assert opts == {"xla_backend_optimization_level": 1}
    assert xla_cpu.compiler_options("gpu") == {} and xla_cpu.compiler_options("tpu") == {}
    assert compiler_options(make_mesh(1)) == opts  # the train steps' jit options on this CPU
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    assert xla_cpu.compiler_options("cpu") == {}
    # this XLA knows the option (an unknown name fails the compile) and the result is unchanged
    x = jnp.linspace(-3.0, 3.0, 1000)
    f = lambda x: jnp.sum(jnp.tanh(x) ** 2 * jnp.exp(-x * x))  # noqa: E731
    assert float(jax.jit(f, compiler_options=opts)(x)) == pytest.approx(float(jax.jit(f)(x)), rel=1e-6)


def test_train_steps_and_inversion_jit_with_the_options(monkeypatch):
    import jax

    from semgan_jax import infer
    from semgan_jax.parallel import make_mesh
    from semgan_jax.train import encoder, gan, supervised

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    seen = []
    real_jit = jax.jit
    monkeypatch.setattr(jax, "jit", lambda *a, **k: seen.append(k.get("compiler_options")) or real_jit(*a, **k))
    for module in (gan, encoder, supervised):
        module.jit_train_step(None, None, make_mesh(1))
    infer.jit_invert(None, None)
    assert seen == [xla_cpu.compiler_options("cpu")] * 4
