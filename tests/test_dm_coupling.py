"""The two stage-1 options that aim Dm at image-mask alignment (train.fake_mask, train.dm_mismatch):
what Dm is given, the gradients G gets back, and the loss they add; the reference's step is the
default of both."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_gan_config
from semgan_jax.train import gan


def _logits(k=4, seed=0):
    return jax.random.normal(jax.random.key(seed), (2, 5, 5, k)) * 3


def test_fake_mask_modes_values():
    img, seg = jnp.ones((2, 5, 5, 3)), _logits()
    raw, soft, hard = (gan.dm_fake_input(img, seg, m) for m in gan.FAKE_MASKS)
    np.testing.assert_array_equal(raw[..., :3], img)
    np.testing.assert_array_equal(raw[..., 3:], seg)
    np.testing.assert_allclose(soft[..., 3:], 2 * jax.nn.softmax(seg, -1) - 1, rtol=1e-6)
    # hard: exactly a real mask's encoding (one-hot in [-1, 1]) at the argmax
    expect = 2 * np.eye(4)[np.argmax(seg, -1)] - 1
    np.testing.assert_allclose(hard[..., 3:], expect, atol=1e-6)
    # one channel (binary masks): tanh and sign
    seg1 = _logits(1)
    np.testing.assert_allclose(gan.dm_fake_input(img, seg1, "softmax")[..., 3:], jnp.tanh(seg1), rtol=1e-6)
    np.testing.assert_allclose(gan.dm_fake_input(img, seg1, "hard")[..., 3:], jnp.sign(seg1), atol=1e-6)


@pytest.mark.parametrize("k", [1, 4])
def test_hard_fake_mask_passes_the_softmax_gradient_and_none_to_the_image(k):
    img, seg = jnp.ones((2, 5, 5, 3)), _logits(k)
    weights = jax.random.normal(jax.random.key(1), (2, 5, 5, 3 + k))
    f = lambda mode: lambda i, s: jnp.sum(weights * gan.dm_fake_input(i, s, mode))  # noqa: E731
    g_img, g_hard = jax.grad(f("hard"), argnums=(0, 1))(img, seg)
    g_soft = jax.grad(f("softmax"), argnums=1)(img, seg)
    np.testing.assert_array_equal(g_img, 0.0)       # Dm's losses reach G through the mask only
    np.testing.assert_allclose(g_hard, g_soft, rtol=1e-6)
    assert float(jnp.abs(g_hard).max()) > 0


def test_mismatched_pairs_keep_images_and_roll_masks():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 3 + 2))
    wrong = gan.mismatched_pairs(x, 3)
    np.testing.assert_array_equal(wrong[..., :3], x[..., :3])
    np.testing.assert_array_equal(wrong[1:, ..., 3:], x[:-1, ..., 3:])
    np.testing.assert_array_equal(wrong[0, ..., 3:], x[-1, ..., 3:])


@functools.lru_cache(maxsize=None)
def _dm_setup():
    cfg = tiny_gan_config()
    models = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    state = jax.jit(lambda k: gan.init_state(models, k))(jax.random.key(0))
    rng = np.random.default_rng(0)
    n, s, k = 4, cfg.model.size, cfg.model.seg_dim
    real = np.concatenate([rng.uniform(-1, 1, (n, s, s, 3)), np.eye(k)[rng.integers(0, k, (n, s, s))] * 2 - 1], -1)
    fake = rng.normal(size=(n, s, s, 3 + k))
    return models, state, jnp.asarray(fake, jnp.float32), jnp.asarray(real, jnp.float32)


def test_dm_mismatch_adds_the_hinge_fake_loss_of_mismatched_real_pairs():
    models, state, fake, real = _dm_setup()
    ident = lambda site, x: x  # noqa: E731

    @jax.jit
    def run(d, spectral):
        base, (_, real_score, _) = gan.dm_loss(d, spectral, models, fake, real, ident)
        with_mismatch, (_, real_score2, _) = gan.dm_loss(d, spectral, models, fake, real, ident, mismatch=0.5)
        # the same Dm calls in the same order (each advances the spectral-norm power iteration)
        _, sp = gan._dm(models, d, spectral, fake)
        _, sp = gan._dm(models, d, sp, real)
        wrong, _ = gan._dm(models, d, sp, gan.mismatched_pairs(real, models.g.image_channels))
        return base, real_score, with_mismatch, real_score2, wrong

    base, real_score, with_mismatch, real_score2, wrong = run(state.d_seg, state.d_seg_spectral)
    from semgan_jax import losses

    np.testing.assert_allclose(real_score2, real_score, rtol=1e-6)
    np.testing.assert_allclose(float(with_mismatch - base), 0.5 * float(losses.hinge_d_loss(wrong, False)) / 2,
                               rtol=1e-4, atol=1e-6)
    assert float(with_mismatch - base) > 0


def test_options_are_checked_and_default_to_the_reference():
    train = gan.default_config().train.to_dict()
    hp = gan.hparams_from_config(train)
    assert (hp.fake_mask, hp.dm_mismatch) == ("raw", 0.0)
    with pytest.raises(ValueError, match="train.fake_mask"):
        gan.hparams_from_config({**train, "fake_mask": "onehot"})
