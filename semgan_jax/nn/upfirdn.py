"""upfirdn2d: upsample by zero insertion, pad, FIR filter, downsample (NHWC).

The numbers equal the reference's `upfirdn2d` (rosinality/stylegan2-pytorch, used by SemanticGAN):
the filter is applied as a true convolution (kernel flipped), padding may be negative (cropping),
and downsampling keeps every `down`-th sample starting at 0.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def make_kernel(k: Sequence[float] | np.ndarray, separable: bool | None = None) -> np.ndarray:
    """Normalised FIR kernel: a 1-D list gives a separable kernel `k / sum(k)` (kept 1-D when
    `separable` is true or None), a 2-D array is normalised to sum 1. Returns float32."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1 and separable is False:
        k = np.outer(k, k)
    return k / k.sum()


def _pairs(v, n=2):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _fir_1d(x: jax.Array, k: np.ndarray, axis: int, down: int) -> jax.Array:
    """Depthwise 1-D true convolution of NHWC `x` along spatial `axis` (1 or 2), stride `down`."""
    c = x.shape[-1]
    kk = jnp.asarray(k[::-1], x.dtype)
    shape = (len(k), 1) if axis == 1 else (1, len(k))
    w = jnp.broadcast_to(kk.reshape(shape + (1, 1)), shape + (1, c))
    strides = (down, 1) if axis == 1 else (1, down)
    return jax.lax.conv_general_dilated(
        x, w, strides, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def upfirdn2d(x: jax.Array, kernel, up=1, down=1, pad=(0, 0)) -> jax.Array:
    """Upsample, FIR-filter and downsample an NHWC batch.

    Args:
      x: (N, H, W, C).
      kernel: 1-D (separable, applied along H then W) or 2-D (kh, kw) FIR taps, used as given
        (normalise with `make_kernel`; scale by up**2 for upsampling as the reference does).
      up, down: int or (up_y, up_x) / (down_y, down_x).
      pad: (p0, p1) for both axes, or (py0, py1, px0, px1); negative values crop.

    Returns:
      (N, (H*up_y + py0 + py1 - kh) // down_y + 1, (W*up_x + px0 + px1 - kw) // down_x + 1, C).
    """
    up_y, up_x = _pairs(up)
    down_y, down_x = _pairs(down)
    pad = tuple(pad)
    py0, py1, px0, px1 = (pad * 2) if len(pad) == 2 else pad
    kernel = np.asarray(kernel, np.float32)
    n, h, w, c = x.shape

    if up_y > 1 or up_x > 1:
        x = x.reshape(n, h, 1, w, 1, c)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, up_y - 1), (0, 0), (0, up_x - 1), (0, 0)))
        x = x.reshape(n, h * up_y, w * up_x, c)

    x = jnp.pad(x, ((0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0)), (0, 0)))
    x = x[:, max(-py0, 0): x.shape[1] - max(-py1, 0), max(-px0, 0): x.shape[2] - max(-px1, 0), :]

    if kernel.ndim == 1:
        x = _fir_1d(x, kernel, axis=1, down=down_y)
        return _fir_1d(x, kernel, axis=2, down=down_x)
    w_ = jnp.asarray(kernel[::-1, ::-1], x.dtype)
    w_ = jnp.broadcast_to(w_[:, :, None, None], kernel.shape + (1, c))
    return jax.lax.conv_general_dilated(
        x, w_, (down_y, down_x), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c)


def fir_pads(k_len: int, factor: int, kernel_size: int, mode: str) -> tuple[int, int]:
    """Paddings the reference uses around its FIR filters (mode: up, down, up_conv, down_conv)."""
    if mode == "up":
        p = k_len - factor
        return (p + 1) // 2 + factor - 1, p // 2
    if mode == "down":
        p = k_len - factor
        return (p + 1) // 2, p // 2
    if mode == "up_conv":  # blur after a stride-2 transposed conv
        p = (k_len - factor) - (kernel_size - 1)
        return (p + 1) // 2 + factor - 1, p // 2 + 1
    if mode == "down_conv":  # blur before a stride-2 conv
        p = (k_len - factor) + (kernel_size - 1)
        return (p + 1) // 2, p // 2
    raise ValueError(f"unknown FIR padding mode {mode!r}")


def upsample_2x(x: jax.Array, blur_kernel=(1, 3, 3, 1)) -> jax.Array:
    """Reference `Upsample`: (N, H, W, C) -> (N, 2H, 2W, C), kernel scaled by 4."""
    k = make_kernel(blur_kernel) * 2  # separable: 2 per axis = factor**2 overall
    return upfirdn2d(x, k, up=2, pad=fir_pads(len(blur_kernel), 2, 0, "up"))


def downsample_2x(x: jax.Array, blur_kernel=(1, 3, 3, 1)) -> jax.Array:
    """Reference `Downsample`: (N, H, W, C) -> (N, H/2, W/2, C)."""
    return upfirdn2d(x, make_kernel(blur_kernel), down=2, pad=fir_pads(len(blur_kernel), 2, 0, "down"))


def blur(x: jax.Array, blur_kernel, pad: tuple[int, int], gain: float = 1.0) -> jax.Array:
    """Reference `Blur(kernel, pad, upsample_factor)`: FIR filter only; `gain` = factor**2."""
    k = make_kernel(blur_kernel)
    k = k * (gain ** 0.5 if k.ndim == 1 else gain)
    return upfirdn2d(x, k, pad=pad)

