"""LPIPS v0.1 (Zhang et al. 2018) in Flax: VGG16 / AlexNet features + learned linear heads (NHWC).

    LPIPS(net="vgg")(x0, x1) -> (N,) distances; x0, x1 float (N, H, W, C) in [-1, 1], C = 3 or 1
    (grey images are repeated to 3 channels).

Computation, as the `lpips` package's `LPIPS(version='0.1', lpips=True, spatial=False)` in eval
mode and the reference's `PerceptualLoss(model='net-lin')`: the ImageNet scaling layer
(x - shift) / scale, the backbone's five ReLU outputs, each unit-normalised over channels
(x / (||x|| + 1e-10)), squared difference, a 1x1 conv without bias to one channel (the v0.1 head),
spatial mean, sum over the five layers. Dropout in the heads is inactive in eval mode, so absent.

Variables ('params' only): {'features': {'conv_i': {'kernel' (k, k, in, out), 'bias'}},
'lin_j': {'kernel' (1, 1, C_j, 1)}} with i the layer's index in torchvision's `features`
Sequential (so `conv_0`, `conv_2`, ... for VGG16) and j = 0..4. Build them from a torchvision
state dict and the lpips head file with `semgan_jax.perceptual.convert.lpips_variables`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from semgan_jax.nn.conv import conv_general_dilated

# ScalingLayer of lpips v0.1: maps [-1, 1] inputs to ImageNet-normalised ones.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# torchvision `features` layouts as (index in the Sequential, spec): spec (out, kernel, stride,
# padding) is a conv followed by a ReLU (which takes index + 1); "pool" a 3x3 / 2 and "pool2" a
# 2x2 / 2 max pool (floor mode).
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# The ReLU indices whose outputs lpips taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16_TAPS = (3, 8, 15, 22, 29)
ALEXNET_LAYERS = (
    (0, (64, 11, 4, 2)), (2, "pool"), (3, (192, 5, 1, 2)), (5, "pool"), (6, (384, 3, 1, 1)),
    (8, (256, 3, 1, 1)), (10, (256, 3, 1, 1)))
ALEXNET_TAPS = (1, 4, 7, 9, 11)


def _vgg16_layers():
    layers, index = [], 0
    for item in _VGG16_CFG:
        if item == "M":
            layers.append((index, "pool2"))
            index += 1
        else:
            layers.append((index, (item, 3, 1, 1)))
            index += 2
    return tuple(layers)


VGG16_LAYERS = _vgg16_layers()


class _Features(nn.Module):
    """A torchvision `features` prefix: (N, H, W, 3) -> the ReLU outputs at `taps`, in order."""
    layers: tuple
    taps: tuple
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        outs = []
        for index, spec in self.layers:
            if spec == "pool":
                x = nn.max_pool(x, (3, 3), (2, 2), "VALID")
            elif spec == "pool2":
                x = nn.max_pool(x, (2, 2), (2, 2), "VALID")
            else:
                features, k, stride, pad = spec
                x = nn.Conv(features, (k, k), (stride, stride), [(pad, pad)] * 2, precision=self.precision,
                            conv_general_dilated=conv_general_dilated, name=f"conv_{index}")(x)
                x = jax.nn.relu(x)
                if index + 1 in self.taps:
                    outs.append(x)
                if len(outs) == len(self.taps):
                    break
        return outs


def backbone(net: str, precision=None) -> _Features:
    """The feature net lpips uses for `net` ('vgg' or 'alex'), with its five taps."""
    if net == "vgg":
        return _Features(VGG16_LAYERS, VGG16_TAPS, precision, name="features")
    if net == "alex":
        return _Features(ALEXNET_LAYERS, ALEXNET_TAPS, precision, name="features")
    raise ValueError(f"unknown LPIPS net {net!r}; choose 'vgg' or 'alex'")


def unit_normalize(x, eps: float = 1e-10):
    """x / (||x||_2 over the channel axis + eps), as lpips.normalize_tensor; (..., C) -> (..., C).

    Where all channels are zero (a ReLU output can be) the norm is taken as 0 without the
    infinite derivative of sqrt at 0, so gradients stay finite; values are unchanged.
    """
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return x / (norm + eps)


def unit_differences(feats, n: int):
    """Per layer, (unit_normalize(f[:n]) - unit_normalize(f[n:]))**2 (N, h, w, C): the feature maps
    of a batch [x0; x1] (2N images) compared image by image, as LPIPS does before its heads."""
    for f in feats:
        f = unit_normalize(f)
        yield (f[:n] - f[n:]) ** 2


def to_rgb(x):
    """(N, H, W, 1 or 3) -> (N, H, W, 3): grey images repeated over three channels."""
    if x.shape[-1] == 1:
        return jnp.repeat(x, 3, axis=-1)
    if x.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got shape {x.shape}")
    return x


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. (x0, x1) float (N, H, W, 1|3) in [-1, 1] -> (N,) float32.

    net: 'vgg' (the reference's choice for the encoder loss) or 'alex' (lpips's default).
    precision: passed to the convolutions (None = backend default).
    """
    net: str = "vgg"
    precision: Any = None

    @nn.compact
    def __call__(self, x0, x1):
        shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
        scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
        x = jnp.concatenate([to_rgb(x0), to_rgb(x1)], axis=0).astype(jnp.float32)
        feats = backbone(self.net, self.precision)((x - shift) / scale)
        total = jnp.zeros((x0.shape[0],), jnp.float32)
        for j, diff in enumerate(unit_differences(feats, x0.shape[0])):
            lin = nn.Conv(1, (1, 1), use_bias=False, precision=self.precision, name=f"lin_{j}")(diff)
            total = total + jnp.mean(lin, axis=(1, 2, 3))
        return total
