"""Equalised-lr layers, activations, minibatch stddev, spectral norm and pooling against NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semgan_jax.models.discriminator import avg_pool_3x3_s2
from semgan_jax.nn.conv import SpectralConv2d, conv2d, instance_norm
from semgan_jax.nn.layers import (ConstantInput, EqualConv, EqualDense, NoiseInjection, fused_leaky_relu,
                                  minibatch_stddev, pixel_norm)


def test_equal_dense_runtime_scale_and_lr_mul():
    m = EqualDense(3, lr_mul=0.01, bias_init=0.5, activation=None)
    x = np.random.RandomState(0).randn(2, 5).astype(np.float32)
    v = m.init(jax.random.PRNGKey(0), x)
    w, b = np.asarray(v["params"]["weight"]), np.asarray(v["params"]["bias"])
    # init: N(0, 1) / lr_mul  -> std about 100
    assert 30 < w.std() < 300
    np.testing.assert_allclose(b, 0.5)
    want = x @ (w * 0.01 / math.sqrt(5)) + b * 0.01
    np.testing.assert_allclose(np.asarray(m.apply(v, x)), want, rtol=1e-5, atol=1e-6)


def test_equal_dense_fused_lrelu():
    m = EqualDense(4, activation="lrelu")
    x = np.random.RandomState(1).randn(3, 6).astype(np.float32)
    v = m.init(jax.random.PRNGKey(1), x)
    v = {"params": {"weight": v["params"]["weight"], "bias": jnp.arange(4.0) - 2}}
    pre = x @ (np.asarray(v["params"]["weight"]) / math.sqrt(6)) + (np.arange(4.0) - 2)
    want = np.where(pre >= 0, pre, 0.2 * pre) * math.sqrt(2)
    np.testing.assert_allclose(np.asarray(m.apply(v, x)), want, rtol=1e-5, atol=1e-5)


def test_equal_conv_scale():
    m = EqualConv(2, 3, padding=1)
    x = np.random.RandomState(2).randn(1, 4, 4, 3).astype(np.float32)
    v = m.init(jax.random.PRNGKey(0), x)
    w = np.asarray(v["params"]["weight"]) / math.sqrt(3 * 9)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.stack([np.stack([np.einsum("hwc,hwco->o", xp[0, i:i + 3, j:j + 3], w) for j in range(4)])
                     for i in range(4)])[None]
    np.testing.assert_allclose(np.asarray(m.apply(v, x)), want, rtol=1e-4, atol=1e-5)


def test_activation_and_pixel_norm_values():
    x = jnp.array([[-1.0, 0.0, 2.0]])
    np.testing.assert_allclose(fused_leaky_relu(x, jnp.array([0.5, 0.0, -1.0])),
                               [[-0.1 * math.sqrt(2), 0.0, math.sqrt(2)]], rtol=1e-6)
    y = pixel_norm(jnp.array([[3.0, 4.0]]))
    np.testing.assert_allclose(y, [[3 / math.sqrt(12.5), 4 / math.sqrt(12.5)]], rtol=1e-5)


def test_noise_injection_and_constant_input():
    x = jnp.zeros((2, 4, 4, 3))
    noise = jnp.ones((2, 4, 4, 1))
    v = NoiseInjection().init(jax.random.PRNGKey(0), x, noise)
    assert float(v["params"]["weight"][0]) == 0.0
    out = NoiseInjection().apply({"params": {"weight": jnp.array([0.5])}}, x, noise)
    np.testing.assert_allclose(out, 0.5)
    c = ConstantInput(5, 4)
    vc = c.init(jax.random.PRNGKey(0), 3)
    assert c.apply(vc, 3).shape == (3, 4, 4, 5)


def test_minibatch_stddev_matches_reference_grouping():
    rs = np.random.RandomState(0)
    x = rs.randn(8, 3, 3, 4).astype(np.float32)
    got = np.asarray(minibatch_stddev(jnp.asarray(x), group_size=4))
    # reference: groups are x[j::2] for j in {0, 1} (view(group=4, -1, ...)), std over the group
    want_extra = np.zeros(8)
    for j in range(2):
        members = x[j::2]                                   # 4 members, strided
        sd = np.sqrt(members.var(axis=0) + 1e-8).mean()
        want_extra[j::2] = sd
    assert got.shape == (8, 3, 3, 5)
    np.testing.assert_allclose(got[..., :4], x)
    np.testing.assert_allclose(got[:, 0, 0, 4], want_extra, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        minibatch_stddev(jnp.ones((6, 2, 2, 1)), group_size=4)


def test_spectral_norm_power_iteration_and_eval_freeze():
    m = SpectralConv2d(3, 2, use_bias=False)
    x = np.random.RandomState(0).randn(1, 5, 5, 4).astype(np.float32)
    v = m.init(jax.random.PRNGKey(0), x)
    w = np.asarray(v["params"]["weight"])
    u0, v0 = np.asarray(v["spectral"]["u"]), np.asarray(v["spectral"]["v"])
    wm = np.transpose(w, (3, 2, 0, 1)).reshape(3, -1)     # torch (out, in*kh*kw)
    # one training call = one power iteration
    _, st = m.apply(v, x, update_stats=True, mutable=["spectral"])
    v1 = wm.T @ u0
    v1 /= np.linalg.norm(v1)
    u1 = wm @ v1
    u1 /= np.linalg.norm(u1)
    np.testing.assert_allclose(np.asarray(st["spectral"]["v"]), v1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(st["spectral"]["u"]), u1, rtol=1e-5, atol=1e-6)
    # eval mode: the stored u, v are used as they are: W / (u^T W v), and nothing is updated
    sigma = u0 @ wm @ v0
    y, st_eval = m.apply(v, x, mutable=["spectral"])
    np.testing.assert_allclose(np.asarray(y), np.asarray(conv2d(jnp.asarray(x), jnp.asarray(w / sigma))),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(st_eval["spectral"]["u"]), u0)
    # many iterations converge to the top singular value
    for _ in range(50):
        _, st = m.apply({"params": v["params"], **st}, x, update_stats=True, mutable=["spectral"])
    uu, vv = np.asarray(st["spectral"]["u"]), np.asarray(st["spectral"]["v"])
    np.testing.assert_allclose(uu @ wm @ vv, np.linalg.svd(wm, compute_uv=False)[0], rtol=1e-4)


def test_avg_pool_excludes_padding_from_the_count():
    x = np.arange(2 * 5 * 5 * 1, dtype=np.float32).reshape(2, 5, 5, 1)
    got = np.asarray(avg_pool_3x3_s2(jnp.asarray(x)))
    assert got.shape == (2, 3, 3, 1)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=np.nan)
    for i in range(3):
        for j in range(3):
            win = xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            np.testing.assert_allclose(got[:, i, j], np.nanmean(win, axis=(1, 2)), rtol=1e-6)


def test_instance_norm():
    x = np.random.RandomState(0).randn(2, 4, 4, 3).astype(np.float32) * 3 + 1
    y = np.asarray(instance_norm(jnp.asarray(x)))
    want = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, want, atol=1e-5)
