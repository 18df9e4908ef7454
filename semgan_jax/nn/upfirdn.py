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


def _pad_axis(x, axis, lo, hi):
    """Zero-pad (positive) or crop (negative) `x` along `axis`: one lax.pad."""
    cfg = [(0, 0, 0)] * x.ndim
    cfg[axis] = (lo, hi, 0)
    return jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _taps(x, kf, axis, length, step=1, offset=0):
    """sum_t kf[t] * x[offset + t + step*m], m < length: FIR taps as fused slices (static kf)."""
    out = None
    for t, c in enumerate(kf):
        if c == 0:
            continue
        start = offset + t
        sl = jax.lax.slice_in_dim(x, start, start + step * (length - 1) + 1, stride=step, axis=axis)
        c = float(c)  # weak-typed: keeps bf16 inputs bf16
        out = c * sl if out is None else out + c * sl
    return out if out is not None else jnp.zeros_like(jax.lax.slice_in_dim(x, 0, length, axis=axis))


def _upfirdn_1d(x, k, axis, up, down, p0, p1):
    """One axis of upfirdn2d with a 1-D kernel `k` (true convolution, hence the flip).

    up > 1 with down == 1 runs polyphase: each output phase sums only the taps that land on
    input samples, never the inserted zeros.
    """
    n_in, klen = x.shape[axis], len(k)
    kf = np.asarray(k, np.float64)[::-1]
    n_out = (n_in * up + p0 + p1 - klen) // down + 1
    if up == 1:
        return _taps(_pad_axis(x, axis, p0, p1), kf, axis, n_out, step=down)
    if down == 1:
        # out[u*m + p] = sum over taps t with (p + t - p0) % u == 0 of kf[t] * x[m + (p + t - p0) // u]
        m_len = -(-n_out // up)
        offs = [(p + t - p0) // up for p in range(up) for t in range(klen) if (p + t - p0) % up == 0]
        lo = max(0, -min(offs))
        hi = max(0, m_len - 1 + max(offs) - (n_in - 1))
        xp = _pad_axis(x, axis, lo, hi)
        phases = []
        for p in range(up):
            phase_k = np.zeros(max(offs) - min(offs) + 1)
            for t in range(klen):
                if (p + t - p0) % up == 0:
                    phase_k[(p + t - p0) // up - min(offs)] += kf[t]
            phases.append(_taps(xp, phase_k, axis, m_len, offset=min(offs) + lo))
        y = jnp.stack(phases, axis=axis + 1)
        shape = list(x.shape)
        shape[axis] = m_len * up
        return jax.lax.slice_in_dim(y.reshape(shape), 0, n_out, axis=axis)
    return _upfirdn_1d(_zero_insert(x, axis, up), k, axis, 1, down, p0, p1)


def _zero_insert(x, axis, up):
    """Insert up - 1 zeros after every sample along `axis`."""
    y = jnp.expand_dims(x, axis + 1)
    cfg = [(0, 0)] * y.ndim
    cfg[axis + 1] = (0, up - 1)
    shape = list(x.shape)
    shape[axis] *= up
    return jnp.pad(y, cfg).reshape(shape)


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

    The taps are static, so filtering is a sum of shifted slices that XLA fuses (XLA:CPU's
    depthwise convolution is about 10x slower for these small kernels).
    """
    up_y, up_x = _pairs(up)
    down_y, down_x = _pairs(down)
    pad = tuple(pad)
    py0, py1, px0, px1 = (pad * 2) if len(pad) == 2 else pad
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim == 1:
        x = _upfirdn_1d(x, kernel, 1, up_y, down_y, py0, py1)
        return _upfirdn_1d(x, kernel, 2, up_x, down_x, px0, px1)
    x = _pad_axis(_pad_axis(_zero_insert(_zero_insert(x, 1, up_y), 2, up_x), 1, py0, py1), 2, px0, px1)
    kh, kw = kernel.shape
    oh, ow = (x.shape[1] - kh) // down_y + 1, (x.shape[2] - kw) // down_x + 1
    kf = kernel[::-1, ::-1]
    out = None
    for i in range(kh):
        row = jax.lax.slice_in_dim(x, i, i + down_y * (oh - 1) + 1, stride=down_y, axis=1)
        term = _taps(row, kf[i], 2, ow, step=down_x)
        out = term if out is None else out + term
    return out


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

