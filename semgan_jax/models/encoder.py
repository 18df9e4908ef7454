"""Encoders E(x) -> w+ (N, n_latent, style_dim), NHWC inputs in [-1, 1].

- `FPNEncoder` (reference default, pSp style): ResNet-50 bottlenecks [3, 4, 6, 3], a feature
  pyramid (P2, P3, P4 at 1/4, 1/8, 1/16 of the input), and one map-to-style head per latent:
  coarse latents 0-2 from P4, medium 3-6 from P3, fine 7.. from P2.
- `ResEncoder`: the StyleGAN2 ResNet discriminator trunk with a linear w+ head.

Differences from the reference (documented in docs/architecture.md): BatchNorm's running
variance is updated with the biased batch variance (flax) where torch uses the unbiased one; the
style heads' stride-2 conv count grows with the input size beyond 256 px so that each head ends at
1x1 (the reference's fixed [4, 5, 6] only fits <= 256 px); for n_latent < 8 (sizes < 32) the
coarse/medium/fine split is truncated to n_latent heads.

`start_from_latent_avg=True` (pSp's option; off in the reference, whose encoders output w+
directly) adds G's mean w to every output, so that E learns offsets from the average face. The
mean is a parameter `latent_avg` (style_dim,) behind a stop-gradient: it travels with E's weights
into checkpoints and every consumer of E, and no optimiser moves it (zero gradient).
`train.encoder.init_state` sets it from G_ema's mapping network.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from semgan_jax.models.discriminator import ResidualTrunk
from semgan_jax.nn.conv import Conv2d
from semgan_jax.nn.layers import EqualDense


def _bn(train: bool, name: str):
    """torch's BatchNorm2d defaults; the batch variance in two passes, as torch computes it (flax's
    one-pass E[x^2] - E[x]^2 lost 1e-3 of the gradient on 1x1 maps: docs/architecture.md)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                        name=name)


def _from_latent_avg(module: nn.Module, w):
    """w + the frozen `latent_avg` parameter when module.start_from_latent_avg, else w."""
    if not module.start_from_latent_avg:
        return w
    avg = module.param("latent_avg", nn.initializers.zeros, (module.style_dim,), jnp.float32)
    return w + jax.lax.stop_gradient(avg)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 with stride, 1x1 to 4·planes) + projection shortcut."""
    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        out = nn.relu(_bn(train, "bn1")(Conv2d(self.planes, 1, use_bias=False, name="conv1")(x)))
        out = nn.relu(_bn(train, "bn2")(
            Conv2d(self.planes, 3, self.stride, 1, use_bias=False, name="conv2")(out)))
        out = _bn(train, "bn3")(Conv2d(4 * self.planes, 1, use_bias=False, name="conv3")(out))
        if self.stride != 1 or x.shape[-1] != 4 * self.planes:
            x = Conv2d(4 * self.planes, 1, self.stride, use_bias=False, name="shortcut_conv")(x)
            x = _bn(train, "shortcut_bn")(x)
        return nn.relu(out + x)


def _upsample_add(x, y):
    """Bilinear (align_corners=False) resize of x to y's H, W, plus y."""
    return jax.image.resize(x, x.shape[:1] + y.shape[1:3] + x.shape[3:], "bilinear") + y


class FPN(nn.Module):
    """ResNet-50 FPN: (N, H, W, C) -> (P2, P3, P4) with `feature_dim` channels each."""
    num_blocks: Sequence[int] = (3, 4, 6, 3)
    base_width: int = 64
    feature_dim: int = 512

    @nn.compact
    def __call__(self, x, train: bool):
        b = self.base_width
        c = nn.relu(_bn(train, "bn1")(Conv2d(b, 7, 2, 3, use_bias=False, name="conv1")(x)))
        c = nn.max_pool(c, (3, 3), (2, 2), ((1, 1), (1, 1)))
        feats = []
        for li, (n, mult) in enumerate(zip(self.num_blocks, (1, 2, 4, 8))):
            for j in range(n):
                stride = 2 if (j == 0 and li > 0) else 1
                c = Bottleneck(b * mult, stride, name=f"layer{li + 1}_{j}")(c, train)
            feats.append(c)
        c2, c3, c4, c5 = feats
        f = self.feature_dim
        p5 = Conv2d(f, 1, name="toplayer")(c5)
        p4 = _upsample_add(p5, Conv2d(f, 1, name="latlayer1")(c4))
        p3 = _upsample_add(p4, Conv2d(f, 1, name="latlayer2")(c3))
        p2 = _upsample_add(p3, Conv2d(f, 1, name="latlayer3")(c2))
        p4 = Conv2d(f, 3, 1, 1, name="smooth1")(p4)
        p3 = Conv2d(f, 3, 1, 1, name="smooth2")(p3)
        p2 = Conv2d(f, 3, 1, 1, name="smooth3")(p2)
        return p2, p3, p4


class ToStyleCode(nn.Module):
    """Map-to-style head: n_convs x (3x3 stride-2 conv + leaky ReLU 0.01) to 1x1, EqualDense.

    (N, h, w, C) -> (N, style_dim); h, w must reach 1 after n_convs halvings.
    """
    n_convs: int
    style_dim: int = 512

    @nn.compact
    def __call__(self, x):
        for i in range(self.n_convs):
            x = nn.leaky_relu(Conv2d(self.style_dim, 3, 2, 1, name=f"convs_{i}")(x), 0.01)
        if x.shape[1:3] != (1, 1):
            raise ValueError(f"style head ends at {x.shape[1:3]}, expected 1x1: more convs needed")
        return EqualDense(self.style_dim, name="linear")(x.reshape(x.shape[0], -1))


def head_split(n_latent: int) -> tuple[int, int, int]:
    """(coarse, medium, fine) head counts: 3, 4, rest as the reference (truncated when n_latent < 7)."""
    coarse = min(3, n_latent)
    medium = min(4, n_latent - coarse)
    return coarse, medium, n_latent - coarse - medium


class FPNEncoder(nn.Module):
    """Reference `FPNEncoder`: image (N, size, size, C) -> w+ (N, n_latent, style_dim).

    train=True uses batch statistics and updates 'batch_stats' (mutable=['batch_stats']).
    """
    size: int = 256
    n_latent: int = 14
    style_dim: int = 512
    feature_dim: int = 512
    base_width: int = 64
    num_blocks: Sequence[int] = (3, 4, 6, 3)
    style_layers: Sequence[int] = (4, 5, 6)
    start_from_latent_avg: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.shape[1:3] != (self.size, self.size):
            raise ValueError(f"expected {self.size}x{self.size} inputs, got {x.shape[1:3]}")
        p2, p3, p4 = FPN(self.num_blocks, self.base_width, self.feature_dim, name="fpn")(x, train)
        log = self.size.bit_length() - 1
        # halvings to 1x1: P4 is size/16, P3 size/8, P2 size/4
        convs = [max(s, need) for s, need in zip(self.style_layers, (log - 4, log - 3, log - 2))]
        styles = []
        for group, (count, feat, n_convs) in enumerate(zip(head_split(self.n_latent), (p4, p3, p2), convs)):
            name = ("coarse", "medium", "fine")[group]
            for i in range(count):
                styles.append(ToStyleCode(n_convs, self.style_dim, name=f"{name}_styles_{i}")(feat))
        return _from_latent_avg(self, jnp.stack(styles, axis=1))


class ResEncoder(nn.Module):
    """Reference `ResEncoder`: image (N, size, size, C) -> w+ (N, n_latent, style_dim)."""
    size: int = 256
    n_latent: int = 14
    style_dim: int = 512
    channel_multiplier: int = 2
    channel_base: int | None = None
    channel_max: int = 512
    blur_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: Any = jnp.float32
    start_from_latent_avg: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no batch statistics; same signature as FPNEncoder
        h = ResidualTrunk(self.size, self.channel_multiplier, self.channel_base, self.channel_max,
                          self.blur_kernel, dtype=self.dtype, name="trunk")(x)
        w = EqualDense(self.n_latent * self.style_dim, dtype=self.dtype, name="final_linear")(h)
        return _from_latent_avg(self, w.reshape(x.shape[0], self.n_latent, self.style_dim).astype(jnp.float32))
