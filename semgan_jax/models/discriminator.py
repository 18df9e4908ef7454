"""The two SemanticGAN discriminators (NHWC).

- `ImageDiscriminator` (Dr, reference `Discriminator`): StyleGAN2 ResNet discriminator on images,
  minibatch stddev (group 4), logits (N, 1).
- `MaskDiscriminator` (Dm, reference `MultiscaleDiscriminator(getIntermFeat=True)`): pix2pixHD
  PatchGAN at 3 scales on concat(image, mask), spectral norm + instance norm, returning every
  scale's intermediate features, the last being the final (N, h, w, 1) map.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from semgan_jax.models.widths import channels_at, log2_size
from semgan_jax.nn.conv import Conv2d, SpectralConv2d, instance_norm
from semgan_jax.nn.layers import ConvLayer, EqualDense, ResBlock, minibatch_stddev


class ResidualTrunk(nn.Module):
    """Shared body of Dr and ResEncoder: 1x1 ConvLayer, ResBlocks down to 4x4, minibatch stddev,
    3x3 ConvLayer; flattened in torch's (C, H, W) order. (N, size, size, C) -> (N, 16 * ch(4))."""
    size: int
    channel_multiplier: int = 2
    channel_base: int | None = None
    channel_max: int = 512
    blur_kernel: Sequence[int] = (1, 3, 3, 1)
    stddev_group: int = 4
    dtype: Any = jnp.float32
    subsample_strides: bool = False  # nn.conv.conv2d's form of the strided convs (R1 on the CPU)

    @nn.compact
    def __call__(self, x, features: bool = False):
        """features=True: instead, the outputs of convs_0 and of each ResBlock (size, size/2, ...,
        4 px), before the minibatch stddev (perceptual/dr_distance.py)."""
        if x.shape[1:3] != (self.size, self.size):
            raise ValueError(f"expected {self.size}x{self.size} inputs, got {x.shape[1:3]}")
        ch = lambda r: channels_at(r, self.channel_multiplier, self.channel_base, self.channel_max)  # noqa: E731
        log = log2_size(self.size)
        x = ConvLayer(ch(self.size), 1, dtype=self.dtype, name="convs_0")(x)
        taps = [x]
        for j, i in enumerate(range(log, 2, -1)):
            x = ResBlock(ch(2 ** (i - 1)), self.blur_kernel, dtype=self.dtype,
                         subsample_strides=self.subsample_strides, name=f"convs_{j + 1}")(x)
            taps.append(x)
        if features:
            return taps
        x = minibatch_stddev(x, self.stddev_group)
        x = ConvLayer(ch(4), 3, dtype=self.dtype, name="final_conv")(x)
        return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class ImageDiscriminator(nn.Module):
    """Dr: image (N, size, size, C) -> realness logits (N, 1) (float32)."""
    size: int = 256
    channel_multiplier: int = 2
    channel_base: int | None = None
    channel_max: int = 512
    blur_kernel: Sequence[int] = (1, 3, 3, 1)
    stddev_group: int = 4
    dtype: Any = jnp.float32
    subsample_strides: bool = False  # nn.conv.conv2d's form of the strided convs (R1 on the CPU)

    @nn.compact
    def __call__(self, x, features: bool = False):
        """features=True: the trunk's per-layer outputs instead (ResidualTrunk; perceptual/dr_distance.py)."""
        h = ResidualTrunk(self.size, self.channel_multiplier, self.channel_base, self.channel_max,
                          self.blur_kernel, self.stddev_group, self.dtype, self.subsample_strides,
                          name="trunk")(x, features=features)
        if features:
            return h
        c4 = channels_at(4, self.channel_multiplier, self.channel_base, self.channel_max)
        h = EqualDense(c4, activation="lrelu", dtype=self.dtype, name="final_linear_0")(h)
        return EqualDense(1, dtype=self.dtype, name="final_linear_1")(h).astype(jnp.float32)


def avg_pool_3x3_s2(x):
    """torch AvgPool2d(3, stride=2, padding=1, count_include_pad=False), NHWC."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    win, strides = (1, 3, 3, 1), (1, 2, 2, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, win, strides, pads)
    count = jax.lax.reduce_window(jnp.ones(x.shape[1:3], x.dtype)[None, :, :, None], 0.0,
                                  jax.lax.add, win, strides, pads)
    return total / count


def _lrelu(x):
    return jnp.where(x >= 0, x, 0.2 * x)


class PatchDiscriminator(nn.Module):
    """pix2pixHD `NLayerDiscriminator` with intermediate features: n_layers + 2 blocks of 4x4 convs.

    Block 0: conv s2 + lrelu; blocks 1..n-1: SN conv s2 (no bias) + IN + lrelu; block n: SN conv s1
    + IN + lrelu; block n+1: conv s1 to 1 channel. Padding 2. Returns the list of block outputs.
    """
    ndf: int = 64
    n_layers: int = 3
    max_channels: int = 512
    dtype: Any = jnp.float32
    subsample_strides: bool = False  # nn.conv.conv2d's form of the strided convs (R1 on the CPU)

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        sub = self.subsample_strides
        feats = [_lrelu(Conv2d(self.ndf, 4, 2, 2, dtype=self.dtype, subsample_strides=sub, name="model0")(x))]
        nf = self.ndf
        for n in range(1, self.n_layers + 1):
            nf = min(nf * 2, self.max_channels)
            stride = 2 if n < self.n_layers else 1
            h = SpectralConv2d(nf, 4, stride, 2, use_bias=False, dtype=self.dtype, subsample_strides=sub,
                               name=f"model{n}")(feats[-1], update_stats)
            feats.append(_lrelu(instance_norm(h)))
        feats.append(Conv2d(1, 4, 1, 2, dtype=self.dtype, name=f"model{self.n_layers + 1}")(feats[-1]))
        return [f.astype(jnp.float32) for f in feats]


class MaskDiscriminator(nn.Module):
    """Dm: concat(image, mask) (N, H, W, C_img + seg_dim) -> [scale][block] features.

    Scale 0 sees the full resolution (its weights are the reference's `scale{num_d-1}_*`), each
    next scale a 3x3/2 average-pooled input. update_stats=True is torch's train mode for spectral
    norm (needs mutable=['spectral']).
    """
    ndf: int = 64
    n_layers: int = 3
    num_d: int = 3
    max_channels: int = 512
    dtype: Any = jnp.float32
    subsample_strides: bool = False  # nn.conv.conv2d's form of the strided convs (R1 on the CPU)

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        out = []
        for i in range(self.num_d):
            d = PatchDiscriminator(self.ndf, self.n_layers, self.max_channels, self.dtype, self.subsample_strides,
                                   name=f"scale{self.num_d - 1 - i}")
            out.append(d(x, update_stats))
            if i != self.num_d - 1:
                x = avg_pool_3x3_s2(x)
        return out
