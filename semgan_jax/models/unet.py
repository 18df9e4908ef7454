"""U-Net (Ronneberger et al. 2015) for the supervised baseline (`semgan train-supervised`).

    UNet(num_classes, base_width=64, depth=4)(x)   x float (N, H, W, C) in [-1, 1], NHWC
        -> logits float32 (N, H, W, num_classes)   (H, W divisible by 2**depth)

Encoder: `depth` levels of [two 3x3 conv + norm + ReLU] each followed by 2x2 max-pooling, widths
base_width * 2**level (level 0 .. depth-1), then a bottleneck block of width base_width * 2**depth
at H / 2**depth. Decoder: per level, 2x upsampling to the skip's width (2x2 transposed conv, the
paper's "up-conv", or bilinear resize + 1x1 conv), concatenation with the encoder feature map of
that resolution, and two 3x3 conv + norm + ReLU. Head: 1x1 conv to `num_classes` logits (use 2
for a binary mask: softmax over background / foreground). With base_width 64 and depth 4 this is
the paper's network (64 .. 1024 channels, ~31M parameters).

Differences from the paper: 'SAME' padding (output size = input size, no cropping of the skips),
and a normalisation after every 3x3 conv (the paper has none; every modern U-Net has one).
GroupNorm by default, not BatchNorm: with 8-32 labeled images the batch repeats the same few
examples, so batch statistics are noisy and the train-mode / running-average gap at test time is
large; GroupNorm normalises each example on its own, behaves the same in training and evaluation
for any batch size and device count (no cross-device statistics under data parallelism), and
needs no `batch_stats` in the train state. `norm='none'` gives the paper's plain convolutions.
Conv kernels use He-normal initialisation (the paper's sqrt(2 / fan_in) Gaussian).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("group", "none")
UPSAMPLING = ("transpose", "bilinear")

_he = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


class ConvBlock(nn.Module):
    """Two (3x3 conv -> norm -> ReLU); the conv bias is dropped when a norm follows."""
    width: int
    norm: str = "group"
    norm_groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=self.norm == "none", kernel_init=_he,
                        dtype=self.dtype, name=f"conv{i}")(x)
            if self.norm == "group":
                # as many groups as asked that divide the width (GroupNorm(32) on wide layers)
                x = nn.GroupNorm(num_groups=math.gcd(self.norm_groups, self.width), epsilon=1e-5,
                                 dtype=self.dtype, name=f"norm{i}")(x)
            x = nn.relu(x)
        return x


class UNet(nn.Module):
    """See the module docstring. num_classes: output logits per pixel; base_width: channels of
    the first level; depth: number of 2x poolings; norm: 'group' | 'none'; up: 'transpose' |
    'bilinear'; dtype: compute dtype (params and logits stay float32)."""
    num_classes: int
    base_width: int = 64
    depth: int = 4
    norm: str = "group"
    norm_groups: int = 32
    up: str = "transpose"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.up not in UPSAMPLING:
            raise ValueError(f"up must be one of {UPSAMPLING}, got {self.up!r}")
        n, h, w, _ = x.shape
        if h % 2 ** self.depth or w % 2 ** self.depth:
            raise ValueError(f"input {h}x{w} is not divisible by 2**depth = {2 ** self.depth}")
        block = dict(norm=self.norm, norm_groups=self.norm_groups, dtype=self.dtype)
        x = x.astype(self.dtype)
        skips = []
        for level in range(self.depth):
            x = ConvBlock(self.base_width * 2 ** level, **block, name=f"down{level}")(x)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = ConvBlock(self.base_width * 2 ** self.depth, **block, name="bottleneck")(x)
        self.sow("intermediates", "bottleneck_features", x)  # (N, H / 2**depth, W / 2**depth, width): oracle.py
        for level in reversed(range(self.depth)):
            width = self.base_width * 2 ** level
            if self.up == "transpose":
                x = nn.ConvTranspose(width, (2, 2), strides=(2, 2), kernel_init=_he, dtype=self.dtype,
                                     name=f"upconv{level}")(x)
            else:
                b, hh, ww, c = x.shape
                x = jax.image.resize(x, (b, 2 * hh, 2 * ww, c), "bilinear")
                x = nn.Conv(width, (1, 1), kernel_init=_he, dtype=self.dtype, name=f"upconv{level}")(x)
            x = jnp.concatenate([skips[level], x], axis=-1)
            x = ConvBlock(width, **block, name=f"up{level}")(x)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="head")(x)
        return logits.astype(jnp.float32)
