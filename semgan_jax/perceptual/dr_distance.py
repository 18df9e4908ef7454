"""A label-free perceptual distance from the trained image discriminator Dr (NHWC, [-1, 1]).

    DrDistance(dr=ImageDiscriminator(...))(x0, x1) -> (N,) distances

LPIPS's recipe with Dr as the backbone and no learned heads (the lpips package's "baseline"
variant, `lpips=False`): the outputs of Dr's first 1x1 conv and of each residual block
(size, size/2, ..., 4 px; before the minibatch-stddev layer, so each image's features are its
own), each unit-normalised over channels (x / (||x|| + 1e-10)), squared difference summed over
channels, spatial mean, sum over the layers.

Why: the reference inverts with LPIPS, whose ImageNet backbone cannot be downloaded here. Dr is
trained on the same images without labels (never the oracle, which saw labels), so its
features are a perceptual space of the domain that costs nothing to obtain. docs/learning.md
measures it against pixel MSE (on the 32-px synthetic faces it scores lower, as a stage-2 loss
and as an inversion loss). Variables: {'params': {'dr': {'trunk': Dr's trunk params}}}, taken
from a stage-1 Dr by `variables_for`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from semgan_jax.models.discriminator import ImageDiscriminator
from semgan_jax.perceptual.lpips import unit_differences


class DrDistance(nn.Module):
    """(x0, x1) (N, size, size, C) in [-1, 1] -> (N,) distances in Dr's feature space.

    `dr` is the stage-1 ImageDiscriminator; only its trunk runs (params {'dr': {'trunk': ...}}:
    `variables_for`)."""
    dr: ImageDiscriminator

    @nn.compact
    def __call__(self, x0, x1):
        feats = self.dr(jnp.concatenate([x0, x1], axis=0), features=True)
        total = jnp.zeros((x0.shape[0],), jnp.float32)
        for diff in unit_differences([f.astype(jnp.float32) for f in feats], x0.shape[0]):
            total = total + jnp.mean(jnp.sum(diff, axis=-1), axis=(1, 2))
        return total


def variables_for(dr_params: Any) -> dict:
    """DrDistance's params from a stage-1 Dr's params (only its trunk is used)."""
    return {"dr": {"trunk": dr_params["trunk"]}}
