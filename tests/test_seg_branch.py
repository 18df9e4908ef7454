"""Stage 1 with train.trainable = "seg_branch" (train/seg_branch.py): G frozen, only ToSEG and Dm
train; checkpoints of either mode continue in the other; stage 2 reads the result; and
train.trainable = "image", the StyleGAN2 half of the joint step (tiny configs)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import CACHE_DIR, REPO, random_batch, tiny_gan_config
from semgan_jax.parallel import global_batch, make_mesh, replicated
from semgan_jax.train import gan, seg_branch

# The tiny config's own schedule (R1 at iteration 0, 16, ...; path length every 4th): its joint
# programs are those of tests/test_gan_step.py, so a cold run compiles them once
OVER = {"log.viz_every": 1000, "log.save_every": 1000}


def frozen(g_params):
    """G's params without the ToSEG layers."""
    return {**g_params, "synthesis": {k: v for k, v in g_params["synthesis"].items() if not k.startswith("to_seg")}}


def assert_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def changed_leaves(a, b) -> list[bool]:
    return jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(np.asarray(x) != np.asarray(y))), a, b))


def loop_inputs(state, models, mesh) -> tuple:
    """(state, a random batch) placed as gan.train's loop places them (replicated / split over
    'data'): arguments placed otherwise make the jitted step compile a second program."""
    return jax.device_put(state, replicated(mesh)), global_batch(random_batch(models.g.size, models.g.seg_dim), mesh)


def test_only_the_label_branch_and_dm_train():
    """From a joint state whose G_ema differs from G: the image path frozen is G_ema's, and after
    3 iterations (R1 in the first) it, G_ema's copy of it, Dr and the noise maps are bit-identical;
    every ToSEG parameter and Dm moved; optimiser state exists for ToSEG and Dm only."""
    mesh = make_mesh(1)
    models, mode, _, _ = gan.programs(tiny_gan_config(**{"train.trainable": "seg_branch", **OVER}), mesh)
    joint = jax.jit(lambda k: gan.init_state(models, k))(jax.random.PRNGKey(0))
    joint = joint.replace(g_ema=jax.tree.map(lambda x: x + 0.01, joint.g_ema))
    start = jax.device_get(jax.jit(mode.convert)(joint))
    assert start.d_img_opt is None
    n_seg = sum(x.size for x in jax.tree.leaves(seg_branch.to_seg(start.g)))
    assert sum(np.size(x) for x in jax.tree.leaves(start.g_opt)) == 2 * n_seg + 1  # Adam's mu, nu and count

    (state, batch), rows = loop_inputs(start, models, mesh), []
    for i in range(3):
        state, metrics = mode.step(state, batch, *mode.flags(i))
        rows.append(jax.device_get(metrics))
    end = jax.device_get(state)

    assert_equal(frozen(end.g), frozen(jax.device_get(joint.g_ema)))
    assert_equal(frozen(end.g_ema), frozen(end.g))
    for name in ("d_img", "g_noises", "mean_path_length"):
        assert_equal(getattr(end, name), getattr(joint, name))
    assert all(changed_leaves(seg_branch.to_seg(end.g), seg_branch.to_seg(start.g)))
    assert any(changed_leaves(end.d_seg, start.d_seg))
    assert all(changed_leaves(seg_branch.to_seg(end.g_ema), seg_branch.to_seg(end.g)))  # averaged, not copied
    assert int(end.step) == 3 and int(end.health["skipped"]) == 0
    assert [r["r1_seg"] > 0 for r in rows] == [True, True, True] and rows[1]["r1_seg"] == rows[0]["r1_seg"]
    assert all(np.isfinite(r[k]) for r in rows for k in ("d_seg", "g", "g_seg_adv", "g_seg_feat"))
    assert "d_img" not in rows[0] and "path" not in rows[0]


def test_image_mode_trains_the_image_path_alone():
    """trainable='image': 3 iterations (R1 and path length in the first) move G's image path and
    Dr, while the ToSEG layers (G's and G_ema's), Dm, its spectral state and optimiser state stay
    bit-identical and no Dm loss is computed."""
    mesh = make_mesh(1)
    models, mode, init, _ = gan.programs(tiny_gan_config(**{"train.trainable": "image", **OVER}), mesh)
    start = jax.device_get(init(jax.random.PRNGKey(0)))
    (state, batch), rows = loop_inputs(start, models, mesh), []
    for i in range(3):
        state, metrics = mode.step(state, batch, *mode.flags(i))
        rows.append(jax.device_get(metrics))
    end = jax.device_get(state)

    for name in ("d_seg", "d_seg_spectral", "d_seg_opt"):
        assert_equal(getattr(end, name), getattr(start, name))
    assert_equal(seg_branch.to_seg(end.g), seg_branch.to_seg(start.g))
    assert_equal(seg_branch.to_seg(end.g_ema), seg_branch.to_seg(start.g_ema))
    assert all(changed_leaves(end.d_img, start.d_img))
    assert all(changed_leaves(frozen(end.g)["synthesis"], frozen(start.g)["synthesis"]))
    assert all(changed_leaves(end.g["mapping"], start.g["mapping"]))
    assert rows[0]["r1_img"] > 0 and rows[0]["r1_seg"] == 0 and int(end.health["skipped"]) == 0
    assert all(np.isfinite(r[k]) for r in rows for k in ("d_img", "g", "g_img"))
    assert "d_seg" not in rows[0] and "g_seg_adv" not in rows[0]


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_seg_branch_resumes_bit_exact(tmp_path):
    """2 iterations, stop, resume for 2 more == 4 uninterrupted iterations in seg_branch mode,
    bit for bit (state and logged losses)."""
    over = {**OVER, "train.trainable": "seg_branch"}
    full = gan.train(tiny_gan_config(**over, **{"train.iterations": 4}), tmp_path / "full")
    gan.train(tiny_gan_config(**over, **{"train.iterations": 2}), tmp_path / "split")
    resumed = gan.train(tiny_gan_config(**over, **{"train.iterations": 4}), tmp_path / "split", resume=True)
    assert int(resumed.step) == 4 and resumed.d_img_opt is None
    assert_equal(full, resumed)

    def losses(workdir):
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(workdir)]

    assert losses(tmp_path / "full") == losses(tmp_path / "split")


def test_joint_run_continues_in_seg_branch_and_back(tmp_path):
    """joint 2 steps -> seg_branch to 4 -> joint to 5, each a resume of the same run directory:
    seg_branch freezes the joint run's G_ema image path and its Dr; stage 2's generator loader
    and `read_workdir` read the seg_branch checkpoint; the joint mode then trains Dr again."""
    from semgan_jax.convert import read_workdir
    from semgan_jax.train import encoder

    run = tmp_path / "run"
    gan.train(tiny_gan_config(**OVER, **{"train.iterations": 2}), run)
    _, before = read_workdir(run)
    seg = gan.train(tiny_gan_config(**OVER, **{"train.iterations": 4, "train.trainable": "seg_branch"}), run,
                    resume=True)
    assert int(seg.step) == 4 and seg.d_img_opt is None
    assert_equal(frozen(seg.g), frozen(before["g_ema"]["params"]))
    assert_equal(seg.d_img, before["d_img"]["params"])
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]

    _, _, g_ema, noises = encoder.load_generator(run)
    assert_equal(g_ema, seg.g_ema)
    assert_equal(noises, seg.g_noises)
    _, after = read_workdir(run)
    assert_equal(after["g"]["params"], seg.g)

    seg = jax.device_get(seg)
    joint = gan.train(tiny_gan_config(**OVER, **{"train.iterations": 5}), run, resume=True)
    assert int(joint.step) == 5 and joint.d_img_opt is not None
    assert any(changed_leaves(joint.d_img, seg.d_img)) and any(changed_leaves(frozen(joint.g), frozen(seg.g)))


def test_trainable_is_checked():
    cfg = tiny_gan_config(**{"train.trainable": "to_seg"})
    with pytest.raises(ValueError,
                       match=r"train.trainable must be one of \('all', 'seg_branch', 'image'\), got 'to_seg'"):
        seg_branch.stage1_mode(cfg.train, None, None, None)


@pytest.mark.slow  # the fixture's G is full width (512 channels): ~1-2 min to compile on 2 cores
def test_converted_stylegan2_trains_in_seg_branch(tmp_path):
    """`semgan train-gan --resume --config.train.trainable=seg_branch` on the tests' own converted
    StyleGAN2 file: the image path stays the file's g_ema, the fresh label branch learns."""
    from test_convert import load_case

    from semgan_jax.convert import convert_checkpoint, read_workdir, write_workdir

    _, _, ckpt = load_case("stylegan2_s16_rgb")
    base = tiny_gan_config()
    config, variables = convert_checkpoint(ckpt, seg_dim=base.model.seg_dim, seed=1)
    run = write_workdir(tmp_path / "sg2", config, variables, stage1_config=base)
    env = {**os.environ, "SEMGAN_JAX_CACHE": CACHE_DIR, "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, "-m", "semgan_jax.cli", "train-gan", "--workdir", str(run), "--resume",
            "--config.train.trainable=seg_branch", "--config.train.iterations=3", "--config.log.save_every=1000",
            "--config.log.viz_every=1000", "--config.train.batch_size=4"]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "continuing with train.trainable='seg_branch'" in out.stdout
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["g"]) and np.isfinite(r["d_seg"]) for r in rows)
    cfg, trained = read_workdir(run)
    assert cfg["train"]["trainable"] == "seg_branch"
    assert_equal(frozen(trained["g_ema"]["params"]), frozen(variables["g_ema"]["params"]))
    fresh = seg_branch.to_seg(variables["g_ema"]["params"])  # the converter's new seg branch (same in g)
    assert all(changed_leaves(seg_branch.to_seg(trained["g"]["params"]), fresh))

