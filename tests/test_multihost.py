"""Multi-host training with JAX's distributed runtime, on this machine: 2 CPU processes on
localhost with 4 devices each (`jax.distributed.initialize` via JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID) train as 1 process with 8 devices, through a collective
checkpoint and a resume."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import CACHE_DIR, REPO, tiny_gan_config, tiny_overrides
from semgan_jax.checkpoint import restore_latest
from semgan_jax.parallel import make_mesh, replicated
from semgan_jax.train import gan

# Regularisers every step: one compiled step variant (each costs 1.5-2 min to compile per
# process on 2 cores); samples at the end of each launch.
RUN = {"train.d_reg_every": 1, "train.g_reg_every": 1, "log.viz_every": 1000, "log.save_every": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_cli(workdir: Path, iterations: int, *, processes: int, devices: int, resume: bool = False):
    """`semgan train-gan` (tiny config) as `processes` processes of `devices` CPU devices each."""
    args = [sys.executable, "-m", "semgan_jax.cli", "train-gan", "--workdir", str(workdir),
            *(["--resume"] if resume else []), *tiny_overrides(**RUN, **{"train.iterations": iterations})]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SEMGAN_JAX_CACHE": CACHE_DIR,
           # the tests' LLVM level (conftest) plus the fake devices
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"}
    port = _free_port()
    procs = []
    for rank in range(processes):
        dist = {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": str(processes),
                "JAX_PROCESS_ID": str(rank)} if processes > 1 else {}
        procs.append(subprocess.Popen(args, cwd=REPO, env={**env, **dist}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {rank} of {processes}:\n{out[:3000]}\n...\n{out[-3000:]}"
    return outs


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]


def _final_state(workdir, step):
    """The run's newest checkpoint (saved over 8 devices) restored onto this process's one device."""
    cfg = tiny_gan_config(**RUN)
    models = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    state, _ = restore_latest(workdir / "checkpoints", lambda: gan.init_state(models, jax.random.PRNGKey(0)),
                              replicated(make_mesh(1)))
    assert int(state.step) == step
    return jax.device_get(state)


@pytest.mark.slow
def test_two_processes_train_as_one_with_eight_devices(tmp_path):
    multi, single = tmp_path / "2x4", tmp_path / "1x8"
    train_cli(multi, 2, processes=2, devices=4)
    outs = train_cli(multi, 4, processes=2, devices=4, resume=True)
    assert all("resumed from step 2" in out for out in outs)
    train_cli(single, 4, processes=1, devices=8)

    a, b = _losses(multi), _losses(single)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    worst = max(abs(x[k] - y[k]) / max(1.0, abs(y[k])) for x, y in zip(a, b) for k in y)
    print(f"largest relative loss difference, 2 processes x 4 devices vs 1 x 8: {worst:.2e}")
    assert worst < 1e-4
    sa, sb = _final_state(multi, 4), _final_state(single, 4)
    diffs = [float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb))
             if np.issubdtype(np.asarray(x).dtype, np.floating)]
    print(f"largest parameter / optimiser-state difference after 4 steps: {max(diffs):.2e}")
    assert max(diffs) < 1e-4
    np.testing.assert_array_equal(sa.key, sb.key)
    # process 0 alone writes the logs and samples
    assert sorted(p.name for p in (multi / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]
