"""What makes short runs learn: the EMA ramp-up and the training-time budget."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semgan_jax.train.state import EMA_DECAY, ema_decay_at


def _ada_beta(step, batch, ema_kimg, rampup):
    """StyleGAN2-ADA training_loop.py, as written there (cur_nimg = images seen before the update)."""
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, step * batch * rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@pytest.mark.parametrize("batch", [4, 16, 32])
def test_ema_rampup_is_stylegan2_ada_formula(batch):
    # the reference's decay is ADA's with ema_kimg = 10 at batch 32: half-life 312.5 iterations
    ema_kimg = 10 * batch / 32
    for step in [0, 1, 2, 7, 100, 1000, 6249, 6250, 6251, 20000]:
        got = float(ema_decay_at(jnp.int32(step), EMA_DECAY, 0.05))
        np.testing.assert_allclose(got, _ada_beta(step, batch, ema_kimg, 0.05), rtol=2e-6, atol=1e-7)
    assert float(ema_decay_at(0, EMA_DECAY, 0.05)) == 0.0  # the first update copies G


def test_ema_without_rampup_is_the_reference_constant():
    for step in [0, 5, 10_000]:
        assert float(ema_decay_at(step, EMA_DECAY, 0.0)) == np.float32(0.5 ** (32 / 10000))
    # after the ramp ends the decay is the constant one
    assert math.isclose(float(ema_decay_at(10**6, EMA_DECAY, 0.05)), EMA_DECAY, rel_tol=1e-6)


def test_ema_rampup_forgets_the_initialisation_in_a_short_run():
    """After 350 iterations of a constant target, the reference keeps 46 % of the initial
    weights (the demo's blobs); the ramp-up keeps almost none."""
    def run(rampup):
        step = jax.jit(lambda e, i: e * ema_decay_at(i, EMA_DECAY, rampup) + (1 - ema_decay_at(i, EMA_DECAY, rampup)))
        ema = jnp.float32(0.0)
        for i in range(1, 351):  # step 0 is the copy of the initial weights (0 here)
            ema = step(ema, i)
        return 1.0 - float(ema)   # weight still on the initial value
    assert run(0.0) == pytest.approx(0.5 ** (350 * 32 / 10000), rel=1e-3)
    assert run(0.05) < 1e-6
