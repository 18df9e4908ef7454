"""Modulated convolution (StyleGAN2), NHWC, in two numerically equivalent forms.

- ``input_scaling`` (default): scale the input channels by the style, run ONE convolution with the
  shared weight, multiply the output by the demodulation coefficients. Batch-size independent
  kernels, so XLA runs a plain dense convolution.
- ``grouped``: build a per-sample weight (N, k, k, in, out) and run a grouped convolution with one
  group per sample: the classic form of the reference's `ModulatedConv2d`.

Both forms produce the same numbers (tests/test_modconv.py checks outputs and gradients);
`benchmarks/modconv.py` measures their speed.

Parameters: weight (k, k, in, out) N(0, 1) (reference (1, out, in, k, k)), modulation = EqualDense
with bias initialised to 1.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from semgan_jax.nn.conv import conv_stride1
from semgan_jax.nn.layers import EqualDense
from semgan_jax.nn.upfirdn import blur, fir_pads

IMPLS = ("input_scaling", "grouped")
# The input-scaling form's stride-2 transposed conv: 'phases' (conv_transpose_2x: four small dense
# convs, no zeros multiplied; the fastest forward and first-order gradients) or 'zero_insert'
# (zeros inserted, then one 'same'-padded conv: 4x the FLOPs, but its second-order gradients, which
# the path-length regulariser takes, stay plain convs; XLA:CPU runs those of the phase convs'
# unpadded windows on a slow generic path).
UPSAMPLE_FORMS = ("phases", "zero_insert")
_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, upsample: bool, groups: int = 1):
    """Stride-1 'same' conv, or stride-2 transposed conv (output 2H + k - 2) when upsampling."""
    k = w.shape[0]
    if upsample:
        return jax.lax.conv_general_dilated(
            x, w[::-1, ::-1], (1, 1), [(k - 1, k - 1)] * 2, lhs_dilation=(2, 2),
            dimension_numbers=_DN, feature_group_count=groups)
    p = k // 2
    if groups == 1:
        return conv_stride1(x, w, ((p, p), (p, p)))
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(p, p)] * 2, dimension_numbers=_DN,
                                        feature_group_count=groups)


def conv_transpose_2x(x, w):
    """torch conv_transpose2d(stride 2, padding 0) as 4 phase convolutions, NHWC / HWIO.

    out[2m + p] = sum_j x[m - j] w[p + 2j] per axis: each output phase is a small stride-1 conv
    with the taps w[p::2], so no zeros are multiplied and every gradient stays a dense conv
    (XLA:CPU's weight gradient of an lhs-dilated conv is ~40x slower).
    (N, H, W, in), (k, k, in, out) -> (N, 2H + k - 2, 2W + k - 2, out).
    """
    n, h, wd, _ = x.shape
    k, cout = w.shape[0], w.shape[-1]
    my, mx = -(-(2 * h + k - 2) // 2), -(-(2 * wd + k - 2) // 2)
    j0 = -(-k // 2)  # taps of phase 0; phase 1 has k // 2
    # one explicit pad, then VALID convs on slices: XLA:CPU's filter gradient of an asymmetrically
    # padded conv takes a slow path
    xp = jnp.pad(x, ((0, 0), (j0 - 1, my - h), (j0 - 1, mx - wd), (0, 0)))
    rows = []
    for py in range(2):
        cols = []
        for px in range(2):
            wp = w[py::2, px::2][::-1, ::-1]
            xs = xp[:, j0 - wp.shape[0]:, j0 - wp.shape[1]:]
            cols.append(conv_stride1(xs, wp, ((0, 0), (0, 0))))
        rows.append(jnp.stack(cols, axis=3))                       # (N, my, mx, 2, out)
    y = jnp.stack(rows, axis=2).reshape(n, 2 * my, 2 * mx, cout)   # (N, my, 2, mx, 2, out)
    return y[:, :2 * h + k - 2, :2 * wd + k - 2]


def conv_transpose_2x_zero_insert(x, w):
    """conv_transpose_2x's numbers as zero insertion + one 'same'-padded conv (see UPSAMPLE_FORMS).
    (N, H, W, in), (k, k, in, out), k odd -> (N, 2H + k - 2, 2W + k - 2, out)."""
    k = w.shape[0]
    if k % 2 == 0:
        raise ValueError(f"the zero_insert upsampling form needs an odd kernel, got {k}")
    q = k // 2  # x[m] at 2m + q of a (2H - 1 + 2q)-long zero-filled axis, then a 'same' conv
    xz = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (q, q, 1), (q, q, 1), (0, 0, 0)))
    return conv_stride1(xz, w[::-1, ::-1], ((q, q), (q, q)))


def modulated_conv(x, weight, styles, *, demodulate=True, upsample=False, impl="input_scaling",
                   eps=1e-8, dtype=None, upsample_form="phases"):
    """Functional modulated conv, without the up-sampling blur.

    Args:
      x: (N, H, W, in).  weight: (k, k, in, out), already multiplied by 1/sqrt(fan_in).
      styles: (N, in) modulation coefficients.
    Returns:
      (N, H, W, out), or (N, 2H + k - 2, 2W + k - 2, out) with upsample (transposed stride-2 conv).
    """
    dtype = dtype or x.dtype
    n, _, _, cin = x.shape
    k, cout = weight.shape[0], weight.shape[-1]
    styles = styles.astype(jnp.float32)
    if impl == "input_scaling":
        xs, w = (x * styles[:, None, None, :]).astype(dtype), weight.astype(dtype)
        if upsample_form not in UPSAMPLE_FORMS:
            raise ValueError(f"upsample_form must be one of {UPSAMPLE_FORMS}, got {upsample_form!r}")
        if not upsample:
            y = _conv(xs, w, False)
        else:
            y = (conv_transpose_2x if upsample_form == "phases" else conv_transpose_2x_zero_insert)(xs, w)
        if demodulate:
            wsq = jnp.sum(jnp.square(weight.astype(jnp.float32)), axis=(0, 1))      # (in, out)
            d = jax.lax.rsqrt(jnp.square(styles) @ wsq + eps)                        # (N, out)
            y = y * d[:, None, None, :].astype(y.dtype)
        return y
    if impl == "grouped":
        w = weight.astype(jnp.float32)[None] * styles[:, None, None, :, None]       # (N,k,k,in,out)
        if demodulate:
            w = w * jax.lax.rsqrt(jnp.sum(jnp.square(w), axis=(1, 2, 3), keepdims=True) + eps)
        w = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(k, k, cin, n * cout)
        xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, x.shape[1], x.shape[2], n * cin)
        y = _conv(xg.astype(dtype), w.astype(dtype), upsample, groups=n)
        h2, w2 = y.shape[1], y.shape[2]
        return jnp.transpose(y.reshape(h2, w2, n, cout), (2, 0, 1, 3))
    raise ValueError(f"modulated conv impl must be one of {IMPLS}, got {impl!r}")


class ModulatedConv(nn.Module):
    """Reference `ModulatedConv2d`: (N, H, W, in), style (N, style_dim) -> (N, H', W', features).

    upsample: transposed stride-2 conv then FIR blur (gain 4): H' = 2H. No bias (callers add it).
    """
    features: int
    kernel_size: int
    demodulate: bool = True
    upsample: bool = False
    blur_kernel: Sequence[int] = (1, 3, 3, 1)
    impl: str = "input_scaling"
    dtype: Any = jnp.float32
    upsample_form: str = "phases"  # UPSAMPLE_FORMS (input_scaling only)

    @nn.compact
    def __call__(self, x, style):
        cin, k = x.shape[-1], self.kernel_size
        weight = self.param("weight", nn.initializers.normal(1.0), (k, k, cin, self.features))
        s = EqualDense(cin, bias_init=1.0, name="modulation")(style)
        y = modulated_conv(x, weight / math.sqrt(cin * k * k), s, demodulate=self.demodulate,
                           upsample=self.upsample, impl=self.impl, dtype=self.dtype, upsample_form=self.upsample_form)
        if self.upsample:
            y = blur(y, self.blur_kernel, fir_pads(len(self.blur_kernel), 2, k, "up_conv"), gain=4.0)
        return y
