"""Shared test setup: a persistent XLA compilation cache (tests that rebuild the same jitted
step, e.g. resume, compile it once), and the tiny stage-1 config."""

import contextlib
import os
from pathlib import Path

# numpy's BLAS with one thread per process: pytest-xdist already uses every core, and threaded
# OpenBLAS is 10-20x slower on the 2-core CI machine (FID's 2048x2048 factorisations)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The tests' XLA:CPU programs (and those of the CLI subprocesses, which inherit it) compile at
# LLVM -O0: XLA compiling is most of a cold run, and -O0 takes 19 % less CPU on tests/test_losses.py
# (xla_cpu.py: 33 % less than -O2 on a stage-1 step); the tests check numbers, not speed.
# xla_cpu.compiler_options leaves the level to this flag; a level the user sets is kept.
# XLA:CPU's older elemental fusion emitters instead of its MLIR ones compile the tiny stage-1 step
# in 12 s instead of 18 (tools/compile_report.py; the same numbers within the tests' tolerances).
for _flag, _value in (("xla_backend_optimization_level", "0"), ("xla_cpu_use_fusion_emitters", "false")):
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --{_flag}={_value}").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@contextlib.contextmanager
def production_llvm_level():
    """Inside: the project's jitted steps compile at the level production uses (LLVM -O1,
    xla_cpu.compiler_options, which yields to a level set in XLA_FLAGS) instead of the tests' -O0,
    for tests that run a step hundreds of times: at -O0 the oracle's 300 U-Net iterations take
    63 s, at -O1 18 s, compiling included. XLA has read XLA_FLAGS when its backend started, so
    everything else keeps -O0."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XLA_FLAGS", " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                        if "xla_backend_optimization_level" not in f))
        yield


CACHE_DIR = os.environ.get("SEMGAN_JAX_TEST_CACHE", str(Path.home() / ".cache" / "semgan_jax" / "xla-tests"))
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

REPO = Path(__file__).resolve().parents[1]


# Dm with two scales of two strided layers (the reference: three of three, which test_networks and
# the parity tests keep): Dm is most of a stage-1 step's program, and this nearly halves the
# step's compile time (37 -> 21 s for the R1 + path-length step at -O0), which is most of a cold run.
TINY = {"data.resolution": 16, "model.size": 16, "model.style_dim": 32, "model.n_mlp": 2,
        "model.channel_max": 16, "model.dm_ndf": 8, "model.dm_max_channels": 16, "model.dm_num_d": 2,
        "model.dm_n_layers": 2, "train.batch_size": 8,
        "data.num_labeled": 16, "log.n_sample": 4, "log.log_every": 1, "eval.oracle": False,
        # the reference's lr and path-length regulariser (synthetic_32 turns the latter off), so the
        # tests keep running every update of the reference step
        "train.lr": 0.002, "train.path_regularize": 2.0}


def tiny_overrides(**overrides) -> list[str]:
    """`--config.FIELD=VALUE` arguments turning experiments/synthetic_32.py into the tiny config."""
    return [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]


def tiny_gan_config(**overrides):
    """experiments/synthetic_32.py shrunk to 16 px, <= 16 channels, batch 8: seconds per step."""
    from semgan_jax.config import apply_overrides, load_config_file

    c = load_config_file(REPO / "experiments" / "synthetic_32.py")
    return apply_overrides(c, [a[2:] for a in tiny_overrides(**overrides)])


def random_batch(size: int, seg_dim: int, n: int = 8, seed: int = 0) -> dict:
    """A random stage-1 batch in numpy, as the data pipeline gives it (float32 images in [-1, 1],
    one-hot masks in {-1, 1}); `parallel.global_batch` places it as the training loop does."""
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32),
            "seg_image": rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32),
            "seg_mask": (2 * np.eye(seg_dim)[rng.integers(0, seg_dim, (n, size, size))] - 1).astype(np.float32)}


@pytest.fixture
def tiny_config():
    return tiny_gan_config


# SEMGAN_JAX_COMPILE_REPORT=DIR: each pytest process writes DIR/<worker>.json with, per test, the
# seconds spent tracing, lowering and XLA-compiling (cache misses; a persistent-cache hit costs
# no backend compile) and the number of backend compiles, to see where a cold run's time goes.
_COMPILE_REPORT = os.environ.get("SEMGAN_JAX_COMPILE_REPORT")
_COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
                   "/jax/core/compile/backend_compile_duration": "compile_s"}
_compile_times: dict = {}

if _COMPILE_REPORT:
    def _current_test() -> str:
        return os.environ.get("PYTEST_CURRENT_TEST", "(outside a test)").rsplit(" (", 1)[0]

    def _record_compile(event: str, duration: float, **_):
        if event in _COMPILE_EVENTS:
            row = _compile_times.setdefault(_current_test(),
                                            {"trace_s": 0.0, "lower_s": 0.0, "compile_s": 0.0, "compiles": 0})
            row[_COMPILE_EVENTS[event]] += duration
            row["compiles"] += event.endswith("backend_compile_duration")

    jax.monitoring.register_event_duration_secs_listener(_record_compile)

    # Per program as well: module name, persistent-cache key and outcome, seconds (XLA compile
    # or cache load), so the report can tell one program compiled by many tests from many programs.
    from jax._src import compiler as _compiler

    _programs: list = []
    _outcome: dict = {}

    def _wrap_log(name):
        original = getattr(_compiler, name)

        def log(module_name, cache_key, *a, **k):
            _outcome.update(outcome=name.rsplit("_", 1)[1], key=cache_key)
            return original(module_name, cache_key, *a, **k)
        setattr(_compiler, name, log)

    _wrap_log("log_persistent_cache_hit")
    _wrap_log("log_persistent_cache_miss")
    _compile_or_get_cached = _compiler.compile_or_get_cached

    def _timed_compile(backend, computation, *a, **k):
        import time

        from jax._src.lib.mlir import ir

        _outcome.clear()
        t0 = time.perf_counter()
        out = _compile_or_get_cached(backend, computation, *a, **k)
        name = ir.StringAttr(computation.operation.attributes["sym_name"]).value
        _programs.append({"test": _current_test(), "module": name, "s": time.perf_counter() - t0,
                          "outcome": _outcome.get("outcome", "uncached"), "key": _outcome.get("key")})
        return out
    _compiler.compile_or_get_cached = _timed_compile

    def pytest_sessionfinish(session):
        import json

        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        Path(_COMPILE_REPORT).mkdir(parents=True, exist_ok=True)
        (Path(_COMPILE_REPORT) / f"{worker}.json").write_text(json.dumps(_compile_times, indent=1))
        (Path(_COMPILE_REPORT) / f"{worker}.programs.json").write_text(json.dumps(_programs))
