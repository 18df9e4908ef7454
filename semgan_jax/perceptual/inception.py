"""Inception-v3 for FID / IS in Flax (NHWC), as the SemanticGAN reference computes its metrics.

The reference (`utils/inception_utils.py`, `load_inception_net`) uses torchvision's
`inception_v3(pretrained=True, transform_input=False)` - the ImageNet classifier with
torchvision's weights, not pytorch-fid's FID variant (whose pooling branches and weights differ) -
wrapped as `WrapInception`:

    x in [-1, 1] -> (x + 1) / 2 -> (x - ImageNet mean) / ImageNet std
      -> bilinear resize to 299 x 299 (align_corners=True) unless already 299
      -> Conv2d_1a .. Mixed_7c -> spatial mean = pool (N, 2048) -> fc = logits (N, 1000)

and feeds `pool` to FID and softmax(logits) to IS. Grey images are repeated to 3 channels, as
`prepare_inception.py` does. BatchNorm uses running statistics (eps 1e-3); dropout is inactive.

Variables: 'params' {<torchvision module name>: {'conv': {'kernel' (kh, kw, in, out)},
'bn': {'scale', 'bias'}}, 'fc': {'kernel' (2048, 1000), 'bias'}} and 'batch_stats'
{..., 'bn': {'mean', 'var'}}; nested inception blocks use torchvision's names
('Mixed_5b' / 'branch5x5_1' / ...). Build them with `semgan_jax.perceptual.convert.inception_variables`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 299
POOL_DIM = 2048
NUM_CLASSES = 1000


def resize_matrix(in_size: int, out_size: int, dtype=np.float32) -> np.ndarray:
    """(out_size, in_size) weights of 1-D linear interpolation with align_corners=True.

    Source coordinates are computed in `dtype`, as torch's kernels do in the input's precision
    (scale = (in - 1) / (out - 1), src = scale * i): float32 resizing then agrees with torch's to
    ~2e-7, where exact coordinates would differ from it by up to ~6e-5 at 512 px.
    """
    dtype = np.dtype(dtype)
    m = np.zeros((out_size, in_size), dtype)
    if in_size == 1 or out_size == 1:
        m[:, 0] = 1.0
        return m
    scale = dtype.type(in_size - 1) / dtype.type(out_size - 1)
    src = np.arange(out_size, dtype=dtype) * scale
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = np.clip(src - lo.astype(dtype), 0, 1).astype(dtype)
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def resize_bilinear_align_corners(x, size: int, precision=jax.lax.Precision.HIGHEST):
    """torch F.interpolate(mode='bilinear', align_corners=True) for NHWC x -> (N, size, size, C)."""
    mh = jnp.asarray(resize_matrix(x.shape[1], size, x.dtype))
    mw = jnp.asarray(resize_matrix(x.shape[2], size, x.dtype))
    x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=precision)
    return jnp.einsum("pw,nowc->nopc", mw, x, precision=precision)


def avg_pool_3x3(x):
    """F.avg_pool2d(kernel 3, stride 1, padding 1), zero padding counted (count_include_pad)."""
    return nn.avg_pool(x, (3, 3), (1, 1), [(1, 1), (1, 1)], count_include_pad=True)


def max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (running stats, eps 1e-3) -> ReLU."""
    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, (self.stride, self.stride), [(ph, ph), (pw, pw)],
                    use_bias=False, precision=self.precision, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return jax.nn.relu(x)


def _conv(features, kernel=1, stride=1, padding=0, *, name, precision):
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    padding = padding if isinstance(padding, tuple) else (padding, padding)
    return BasicConv2d(features, kernel, stride, padding, precision, name=name)


class InceptionA(nn.Module):
    pool_features: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        c = dict(precision=self.precision)
        b1 = _conv(64, name="branch1x1", **c)(x)
        b5 = _conv(48, name="branch5x5_1", **c)(x)
        b5 = _conv(64, 5, padding=2, name="branch5x5_2", **c)(b5)
        b3 = _conv(64, name="branch3x3dbl_1", **c)(x)
        b3 = _conv(96, 3, padding=1, name="branch3x3dbl_2", **c)(b3)
        b3 = _conv(96, 3, padding=1, name="branch3x3dbl_3", **c)(b3)
        bp = _conv(self.pool_features, name="branch_pool", **c)(avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        c = dict(precision=self.precision)
        b3 = _conv(384, 3, stride=2, name="branch3x3", **c)(x)
        bd = _conv(64, name="branch3x3dbl_1", **c)(x)
        bd = _conv(96, 3, padding=1, name="branch3x3dbl_2", **c)(bd)
        bd = _conv(96, 3, stride=2, name="branch3x3dbl_3", **c)(bd)
        return jnp.concatenate([b3, bd, max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        c, c7 = dict(precision=self.precision), self.channels_7x7
        b1 = _conv(192, name="branch1x1", **c)(x)
        b7 = _conv(c7, name="branch7x7_1", **c)(x)
        b7 = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2", **c)(b7)
        b7 = _conv(192, (7, 1), padding=(3, 0), name="branch7x7_3", **c)(b7)
        bd = _conv(c7, name="branch7x7dbl_1", **c)(x)
        bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2", **c)(bd)
        bd = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3", **c)(bd)
        bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4", **c)(bd)
        bd = _conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5", **c)(bd)
        bp = _conv(192, name="branch_pool", **c)(avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        c = dict(precision=self.precision)
        b3 = _conv(192, name="branch3x3_1", **c)(x)
        b3 = _conv(320, 3, stride=2, name="branch3x3_2", **c)(b3)
        b7 = _conv(192, name="branch7x7x3_1", **c)(x)
        b7 = _conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2", **c)(b7)
        b7 = _conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3", **c)(b7)
        b7 = _conv(192, 3, stride=2, name="branch7x7x3_4", **c)(b7)
        return jnp.concatenate([b3, b7, max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        c = dict(precision=self.precision)
        b1 = _conv(320, name="branch1x1", **c)(x)
        b3 = _conv(384, name="branch3x3_1", **c)(x)
        b3 = jnp.concatenate([_conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a", **c)(b3),
                              _conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b", **c)(b3)], axis=-1)
        bd = _conv(448, name="branch3x3dbl_1", **c)(x)
        bd = _conv(384, 3, padding=1, name="branch3x3dbl_2", **c)(bd)
        bd = jnp.concatenate([_conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a", **c)(bd),
                              _conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b", **c)(bd)], axis=-1)
        bp = _conv(192, name="branch_pool", **c)(avg_pool_3x3(x))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """(N, H, W, 1|3) float in [-1, 1], any H, W -> (pool (N, 2048), logits (N, 1000)), `dtype`.

    precision: for convolutions and the fc layer; HIGHEST by default so accelerators do not drop
    to TF32/bf16 passes (metrics should not depend on the device).
    dtype: the input is cast to it; float64 (under jax.enable_x64, with float64 variables) gives
    an exact reference for tests.
    """
    precision: Any = jax.lax.Precision.HIGHEST
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        elif x.shape[-1] != 3:
            raise ValueError(f"expected 1 or 3 channels, got shape {x.shape}")
        x = (x.astype(self.dtype) + 1.0) / 2.0
        x = (x - jnp.asarray(IMAGENET_MEAN, self.dtype)) / jnp.asarray(IMAGENET_STD, self.dtype)
        if x.shape[1] != INPUT_SIZE or x.shape[2] != INPUT_SIZE:
            x = resize_bilinear_align_corners(x, INPUT_SIZE)
        c = dict(precision=self.precision)
        x = _conv(32, 3, stride=2, name="Conv2d_1a_3x3", **c)(x)
        x = _conv(32, 3, name="Conv2d_2a_3x3", **c)(x)
        x = _conv(64, 3, padding=1, name="Conv2d_2b_3x3", **c)(x)
        x = max_pool_3x3_s2(x)
        x = _conv(80, 1, name="Conv2d_3b_1x1", **c)(x)
        x = _conv(192, 3, name="Conv2d_4a_3x3", **c)(x)
        x = max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b", **c)(x)
        x = InceptionA(64, name="Mixed_5c", **c)(x)
        x = InceptionA(64, name="Mixed_5d", **c)(x)
        x = InceptionB(name="Mixed_6a", **c)(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name, **c)(x)
        x = InceptionD(name="Mixed_7a", **c)(x)
        x = InceptionE(name="Mixed_7b", **c)(x)
        x = InceptionE(name="Mixed_7c", **c)(x)
        pool = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(NUM_CLASSES, precision=self.precision, name="fc")(pool)
        return pool, logits
