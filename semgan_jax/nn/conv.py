"""Plain (non-equalised) convolutions as torch.nn.Conv2d defines them, with spectral norm and
instance norm: the layers of the pix2pixHD mask discriminator and the pSp/FPN encoder (NHWC).

Layouts: weight (k, k, in, out) (torch (out, in, k, k)); spectral-norm state u (out,), v (in*k*k,)
in the 'spectral' collection, v indexed in torch's (in, kh, kw) order so torch buffers copy as is.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")


def torch_uniform(fan_in: int):
    """torch's default Conv2d/Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def conv2d(x, w, stride: int = 1, padding: int = 0, dtype=None, subsample_strides: bool = False):
    """Cross-correlation of NHWC x with HWIO w, symmetric zero padding.

    subsample_strides: compute a strided conv as the stride-1 conv with padding max(padding, k // 2),
    cropped and subsampled: the same numbers with stride x stride the FLOPs, but every derivative
    of it, second order included, stays a plain convolution. XLA:CPU runs the second-order weight
    gradient of a strided (or unpadded) conv, which R1 needs, on a slow generic path (about 4x
    slower per call at 32 px, 256 channels, than this form; benchmarks/RESULTS.md)."""
    dtype = dtype or x.dtype
    x, w = x.astype(dtype), w.astype(dtype)
    if smaller_than_kernel(x, w):
        return taps_conv(x, w, (stride, stride), ((padding, padding),) * 2)
    if stride == 1 or not subsample_strides:
        return jax.lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                            dimension_numbers=_DN)
    k = w.shape[0]
    q = max(padding, k // 2)
    oh, ow = ((n + 2 * padding - k) // stride + 1 for n in x.shape[1:3])
    y = jax.lax.conv_general_dilated(x, w, (1, 1), [(q, q)] * 2, dimension_numbers=_DN)
    o = q - padding
    return y[:, o:o + stride * (oh - 1) + 1:stride, o:o + stride * (ow - 1) + 1:stride]


def _lax_conv(x, w, padding):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_stride1(x, w, padding):
    """Stride-1 cross-correlation, NHWC x / HWIO w, padding ((lo, hi), (lo, hi)), whose input
    gradient is an explicit convolution with the flipped, in/out-transposed kernel. The same
    numbers as `lax.conv_general_dilated` and its VJP; but inside a `while` loop (the inversion's
    `lax.scan` over steps, G and LPIPS frozen) XLA:CPU runs its own form of that gradient, the
    kernel reversed inside the conv, about 4x slower (a 3x3 512-channel conv at 32 px, batch 1:
    180 against 46 ms per step; benchmarks/RESULTS.md). Outside loops both forms take the same time.
    Reverse mode only (a custom VJP): `jax.grad` to any order, no `jax.jvp`."""
    return _lax_conv(x, w, padding)


def _conv_stride1_fwd(x, w, padding):
    return _lax_conv(x, w, padding), (x, w)


def _conv_stride1_bwd(padding, res, g):
    x, w = res
    kh, kw = w.shape[:2]
    (py0, py1), (px0, px1) = padding
    w_t = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    dx = _lax_conv(g, w_t, ((kh - 1 - py0, kh - 1 - py1), (kw - 1 - px0, kw - 1 - px1)))
    dw = jax.vjp(lambda w: _lax_conv(x, w, padding), w)[1](g)[0]
    return dx, dw


conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


def smaller_than_kernel(x, w) -> bool:
    """Whether NHWC x has fewer spatial positions than HWIO w's window: XLA swaps the operands of
    such a conv (the case `taps_conv` serves)."""
    return x.shape[1] * x.shape[2] < w.shape[0] * w.shape[1]


def taps_conv(x, w, strides=(1, 1), padding=((0, 0), (0, 0)), precision=None):
    """A convolution as one matmul over the kernel taps that reach the input, for inputs smaller
    than the kernel (H * W < kh * kw: the encoder's style heads at 2x2 and 1x1, VGG's last block
    at 32 px). XLA swaps such a conv's operands, running the weight as the image with a reversed
    kernel: a weight-sized `reverse` in every call, which the inversion loop (frozen encoder,
    every step) pays each step (benchmarks/RESULTS.md). Same numbers as the conv.
    x (N, H, W, in), w (kh, kw, in, out), padding ((lo, hi), (lo, hi)), negative crops
    -> (N, H', W', out)."""
    (sy, sx), ((py0, py1), (px0, px1)) = strides, padding
    kh, kw, _, cout = w.shape
    n, h, wd = x.shape[:3]
    oh, ow = (h + py0 + py1 - kh) // sy + 1, (wd + px0 + px1 - kw) // sx + 1
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (py0, py1, 0), (px0, px1, 0), (0, 0, 0)))

    def reaches(tap, lo, size, stride, out):  # tap row `tap` reads padded rows tap + stride * m
        return any(lo <= tap + stride * m < lo + size for m in range(out))

    taps = [(i, j) for i in range(kh) if reaches(i, py0, h, sy, oh) for j in range(kw) if reaches(j, px0, wd, sx, ow)]
    if not taps:
        return jnp.zeros((n, oh, ow, cout), jnp.result_type(x, w))
    cols = [xp[:, i:i + sy * (oh - 1) + 1:sy, j:j + sx * (ow - 1) + 1:sx] for i, j in taps]
    w_taps = jnp.concatenate([w[i, j] for i, j in taps], axis=0)            # (taps * in, out)
    return jnp.matmul(jnp.concatenate(cols, axis=-1), w_taps, precision=precision)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
    """`jax.lax.conv_general_dilated` for flax's `nn.Conv(conv_general_dilated=...)`: NHWC / HWIO
    convolutions of inputs smaller than the kernel run as `taps_conv`, other stride-1 ones as
    `conv_stride1`, the rest unchanged."""
    plain = (lhs.ndim == 4 and feature_group_count == 1 and not isinstance(padding, str)
             and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
             and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN))
    if plain and smaller_than_kernel(lhs, rhs):
        return taps_conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)), precision)
    if plain and tuple(window_strides) == (1, 1) and precision is None:
        return conv_stride1(lhs, rhs, tuple(map(tuple, padding)))
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision)


class Conv2d(nn.Module):
    """torch.nn.Conv2d equivalent: (N, H, W, Cin) -> (N, H', W', features)."""
    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    dtype: Any = jnp.float32
    subsample_strides: bool = False  # see conv2d

    @nn.compact
    def __call__(self, x):
        k, cin = self.kernel_size, x.shape[-1]
        fan_in = cin * k * k
        w = self.param("weight", torch_uniform(fan_in), (k, k, cin, self.features))
        y = conv2d(x, w, self.stride, self.padding, self.dtype, self.subsample_strides)
        if self.use_bias:
            y = y + self.param("bias", torch_uniform(fan_in), (self.features,)).astype(y.dtype)
        return y


def _l2_normalize(x, eps=1e-12):
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


class SpectralConv2d(nn.Module):
    """Conv2d with torch.nn.utils.spectral_norm (one power iteration per training call).

    update_stats=True (torch train mode): v <- normalize(W^T u), u <- normalize(W v), stored in the
    mutable 'spectral' collection; False (eval mode): the stored u, v are used as they are.
    In both, sigma = u^T W v with u, v treated as constants, and the conv uses W / sigma.
    """
    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    dtype: Any = jnp.float32
    subsample_strides: bool = False  # see conv2d

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        k, cin = self.kernel_size, x.shape[-1]
        fan_in = cin * k * k
        w = self.param("weight", torch_uniform(fan_in), (k, k, cin, self.features))
        u = self.variable("spectral", "u", lambda: _l2_normalize(
            jax.random.normal(self.make_rng("params"), (self.features,))))
        v = self.variable("spectral", "v", lambda: _l2_normalize(
            jax.random.normal(self.make_rng("params"), (fan_in,))))
        w_mat = jnp.transpose(w, (3, 2, 0, 1)).reshape(self.features, fan_in)
        uu, vv = u.value, v.value
        if update_stats and not self.is_initializing():
            wm = jax.lax.stop_gradient(w_mat)
            vv = _l2_normalize(wm.T @ uu)
            uu = _l2_normalize(wm @ vv)
            u.value, v.value = uu, vv
        sigma = jnp.dot(jax.lax.stop_gradient(uu), w_mat @ jax.lax.stop_gradient(vv))
        y = conv2d(x, w / sigma, self.stride, self.padding, self.dtype, self.subsample_strides)
        if self.use_bias:
            y = y + self.param("bias", torch_uniform(fan_in), (self.features,)).astype(y.dtype)
        return y


def instance_norm(x, eps: float = 1e-5):
    """torch InstanceNorm2d(affine=False): per-sample, per-channel over H, W (biased variance)."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
    var = jnp.var(xf, axis=(1, 2), keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)
