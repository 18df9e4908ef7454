"""StyleGAN2 building blocks with equalised learning rate (NHWC, float32 params).

Parameter layouts (the converters in `semgan_jax.convert` rely on them):
  EqualDense.weight (in, out); EqualConv.weight (kh, kw, in, out) (HWIO); biases (out,).
Weights are stored unscaled (N(0, 1) / lr_mul at init) and scaled at run time by
lr_mul / sqrt(fan_in), exactly as the reference's EqualLinear / EqualConv2d.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from semgan_jax.nn.conv import conv2d
from semgan_jax.nn.upfirdn import blur, fir_pads

SQRT2 = math.sqrt(2.0)
Dtype = Any


def fused_leaky_relu(x: jax.Array, bias: jax.Array | None = None, slope: float = 0.2,
                     gain: float = SQRT2) -> jax.Array:
    """leaky_relu(x + bias, slope) * gain; bias broadcasts over the last (channel) axis."""
    if bias is not None:
        x = x + bias.astype(x.dtype)
    return jnp.where(x >= 0, x, x * slope) * gain


def pixel_norm(x: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
    """x / sqrt(mean(x**2, axis) + eps), the mapping network's input normalisation."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


def _normal_over(lr_mul: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) / lr_mul
    return init


class EqualDense(nn.Module):
    """Equalised-lr linear layer (reference `EqualLinear`). (..., in) -> (..., features).

    activation='lrelu' applies the fused bias + leaky ReLU (slope 0.2, gain sqrt(2)).
    """
    features: int
    use_bias: bool = True
    bias_init: float = 0.0
    lr_mul: float = 1.0
    activation: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        w = self.param("weight", _normal_over(self.lr_mul), (fan_in, self.features))
        scale = self.lr_mul / math.sqrt(fan_in)
        x = x.astype(self.dtype)
        y = x @ (w * scale).astype(self.dtype)
        b = None
        if self.use_bias:
            b = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
            b = b * self.lr_mul
        if self.activation == "lrelu":
            return fused_leaky_relu(y, b)
        if self.activation is not None:
            raise ValueError(f"unknown activation {self.activation!r}")
        return y if b is None else y + b.astype(y.dtype)


class EqualConv(nn.Module):
    """Equalised-lr 2-D convolution (reference `EqualConv2d`). (N, H, W, Cin) -> (N, H', W', out)."""
    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    subsample_strides: bool = False  # see nn.conv.conv2d

    @nn.compact
    def __call__(self, x):
        k, cin = self.kernel_size, x.shape[-1]
        w = self.param("weight", nn.initializers.normal(1.0), (k, k, cin, self.features))
        scale = 1.0 / math.sqrt(cin * k * k)
        y = conv2d(x, w * scale, self.stride, self.padding, self.dtype, self.subsample_strides)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return y


class FusedLeakyReLU(nn.Module):
    """Learned per-channel bias followed by leaky ReLU (0.2) x sqrt(2) (reference `FusedLeakyReLU`)."""
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        b = self.param("bias", nn.initializers.zeros, (x.shape[-1],)) if self.use_bias else None
        return fused_leaky_relu(x, b)


class ConvLayer(nn.Module):
    """Reference `ConvLayer`: [blur] -> EqualConv -> [bias + lrelu].

    With downsample, a FIR blur then a stride-2 conv halves H and W.
    """
    features: int
    kernel_size: int
    downsample: bool = False
    blur_kernel: Sequence[int] = (1, 3, 3, 1)
    use_bias: bool = True
    activate: bool = True
    dtype: Dtype = jnp.float32
    subsample_strides: bool = False  # see nn.conv.conv2d

    @nn.compact
    def __call__(self, x):
        if self.downsample:
            x = blur(x, self.blur_kernel, fir_pads(len(self.blur_kernel), 2, self.kernel_size, "down_conv"))
            stride, padding = 2, 0
        else:
            stride, padding = 1, self.kernel_size // 2
        x = EqualConv(self.features, self.kernel_size, stride, padding, use_bias=self.use_bias and not self.activate,
                      dtype=self.dtype, subsample_strides=self.subsample_strides, name="conv")(x)
        if self.activate:
            x = FusedLeakyReLU(self.use_bias, name="act")(x)
        return x


class ResBlock(nn.Module):
    """Reference discriminator `ResBlock`: two 3x3 convs (second downsamples) + 1x1 skip, / sqrt(2)."""
    features: int
    blur_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32
    subsample_strides: bool = False  # see nn.conv.conv2d

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        out = ConvLayer(cin, 3, dtype=self.dtype, name="conv1")(x)
        out = ConvLayer(self.features, 3, downsample=True, blur_kernel=self.blur_kernel,
                        dtype=self.dtype, subsample_strides=self.subsample_strides, name="conv2")(out)
        skip = ConvLayer(self.features, 1, downsample=True, blur_kernel=self.blur_kernel, activate=False,
                         use_bias=False, dtype=self.dtype, subsample_strides=self.subsample_strides, name="skip")(x)
        return (out + skip) / SQRT2


class NoiseInjection(nn.Module):
    """x + weight * noise, weight a learned scalar (init 0); noise (N, H, W, 1) broadcasts over C."""

    @nn.compact
    def __call__(self, x, noise):
        w = self.param("weight", nn.initializers.zeros, (1,))
        return x + (w * noise).astype(x.dtype)


class ConstantInput(nn.Module):
    """Learned constant (1, size, size, C) tiled to the batch."""
    channels: int
    size: int = 4

    @nn.compact
    def __call__(self, batch: int):
        c = self.param("input", nn.initializers.normal(1.0), (1, self.size, self.size, self.channels))
        return jnp.broadcast_to(c, (batch,) + c.shape[1:])


def minibatch_stddev(x: jax.Array, group_size: int = 4, num_features: int = 1, eps: float = 1e-8):
    """Append the minibatch standard deviation channel(s) (reference `_cal_stddev`).

    x: (N, H, W, C) -> (N, H, W, C + num_features). Group members are strided through the batch
    (sample i is grouped with i + N/G, i + 2N/G, ...), as the reference's `view(group, -1, ...)`.
    Over several devices this is defined on the global batch. N must be divisible by min(N, G).
    """
    n, h, w, c = x.shape
    g = min(n, group_size)
    if n % g:
        raise ValueError(f"minibatch stddev: batch {n} is not divisible by group size {g}")
    y = x.reshape(g, n // g, h, w, num_features, c // num_features).astype(jnp.float32)
    y = jnp.sqrt(jnp.var(y, axis=0) + eps)          # (n/g, h, w, F, c/F)
    y = jnp.mean(y, axis=(1, 2, 4))                  # (n/g, F)
    y = jnp.tile(y, (g, 1))[:, None, None, :]        # (n, 1, 1, F)
    y = jnp.broadcast_to(y, (n, h, w, num_features)).astype(x.dtype)
    return jnp.concatenate([x, y], axis=-1)
