"""Supervised U-Net baseline: the network, the loss, the training loop (tiny 16-px config),
resume, and the train-supervised / evaluate-supervised commands."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from semgan_jax import cli
from semgan_jax.models.unet import UNet
from semgan_jax.train import supervised

CONFIG = REPO / "experiments" / "synthetic_32_unet.py"
# 16 px, widths 8-16-32, batch 8, 16 labels, lr 3e-3 (the tiny net learns in a few hundred steps)
# decaying from update 3 on (so that the resume test crosses the change)
TINY = {"data.resolution": 16, "model.base_width": 8, "model.depth": 2, "model.norm_groups": 4,
        "train.batch_size": 8, "data.num_labeled": 16, "train.lr": 3e-3, "train.lr_decay_start": 1,
        "train.lr_decay_end": 1000,
        "log.n_sample": 4, "log.log_every": 1, "log.viz_every": 1000, "log.save_every": 1000}


def tiny_overrides(**overrides) -> list[str]:
    return [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]


def tiny_config(**overrides):
    from semgan_jax.config import apply_overrides, load_config_file

    return apply_overrides(load_config_file(CONFIG), [a[2:] for a in tiny_overrides(**overrides)])


def read_metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_unet_shapes_dtypes_and_the_paper_size():
    """Shapes and dtypes, traced (not compiled: the training tests run the network)."""
    key = jax.random.PRNGKey(0)
    x = jnp.zeros((2, 16, 16, 3))
    for up in ("transpose", "bilinear"):
        net = UNet(num_classes=6, base_width=8, depth=2, norm_groups=4, up=up)
        params = jax.eval_shape(net.init, key, x)["params"]
        y = jax.eval_shape(net.apply, {"params": params}, x)
        assert y.shape == (2, 16, 16, 6) and y.dtype == jnp.float32
    assert set(params) == {"down0", "down1", "bottleneck", "upconv1", "up1", "upconv0", "up0", "head"}
    assert params["bottleneck"]["conv0"]["kernel"].shape == (3, 3, 16, 32)
    assert params["up0"]["conv0"]["kernel"].shape == (3, 3, 16, 8)  # skip 8 + upsampled 8
    assert params["down0"]["norm0"]["scale"].shape == (8,) and "bias" not in params["down0"]["conv0"]
    # bfloat16 compute: float32 params and logits; one input channel, two classes
    net = UNet(num_classes=2, base_width=8, depth=2, norm_groups=4, dtype=jnp.bfloat16)
    grey = jnp.zeros((1, 16, 16, 1))
    params = jax.eval_shape(net.init, key, grey)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert jax.eval_shape(net.apply, {"params": params}, grey).dtype == jnp.float32
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*depth = 8"):
        jax.eval_shape(UNet(num_classes=2, base_width=8, depth=3).init, key, jnp.zeros((1, 20, 20, 3)))
    # base width 64 and four poolings: the paper's network, ~31M parameters
    shapes = jax.eval_shape(UNet(num_classes=2).init, key, jnp.zeros((1, 256, 256, 3)))
    n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    assert 30.5e6 < n < 31.5e6


def test_soft_dice_loss():
    labels = jnp.array([[[0, 1], [2, 1]]])
    perfect = 50.0 * jax.nn.one_hot(labels, 3)
    assert float(supervised.soft_dice_loss(perfect, labels)) < 1e-6
    # uniform probabilities: class 1 (2 pixels) dice (2*2/3 + 1) / (4/3 + 2 + 1), class 2 (1 pixel)
    # (2/3 + 1) / (4/3 + 1 + 1)
    want = 1 - ((4 / 3 + 1) / (4 / 3 + 3) + (2 / 3 + 1) / (4 / 3 + 2)) / 2
    np.testing.assert_allclose(float(supervised.soft_dice_loss(jnp.zeros((1, 2, 2, 3)), labels)), want, rtol=1e-6)


def test_two_class_train_step_learns_a_binary_mask():
    """Binary masks (SemanticGAN's seg_dim 1) are two softmax classes here: a few steps on one
    batch of face-vs-background masks cut the loss; a refused update is counted, not applied."""
    from semgan_jax.data.synthetic import generate

    images, masks = generate(8, 16, seed=0)
    batch = {"image": jnp.asarray(images, jnp.float32) / 127.5 - 1, "mask": jnp.asarray(masks > 0, jnp.int32)}
    cfg = tiny_config()
    models = supervised.SupervisedModels(
        net=UNet(num_classes=2, base_width=8, depth=1, norm_groups=4),
        tx=supervised.build_models(cfg).tx, schedule=supervised.build_models(cfg).schedule, size=16, channels=3)
    hp = supervised.hparams_from_config(cfg.train)
    state = jax.jit(lambda k: supervised.init_state(models, k))(jax.random.PRNGKey(0))
    step = jax.jit(lambda s, b: supervised.train_step(models, hp, s, b))
    first = None
    for _ in range(25):
        state, m = step(state, batch)
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.6 * first and float(m["pixel_accuracy"]) > 0.85
    bad = {**batch, "image": batch["image"].at[0, 0, 0, 0].set(jnp.nan)}
    after, m = step(state, bad)
    assert int(m["skipped_updates"]) == 1 and int(after.health["bad_step"]) == 25
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_training_learns_the_synthetic_masks(tmp_path):
    """200 iterations on 16 labeled synthetic faces: the loss falls to well under half, and on
    the first 32 test images mIoU clearly beats predicting background everywhere. Samples,
    metrics, config and a final checkpoint are written."""
    from semgan_jax.data.datasets import load_split
    from semgan_jax.data.pipeline import make_eval_batches
    from semgan_jax.metrics import SegmentationMetrics

    state = supervised.train(tiny_config(**{"train.iterations": 200, "log.viz_every": 200}), tmp_path)
    assert int(state.step) == 200
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 201))
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-10:]])
    assert last < 0.35 * first, (first, last)
    assert rows[-1]["lr"] < rows[0]["lr"]
    assert (tmp_path / "samples" / "step_000200.png").is_file()
    assert (tmp_path / "checkpoints" / "200" / "state").is_dir()
    assert json.loads((tmp_path / "config.json").read_text())["model"]["base_width"] == 8

    result = supervised.evaluate(tmp_path, "test", limit=32, batch_size=16, verbose=False)
    assert result["num_images"] == 32 and result["step"] == 200 and result["num_labeled"] == 16
    masks = next(make_eval_batches(load_split("synthetic", "test", resolution=16), 32, 6))["mask"]
    trivial = SegmentationMetrics(6)
    trivial.update(np.zeros_like(masks), masks)
    trivial_miou = trivial.result()["dataset"]["miou"]
    assert result["dataset"]["miou"] > trivial_miou + 0.15, (result["dataset"]["miou"], trivial_miou)
    assert result["dataset"]["iou"][1] > 0.5  # skin


def test_resume_is_bit_exact(tmp_path):
    """2 iterations, stop, resume for 2 more == 4 uninterrupted iterations, bit for bit (params,
    AdamW moments, RNG key, data position, logged losses and learning rates)."""
    full = supervised.train(tiny_config(**{"train.iterations": 4}), tmp_path / "full")
    supervised.train(tiny_config(**{"train.iterations": 2}), tmp_path / "split")
    resumed = supervised.train(tiny_config(**{"train.iterations": 4}), tmp_path / "split", resume=True)
    assert int(resumed.step) == 4
    for a, b in zip(jax.tree.leaves(jax.device_get(full)), jax.tree.leaves(jax.device_get(resumed))):
        np.testing.assert_array_equal(a, b)

    def losses(workdir):
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(workdir)]

    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    assert len({r["lr"] for r in losses(tmp_path / "full")}) == 2  # constant, then decaying


def test_commands_train_and_evaluate(tmp_path, capsys, monkeypatch):
    from semgan_jax.train import commands

    monkeypatch.setattr(commands, "enable_compilation_cache", lambda: None)  # keep the tests' cache
    run = tmp_path / "run"
    args = ["train-supervised", "--config", str(CONFIG), "--workdir", str(run),
            *tiny_overrides(**{"train.iterations": 3})]
    assert cli.main(args) == 0
    assert cli.main(args) == 2  # refuses to start over a run without --resume
    assert "pass --resume" in capsys.readouterr().err

    parsed = cli.build_parser().parse_args(["evaluate-supervised", "--workdir", str(run)])
    assert (parsed.split, parsed.out, parsed.grid, parsed.limit) == ("test", None, 0, 0)
    out = tmp_path / "eval" / "ood.json"
    assert cli.main(["evaluate-supervised", "--workdir", str(run), "--split", "test_ood", "--limit", "6",
                     "--batch", "16", "--grid", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["source"] == "synthetic/test_ood" and result["num_images"] == 6 and result["step"] == 3
    assert 0 <= result["dataset"]["miou"] <= 1 and len(result["dataset"]["iou"]) == 6
    assert out.with_suffix(".png").is_file()
    assert cli.main(["evaluate-supervised", "--workdir", str(run), "--limit", "2"]) == 0  # default --out
    assert json.loads((run / "eval_test.json").read_text())["num_images"] == 2
    assert cli.main(["evaluate-supervised", "--workdir", str(tmp_path / "nothing")]) == 1
    assert "train-supervised run directory" in capsys.readouterr().err
