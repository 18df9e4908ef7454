"""DiffAugment of the discriminators' inputs (semgan_jax/train/augment.py) and its use in stage 1."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_batch, tiny_gan_config
from semgan_jax.train import augment, gan


def _pair(n=6, res=16, image_channels=3, seg_dim=4, seed=0):
    """Random images and one-hot ±1 masks concatenated, as Dm's input."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (n, res, res, image_channels)).astype(np.float32)
    labels = rng.integers(0, seg_dim, (n, res, res))
    mask = np.eye(seg_dim, dtype=np.float32)[labels] * 2 - 1
    return jnp.asarray(np.concatenate([image, mask], axis=-1))


def test_policy_parsing_and_config_check():
    assert augment.parse_policy("") == ()
    assert augment.parse_policy(" color, translation ,cutout") == ("color", "translation", "cutout")
    with pytest.raises(ValueError, match="unknown augmentation \\['flip'\\]"):
        augment.parse_policy("translation,flip")
    train = gan.default_config().train.to_dict()
    assert gan.hparams_from_config(train).augment_dm == ""  # the reference: no augmentation
    with pytest.raises(ValueError, match="unknown augmentation"):
        gan.hparams_from_config({**train, "augment_dm": "rotate"})


def test_empty_policy_is_the_identity():
    x = _pair()
    assert augment.augmenter("", None, 3)(0, x) is x


def test_fill_is_grey_image_and_background_mask():
    np.testing.assert_array_equal(augment.fill_value(3, 3), [0, 0, 0])
    np.testing.assert_array_equal(augment.fill_value(7, 3), [0, 0, 0, 1, -1, -1, -1])
    np.testing.assert_array_equal(augment.fill_value(2, 1), [0, -1])  # binary mask: background -1


def test_translation_moves_image_and_mask_together():
    """Every sample is the input shifted by one (dy, dx) with |d| <= 2 (1/8 of 16 px) on all
    channels at once, the uncovered border filled; over the batch the shifts differ."""
    x = np.asarray(_pair())
    fill = augment.fill_value(x.shape[-1], 3)
    out = np.asarray(augment.translation(jax.random.key(1), jnp.asarray(x), fill))
    shifts = []
    for n in range(len(x)):
        found = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = np.broadcast_to(np.asarray(fill), x[n].shape).copy()
                rows, cols = np.arange(16) + dy, np.arange(16) + dx
                ok_r, ok_c = (rows >= 0) & (rows < 16), (cols >= 0) & (cols < 16)
                ref[np.ix_(ok_r, ok_c)] = x[n][np.ix_(rows[ok_r], cols[ok_c])]
                if np.array_equal(out[n], ref):
                    found.append((dy, dx))
        assert len(found) == 1, found
        shifts += found
    assert len(set(shifts)) > 1


def test_cutout_fills_one_square_and_keeps_the_rest():
    x = _pair(n=8)
    fill = augment.fill_value(x.shape[-1], 3)
    out = np.asarray(augment.cutout(jax.random.key(2), x, fill))
    for n in range(len(x)):
        hole = np.all(out[n] == np.asarray(fill), axis=-1) & np.any(np.asarray(x[n]) != np.asarray(fill), axis=-1)
        np.testing.assert_array_equal(out[n][~hole], np.asarray(x[n])[~hole])
        rows, cols = np.nonzero(hole)
        assert 0 < hole.sum() <= 64  # an (overhanging) square of side 8
        assert hole.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_color_changes_the_image_channels_only():
    x = _pair()
    out = augment.color(jax.random.key(3), x, 3)
    np.testing.assert_array_equal(out[..., 3:], x[..., 3:])
    assert float(jnp.abs(out[..., :3] - x[..., :3]).mean()) > 0.05
    grey = jnp.repeat(x[..., :1], 3, axis=-1)  # saturation leaves grey pixels grey
    out = augment.color(jax.random.key(3), grey, 3)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)


def test_augmentation_is_differentiable_and_site_dependent():
    x = _pair()
    aug = augment.augmenter("color,translation,cutout", jax.random.key(4), 3)
    grad = jax.grad(lambda v: jnp.sum(aug(0, v) ** 2))(x)
    assert np.isfinite(grad).all() and float(jnp.abs(grad).sum()) > 0
    assert not np.array_equal(aug(0, x), aug(1, x))  # each call site draws its own
    np.testing.assert_array_equal(aug(0, x), aug(0, x))


@functools.lru_cache(maxsize=None)
def _step(**train):
    """(state, metrics) of one tiny stage-1 iteration with R1 and path length under `train`
    overrides: the loop's program for iteration 0 (gan.programs, fed as the loop feeds it), so
    the reference one is the program every tiny stage-1 run starts with."""
    from semgan_jax.parallel import global_batch, make_mesh

    cfg = tiny_gan_config(**{f"train.{k}": v for k, v in train.items()})
    _, mode, init, _ = gan.programs(cfg, make_mesh(1))
    state = init(jax.random.PRNGKey(0))  # as gan.train: the same programs
    batch = random_batch(cfg.model.size, cfg.model.seg_dim, cfg.train.batch_size)
    state, metrics = mode.step(state, global_batch(batch, make_mesh(1)), *mode.flags(0))
    return state, {k: float(v) for k, v in metrics.items()}


def test_stage1_step_with_augmentation():
    """Both discriminators' losses, their R1 and G's Dm terms see the augmented inputs (they
    change with the policies) and stay finite."""
    plain = _step(augment_dr="", augment_dm="")[1]
    augmented = _step(augment_dr="color,translation,cutout", augment_dm="translation,cutout")[1]
    assert all(np.isfinite(v) for v in augmented.values())
    for key in ("d_img", "d_seg", "r1_img", "r1_seg", "g_seg_feat"):
        assert augmented[key] != plain[key], key


def test_r1_weight_of_dr_alone():
    """train.r1_dr sets Dr's R1 weight and leaves Dm's: with r1_dr = 0 Dr's R1 update moves
    nothing (so Dr and then G differ from the reference step) while Dm is bit-identical."""
    train = gan.default_config().train.to_dict()
    assert gan.hparams_from_config(train).r1_weights == (10.0, 10.0)
    assert gan.hparams_from_config({**train, "r1_dr": 0.01}).r1_weights == (0.01, 10.0)
    (ref, _), (no_dr, _) = _step(augment_dr="", augment_dm=""), _step(augment_dr="", augment_dm="", r1_dr=0.0)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    assert same(ref.d_seg, no_dr.d_seg) and same(ref.d_seg_spectral, no_dr.d_seg_spectral)
    assert not same(ref.d_img, no_dr.d_img) and not same(ref.g, no_dr.g)
