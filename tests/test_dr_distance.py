"""The label-free perceptual distance in Dr's feature space (perceptual/dr_distance.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from semgan_jax.models.discriminator import ImageDiscriminator, ResidualTrunk
from semgan_jax.perceptual.dr_distance import DrDistance, variables_for

DR = ImageDiscriminator(size=16, channel_max=16)


def _setup():
    params = jax.jit(DR.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    x0, x1 = (jax.random.uniform(k, (3, 16, 16, 3), minval=-1, maxval=1) for k in keys)
    return params, x0, x1


def test_distance_is_lpips_baseline_on_dr_features():
    """Sum over Dr's trunk taps (1x1 conv at 16 px, ResBlocks at 8 and 4 px) of the spatial mean of
    the channel-summed squared difference of unit-normalised features, computed here in numpy
    from the trunk's own outputs."""
    params, x0, x1 = _setup()
    got = np.asarray(jax.jit(DrDistance(DR).apply)({"params": variables_for(params)}, x0, x1))
    trunk = ResidualTrunk(16, DR.channel_multiplier, DR.channel_base, DR.channel_max)
    feats = jax.jit(lambda p, x: trunk.apply({"params": p}, x, features=True))(params["trunk"],
                                                                               jnp.concatenate([x0, x1]))
    assert [f.shape[1] for f in feats] == [16, 8, 4]
    want = np.zeros(3)
    for f in feats:
        f = np.asarray(f, np.float64)
        f = f / (np.sqrt((f ** 2).sum(-1, keepdims=True)) + 1e-10)
        want += ((f[:3] - f[3:]) ** 2).sum(-1).mean(axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(got > 0)


def test_distance_is_zero_for_equal_images_symmetric_and_differentiable():
    params, x0, x1 = _setup()
    d = DrDistance(DR)
    v = {"params": variables_for(params)}
    dist = jax.jit(d.apply)
    np.testing.assert_allclose(np.asarray(dist(v, x0, x0)), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dist(v, x0, x1)), np.asarray(dist(v, x1, x0)), rtol=1e-6)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(d.apply(v, x, x1))))(x0)
    assert np.isfinite(grad).all() and float(jnp.abs(grad).sum()) > 0


def test_stage1_dr_is_the_perceptual_net_named_dr():
    """`load_perceptual` with lpips.net = 'dr' gives DrDistance over the stage-1 state's own Dr."""
    import ml_collections

    from semgan_jax.train import encoder

    params, x0, x1 = _setup()

    class Models:
        d_img = DR

    class State:
        d_img = params

    module, p = encoder.load_perceptual(ml_collections.ConfigDict({"net": "dr", "backbone": "", "heads": ""}),
                                        Models, State)
    assert isinstance(module, DrDistance) and module.dr == DR
    jax.tree.map(np.testing.assert_array_equal, p, {"dr": {"trunk": params["trunk"]}})
    assert float(module.apply({"params": p}, x0, x1).mean()) > 0
