"""Faults: non-finite losses (stop naming step and network, or skip the update), unreadable and
partial checkpoints, metrics rows after a crash."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_batch, tiny_gan_config
from semgan_jax.checkpoint import Checkpointer, abstract_like
from semgan_jax.parallel import global_batch, make_mesh
from semgan_jax.train import gan, guard
from semgan_jax.train.observe import MetricsLogger


# ---------------------------------------------------------------------------------------------
# non-finite updates
# ---------------------------------------------------------------------------------------------

def test_guard_refuses_nonfinite_updates_and_records_the_first():
    import optax

    tx = optax.sgd(0.1)
    params = {"w": jnp.ones(3)}
    opt = tx.init(params)
    new, _, ok = guard.apply_updates(tx, {"w": jnp.ones(3)}, opt, params, jnp.float32(1.0))
    assert bool(ok) and np.allclose(new["w"], 0.9)
    for loss, grad in ((jnp.float32(np.nan), jnp.ones(3)), (jnp.float32(1.0), jnp.array([1.0, np.inf, 0.0]))):
        new, _, ok = guard.apply_updates(tx, {"w": grad}, opt, params, loss)
        assert not bool(ok) and np.array_equal(new["w"], params["w"])
    health = guard.init_health()
    health = guard.record(health, 4, (jnp.array(True), jnp.array(False), jnp.array(False)))
    health = guard.record(health, 5, (jnp.array(False), jnp.array(True), jnp.array(True)))
    assert [int(health[k]) for k in ("bad_step", "bad_updates", "skipped")] == [4, 0b110, 3]
    with pytest.raises(FloatingPointError, match=r"of B, C at step 5; .*last good checkpoint: step 2"):
        guard.check(health, ("A", "B", "C"), "stop", "step 2")
    guard.check(health, ("A", "B", "C"), "skip", "step 2")
    with pytest.raises(ValueError, match="on_nonfinite"):
        guard.check(health, ("A", "B", "C"), "ignore", "step 2")


def _nan_from_call(n, key="image"):
    """A next_batch that poisons `key` of the n-th batch (1-based) with NaN."""
    real = gan.next_batch
    calls = []

    def next_batch(it_u, it_l, mesh):
        batch = real(it_u, it_l, mesh)
        calls.append(1)
        if len(calls) == n:
            batch[key] = batch[key] * jnp.nan
        return batch

    return next_batch


def test_train_step_refuses_only_the_poisoned_updates():
    """NaN in the unlabeled reals: Dr's loss and its R1 are NaN, so exactly those two updates are
    refused (Dr's params unchanged); Dm and G, which never see those images, still learn."""
    cfg, mesh = tiny_gan_config(), make_mesh(1)
    _, mode, init, _ = gan.programs(cfg, mesh)  # the loop's programs, fed as the loop feeds them
    state = init(jax.random.PRNGKey(0))
    batch = random_batch(cfg.model.size, cfg.model.seg_dim, cfg.train.batch_size, seed=1)
    batch = global_batch({**batch, "image": np.full_like(batch["image"], np.nan)}, mesh)
    before = jax.device_get(state)
    after, metrics = mode.step(state, batch, True, True)
    after = jax.device_get(after)
    refused = int(after.health["bad_updates"])
    assert [n for k, n in enumerate(gan.UPDATES) if refused >> k & 1] == ["Dr", "Dr R1"]
    assert int(after.health["bad_step"]) == 0 and float(metrics["skipped_updates"]) == 2
    for a, b_ in zip(jax.tree.leaves(before.d_img), jax.tree.leaves(after.d_img)):
        np.testing.assert_array_equal(a, b_)
    for name in ("d_seg", "g"):
        leaves = jax.tree.leaves(getattr(after, name))
        assert all(np.isfinite(x).all() for x in leaves)
        assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(getattr(before, name)), leaves))


NAN_RUN = {"train.iterations": 6, "log.save_every": 2, "log.viz_every": 1000, "log.keep": 10}


def test_nonfinite_loss_stops_naming_step_and_network(tmp_path, monkeypatch):
    monkeypatch.setattr(gan, "next_batch", _nan_from_call(4))
    with pytest.raises(FloatingPointError, match=r"of Dr at step 4; .*last good checkpoint: step 2 in"):
        gan.train(tiny_gan_config(**NAN_RUN), tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").manager.all_steps() == [2]
    assert [json.loads(r)["step"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_nonfinite_loss_skips_the_update_when_configured(tmp_path, monkeypatch):
    monkeypatch.setattr(gan, "next_batch", _nan_from_call(4))
    state = gan.train(tiny_gan_config(**NAN_RUN, **{"train.on_nonfinite": "skip"}), tmp_path)
    assert int(state.step) == 6
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_updates"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert np.isnan(rows[3]["d_img"]) and np.isfinite(rows[4]["d_img"])
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state)) if x.dtype.kind == "f")


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

def _state(v):
    return {"w": jnp.full((64, 64), float(v)), "step": jnp.int32(v)}


def _save_steps(directory, steps):
    ckpt = Checkpointer(directory, keep=10)
    for s in steps:
        ckpt.save(s, _state(s), {"it": {"next_index": s}})
    return ckpt


def _corrupt(step_dir):
    """Overwrite every array file of a checkpoint with garbage of the same length."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 0
             and "metadata" not in p.name.lower()]
    assert files
    for p in files:
        p.write_bytes(np.random.default_rng(0).bytes(p.stat().st_size))


def test_corrupt_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path):
    directory = tmp_path / "checkpoints"
    _save_steps(directory, [1, 2, 3]).close()
    _corrupt(directory / "3")
    ckpt = Checkpointer(directory, keep=10)
    with pytest.warns(UserWarning, match=r"checkpoint step 3 .* cannot be read .* using step 2"):
        state, data = ckpt.restore(abstract_like(_state(0)))
    assert int(state["step"]) == 2 and float(state["w"][0, 0]) == 2.0 and data == {"it": {"next_index": 2}}
    assert ckpt.manager.all_steps() == [1, 2]
    assert [p.name.split("-")[0] for p in (tmp_path / "checkpoints.corrupt").iterdir()] == ["3"]
    # the step can be written again, and is then the one restored
    ckpt.save(3, _state(3), {"it": {"next_index": 3}})
    assert int(ckpt.restore(abstract_like(_state(0)))[0]["step"]) == 3
    ckpt.close()


def test_partial_checkpoint_is_ignored(tmp_path):
    """A write killed before orbax's final rename leaves a temporary directory: not a step."""
    directory = tmp_path / "checkpoints"
    _save_steps(directory, [1, 2]).close()
    partial = directory / "3.orbax-checkpoint-tmp-1234567890"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"\0" * 100)
    ckpt = Checkpointer(directory)
    assert ckpt.latest_step() == 2
    assert int(ckpt.restore(abstract_like(_state(0)))[0]["step"]) == 2
    ckpt.close()


def test_mismatched_state_raises_and_moves_nothing(tmp_path):
    """Every checkpoint failing (here: a config change) is an error, not a fallback."""
    directory = tmp_path / "checkpoints"
    _save_steps(directory, [1, 2]).close()
    ckpt = Checkpointer(directory)
    wrong = abstract_like({"w": jnp.zeros((32, 32)), "step": jnp.int32(0)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Exception):
            ckpt.restore(wrong)
    assert ckpt.manager.all_steps() == [1, 2] and not (tmp_path / "checkpoints.corrupt").exists()
    ckpt.close()


def test_resumed_metrics_forget_rows_after_the_checkpoint(tmp_path):
    """Rows logged after the checkpoint a run resumes from (and a row cut by a kill) are dropped:
    the resumed run logs those steps again, once."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    MetricsLogger(tmp_path, start=3, total=10, images_per_step=1).close()
    assert [json.loads(r)["step"] for r in path.read_text().splitlines()] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# SIGKILL at any moment
# ---------------------------------------------------------------------------------------------

def _launch(workdir, overrides, log):
    """`semgan train-gan --config experiments/synthetic_32.py --resume` (as the launch recipes: a fresh
    workdir starts) in a subprocess, stdout and stderr to the file `log`."""
    import os
    import subprocess
    import sys

    from conftest import CACHE_DIR, REPO

    env = {**os.environ, "SEMGAN_JAX_CACHE": CACHE_DIR, "JAX_PLATFORMS": "cpu"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "semgan_jax.cli", "train-gan", "--config",
                                 "experiments/synthetic_32.py", "--workdir", str(workdir), "--resume", *overrides],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _metric_rows(workdir):
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_the_same_parameters(tmp_path):
    """Train in a subprocess and SIGKILL it again and again — during start-up, between steps and
    while a checkpoint is being written (orbax's temporary directory exists) — relaunching with
    --resume each time: the final parameters, optimiser states, RNG key and the metrics log equal
    an uninterrupted run's, bit for bit."""
    import random
    import re
    import signal
    import time

    from conftest import tiny_overrides

    total, kills_wanted = 60, 24
    over = tiny_overrides(**{"train.iterations": total, "log.save_every": 1, "log.viz_every": 7, "log.keep": 3,
                             "train.d_reg_every": 4, "train.g_reg_every": 2})
    reference, victim = tmp_path / "reference", tmp_path / "killed"
    logs = tmp_path / "logs"
    logs.mkdir()
    ref = _launch(reference, over, logs / "reference.txt")
    assert ref.wait(timeout=1200) == 0, (logs / "reference.txt").read_text()[-3000:]

    rng = random.Random(0)
    kills = {"start-up": 0, "training": 0, "saving": 0}
    while sum(kills.values()) < kills_wanted:
        mode = ("start-up", "training", "saving")[sum(kills.values()) % 3]
        done_before = len(_metric_rows(victim))
        log = logs / f"launch_{sum(kills.values()):02d}.txt"
        proc = _launch(victim, over, log)
        deadline = time.time() + 600
        if mode == "start-up":
            time.sleep(rng.uniform(0.5, 8.0))
        elif mode == "training":
            while time.time() < deadline and proc.poll() is None and len(_metric_rows(victim)) <= done_before:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            ckpts = victim / "checkpoints"
            while time.time() < deadline and proc.poll() is None and not (
                    ckpts.is_dir() and any("tmp" in p.name for p in ckpts.iterdir())):
                time.sleep(0.002)
        if proc.poll() is not None:  # finished (or failed) before the kill
            assert proc.returncode == 0, log.read_text()[-3000:]
            break
        saving = any("tmp" in p.name for p in (victim / "checkpoints").iterdir()) if (victim / "checkpoints").is_dir() else False
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills["saving" if saving else mode] += 1
    final = _launch(victim, over, logs / "final.txt")
    assert final.wait(timeout=1200) == 0, (logs / "final.txt").read_text()[-3000:]
    texts = [p.read_text() for p in sorted(logs.glob("launch_*.txt"))] + [(logs / "final.txt").read_text()]
    resumed = [int(m) for t in texts for m in re.findall(r"resumed from step (\d+)", t)]
    fallbacks = sum(t.count("cannot be read") for t in texts)
    print(f"SIGKILLs: {kills}; resumed from steps {resumed}; corrupt-checkpoint fallbacks: {fallbacks}")
    assert sum(kills.values()) >= kills_wanted and kills["saving"] >= kills_wanted // 4

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]

    assert strip(_metric_rows(victim)) == strip(_metric_rows(reference))
    assert [r["step"] for r in _metric_rows(victim)] == list(range(1, total + 1))
    cfg = tiny_gan_config()
    models = gan.build_models(cfg.model, cfg.train.lr, 4, 2)
    abstract = jax.eval_shape(lambda: gan.init_state(models, jax.random.PRNGKey(0)))
    states = []
    for workdir in (reference, victim):
        ckpt = Checkpointer(workdir / "checkpoints")
        assert ckpt.latest_step() == total
        states.append(jax.device_get(ckpt.restore(abstract)[0]))
        ckpt.close()
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(a, b)
