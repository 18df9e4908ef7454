"""Stage 1: the jitted, mesh-sharded iteration and the training loop (tiny 16-px config)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CACHE_DIR, REPO, tiny_gan_config, tiny_overrides
from semgan_jax.parallel import check_batch_size, make_mesh
from semgan_jax.train import gan

TESTS = Path(__file__).parent


def run_sharded(case: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(TESTS / "_sharded_step.py"), str(TESTS), case],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8
    return res[case]


def test_sharded_step_equals_single_device():
    """8 fake CPU devices vs 1, same state and global batch, R1 and path length on. With SGD(lr=1)
    each param difference is a gradient difference: equal within 1e-5 (global-batch minibatch
    stddev and path-length mean included)."""
    res = run_sharded("sgd_reg")
    assert res["param_max_diff"] < 1e-5
    assert res["state_max_diff"] < 1e-5
    assert res["metric_max_diff"] < 1e-5


@pytest.mark.slow
def test_sharded_adam_step_is_close():
    """The real lazy Adam (beta1 = 0): its first update is lr·c·g / (|g| + 1e-8). Where |g| is far
    above eps the update is lr·c·sign(g), and the meshes agree to float32 noise (measured 1.2e-7).
    A few elements have gradients at eps scale (0.5 % measured), among them Dm's final-layer biases,
    whose gradient at initialisation is exactly zero (every hinge term active: the real and fake
    halves cancel), so reduction-order noise steps them by up to ±lr·c (measured 1.6e-3 on two
    scales' biases). The losses computed before any update agree within 1e-5; G's, computed after
    Dm's update, move with those biases by at most 2·lr·c (measured 1.1e-3)."""
    lr = tiny_gan_config().train.lr
    res = run_sharded("adam")
    assert res["stable_param_max_diff"] < 1e-6
    assert res["eps_scale_fraction"] < 0.01
    assert res["param_max_diff"] <= 2 * lr
    first = ("d_img", "d_img_real_score", "d_img_fake_score", "d_seg", "d_seg_real_score", "d_seg_fake_score")
    diffs = res["metric_diffs"]
    assert max(diffs[k] for k in first) < 1e-5, diffs
    assert max(diffs.values()) <= 2 * lr, diffs


def test_batch_must_split_over_devices():
    mesh = make_mesh(1)
    assert check_batch_size(8, mesh) == 8
    with pytest.raises(ValueError, match="mesh_data=5 but 1 devices"):
        make_mesh(5)


def read_metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_training_separates_real_and_fake(tmp_path):
    """A few dozen iterations on the synthetic faces: Dr learns to tell real from fake (its loss
    falls and its scores split), Dm likewise, G's losses stay finite; samples, metrics
    and a final checkpoint are written."""
    cfg = tiny_gan_config(**{"train.iterations": 40, "log.viz_every": 40, "log.save_every": 1000})
    state = gan.train(cfg, tmp_path)
    assert int(state.step) == 40
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 41))
    first, last = rows[:5], rows[-10:]
    assert np.mean([r["d_img"] for r in last]) < np.mean([r["d_img"] for r in first]) - 0.2
    assert np.mean([r["d_img_real_score"] - r["d_img_fake_score"] for r in last]) > 0.5
    assert np.mean([r["d_seg"] for r in last]) < 0.5 * np.mean([r["d_seg"] for r in first])
    assert all(np.isfinite(r[k]) for r in rows for k in ("g", "g_seg_feat", "r1_img", "r1_seg", "path"))
    assert (tmp_path / "samples" / "step_000040.png").is_file()
    assert (tmp_path / "checkpoints" / "40" / "state").is_dir()
    assert json.loads((tmp_path / "config.json").read_text())["model"]["size"] == 16


def test_resume_is_bit_exact(tmp_path):
    """15 iterations, stop, resume for 3 more == 18 uninterrupted iterations, bit for bit (params,
    optimiser states, EMA, RNG key, data position, logged losses). Step 16 runs R1 and path
    length, so the plain and the regularised programs both run after the restart. (The tiny
    config's own schedule: the programs are those test_training_separates_real_and_fake compiled.)"""
    over = {"log.viz_every": 1000, "log.save_every": 1000}
    assert gan.regularize_flags(16, gan.hparams_from_config(tiny_gan_config().train)) == (True, True)
    full = gan.train(tiny_gan_config(**over, **{"train.iterations": 18}), tmp_path / "full")
    gan.train(tiny_gan_config(**over, **{"train.iterations": 15}), tmp_path / "split")
    resumed = gan.train(tiny_gan_config(**over, **{"train.iterations": 18}), tmp_path / "split", resume=True)
    assert int(resumed.step) == 18
    for a, b in zip(jax.tree.leaves(jax.device_get(full)), jax.tree.leaves(jax.device_get(resumed))):
        np.testing.assert_array_equal(a, b)
    def losses(workdir):
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(workdir)]

    assert losses(tmp_path / "full") == losses(tmp_path / "split")


def test_a_second_run_in_one_process_reuses_the_compiled_programs():
    """gan.programs: the same networks, optimisers, schedule and mesh give the same jitted
    functions (no second trace or compile); any field that changes a program gives new ones."""
    mesh = make_mesh(1)
    first = gan.programs(tiny_gan_config(**{"train.iterations": 3}), mesh)
    assert gan.programs(tiny_gan_config(**{"train.iterations": 9, "log.save_every": 2, "seed": 5}), mesh) is first
    for field, value in (("train.lr", 0.001), ("train.d_reg_every", 2), ("train.r1", 1.0), ("model.style_dim", 16),
                         ("train.trainable", "image")):
        assert gan.programs(tiny_gan_config(**{field: value}), mesh)[1].step is not first[1].step, field


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path):
    """`semgan train-gan` stopped by SIGTERM writes a checkpoint at the step it reached and exits 0;
    `--resume` (no --config) continues it from its saved config."""
    workdir = tmp_path / "run"
    args = [sys.executable, "-m", "semgan_jax.cli", "train-gan", "--workdir", str(workdir)]
    over = tiny_overrides(**{"train.iterations": 100000, "log.viz_every": 100000})
    env = {**os.environ, "SEMGAN_JAX_CACHE": CACHE_DIR, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(args + over, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert "stopping at step" in output and "signal 15" in output
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] >= 3
    # without --resume the run refuses to start over the checkpoint
    again = subprocess.run(args + over, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    # --resume without --config continues with the run's own config.json (the tiny networks)
    resumed = subprocess.run(args + ["--resume", f"--config.train.iterations={steps[-1] + 1}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {steps[-1]}" in resumed.stdout
    assert json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == steps[-1] + 1


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_losses():
    cfg = tiny_gan_config(**{"model.dtype": "bfloat16"})
    models = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    hp = gan.hparams_from_config(cfg.train)
    state = gan.init_state(models, jax.random.PRNGKey(0))
    k = cfg.model.seg_dim
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (8, 16, 16, 3)), jnp.float32),
             "seg_image": jnp.asarray(rng.uniform(-1, 1, (8, 16, 16, 3)), jnp.float32),
             "seg_mask": jnp.asarray(2 * np.eye(k)[rng.integers(0, k, (8, 16, 16))] - 1, jnp.float32)}
    fake, _ = gan.generate(models, state.g, jax.random.PRNGKey(1), 2, 0.9)
    f32 = gan.build_models(tiny_gan_config().model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    fake32, _ = gan.generate(f32, state.g, jax.random.PRNGKey(1), 2, 0.9)
    assert fake.dtype == jnp.float32  # outputs (and so the losses) come back in float32
    assert 1e-4 < float(jnp.max(jnp.abs(fake - fake32))) < 0.25  # computed in bfloat16
    new, metrics = jax.jit(lambda s, b: gan.train_step(models, hp, s, b, d_reg=False, g_reg=False))(state, batch)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((new.g, new.d_img, new.d_seg)))
    assert all(v.dtype == jnp.float32 and np.isfinite(v) for v in metrics.values())
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.d_img, new.d_img)
    assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize("reg_conv_form", ["direct", "dense"])
def test_bfloat16_mode_runs_every_convolution_in_bfloat16(reg_conv_form):
    """The stage-1 step with R1 and path length, lowered in bf16 mode: each convolution (modulated
    convs, FIR filters, Dr, Dm, their gradients and the regularisers' double backward) takes and
    gives bf16; only small matmuls (mapping net, style affines, demodulation) stay in f32."""
    import re

    cfg = tiny_gan_config(**{"model.dtype": "bfloat16", "model.reg_conv_form": reg_conv_form})
    models = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    hp = gan.hparams_from_config(cfg.train)
    state = jax.eval_shape(lambda: gan.init_state(models, jax.random.PRNGKey(0)))
    batch = {name: jax.ShapeDtypeStruct((8, 16, 16, c), jnp.float32)
             for name, c in (("image", 3), ("seg_image", 3), ("seg_mask", cfg.model.seg_dim))}
    text = jax.jit(lambda s, b: gan.train_step(models, hp, s, b, d_reg=True, g_reg=True)).lower(state, batch).as_text()
    convs = [re.findall(r"x(f32|bf16)>", line.rsplit(":", 1)[-1])
             for line in text.splitlines() if "stablehlo.convolution" in line]
    assert len(convs) > 100 and all(types == ["bf16"] * 3 for types in convs)
    assert any("stablehlo.dot_general" in line and "xbf16>" in line for line in text.splitlines())


def test_fid_every_eval_steps_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    """With eval.stats set, FID / IS of G_ema samples are logged every eval.every steps and the
    best-FID checkpoint is kept in WORKDIR/best (random Inception weights: the code path)."""
    from semgan_jax.metrics import InceptionStats
    from semgan_jax.perceptual import convert
    from semgan_jax.perceptual.inception import InceptionV3

    model = InceptionV3()
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)))
    monkeypatch.setattr(convert, "load_inception", lambda path=None: (model, variables))
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(64, 2048))
    stats = tmp_path / "stats.npz"
    InceptionStats(feats.mean(0), np.cov(feats, rowvar=False), 64).save(stats)
    cfg = tiny_gan_config(**{"train.iterations": 4, "log.viz_every": 1000, "log.save_every": 1000,
                             "eval.stats": str(stats), "eval.every": 2, "eval.n_samples": 10,
                             "eval.batch_size": 10})
    gan.train(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run") if "fid" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(np.isfinite(r["fid"]) and r["fid"] > 0 and r["is_mean"] >= 1 for r in rows)
    best = json.loads((tmp_path / "run" / "best" / "fid.json").read_text())
    assert best["fid"] == min(r["fid"] for r in rows)
    assert (tmp_path / "run" / "best" / "checkpoint" / str(best["step"])).is_dir()


def test_path_length_offset_keeps_the_amount_and_never_meets_r1():
    train = gan.default_config().train

    def schedule(offset):
        hp = gan.hparams_from_config({**train.to_dict(), "g_reg_offset": offset})
        return [gan.regularize_flags(i, hp) for i in range(64)]

    ref, moved = schedule(0), schedule(2)
    assert ref[:5] == [(True, True), (False, False), (False, False), (False, False), (False, True)]  # the reference
    assert moved[:5] == [(True, False), (False, False), (False, True), (False, False), (False, False)]
    for flags in (ref, moved):  # R1 every 16th, path length every 4th iteration either way
        assert (sum(d for d, _ in flags), sum(g for _, g in flags)) == (4, 16)
    assert (True, True) in set(ref) and (True, True) not in set(moved)  # so its program is never compiled
    old_run = {k: v for k, v in train.to_dict().items() if k != "g_reg_offset"}  # a config.json saved before it
    assert gan.hparams_from_config(old_run).g_reg_offset == 0
    no_path = gan.hparams_from_config({**train.to_dict(), "path_regularize": 0.0})
    assert [gan.regularize_flags(i, no_path) for i in range(64)] == [(d, False) for d, _ in ref]
    with pytest.raises(ValueError, match="g_reg_offset must be in"):
        gan.hparams_from_config({**train.to_dict(), "g_reg_offset": 4})
