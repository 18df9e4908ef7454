"""Differentiable augmentation of the discriminators' inputs (DiffAugment, Zhao et al. 2020).

For short runs and few labeled pairs (`train.augment_dr`, `train.augment_dm`; off in the
reference configs, which the official code trains without augmentation). Real and fake inputs
of a discriminator get the same kind of random transform, every time the discriminator sees them
(its update, R1 and G's update), so D cannot memorise the few reals and G never learns the
transforms. Geometric ops move image and mask channels together; colour ops change the image
channels only.

    augmenter(policy, key, image_channels) -> aug(site, x): x (N, H, W, C) NHWC, the first
        `image_channels` channels an image in [-1, 1], the rest (Dm's input) a label map in the
        one-hot ±1 layout (1 channel: binary 2·mask − 1). `site` (int) picks the draw, so each
        call site of one iteration draws its own. policy '' -> identity.
    parse_policy(policy) -> tuple of op names; ValueError for unknown ones.

Ops, as DiffAugment's (per sample):
    color        brightness + U(-0.5, 0.5); saturation × U(0, 2); contrast × U(0.5, 1.5)
    translation  integer shift up to 1/8 of the size in x and y; uncovered pixels are filled
    cutout       one square of half the size, at a uniform position, filled
The fill is 0 for image channels (grey) and background for mask channels (class 0: +1 on its
channel and −1 elsewhere; binary masks −1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

OPS = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' -> ()."""
    ops = tuple(op.strip() for op in policy.split(",") if op.strip())
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown} in policy {policy!r}; choose from {OPS}")
    return ops


def fill_value(channels: int, image_channels: int) -> jnp.ndarray:
    """(C,) what uncovered pixels get: 0 on image channels, background on mask channels."""
    seg_dim = channels - image_channels
    mask = [-1.0] if seg_dim == 1 else [1.0] + [-1.0] * (seg_dim - 1) if seg_dim else []
    return jnp.asarray([0.0] * image_channels + mask, jnp.float32)


def color(key, x, image_channels: int):
    """Brightness, saturation and contrast of the image channels, per sample."""
    img, rest = x[..., :image_channels], x[..., image_channels:]
    kb, ks, kc = jax.random.split(key, 3)
    shape = (x.shape[0], 1, 1, 1)
    img = img + (jax.random.uniform(kb, shape, img.dtype) - 0.5)
    mean = img.mean(axis=-1, keepdims=True)
    img = (img - mean) * (jax.random.uniform(ks, shape, img.dtype) * 2) + mean
    mean = img.mean(axis=(1, 2, 3), keepdims=True)
    img = (img - mean) * (jax.random.uniform(kc, shape, img.dtype) + 0.5) + mean
    return jnp.concatenate([img, rest], axis=-1)


def translation(key, x, fill, ratio: float = TRANSLATION_RATIO):
    """Shift each sample by whole pixels in [-r, r] (r = round(ratio · size)) along y and x."""
    n, h, w, _ = x.shape
    ry, rx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ky, kx = jax.random.split(key)
    rows = jnp.arange(h)[None, :, None] + jax.random.randint(ky, (n, 1, 1), -ry, ry + 1)
    cols = jnp.arange(w)[None, None, :] + jax.random.randint(kx, (n, 1, 1), -rx, rx + 1)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    moved = x[jnp.arange(n)[:, None, None], jnp.clip(rows, 0, h - 1), jnp.clip(cols, 0, w - 1)]
    return jnp.where(inside[..., None], moved, fill.astype(x.dtype))


def cutout(key, x, fill, ratio: float = CUTOUT_RATIO):
    """Fill one square of side round(ratio · size) per sample, centred uniformly (it may overhang)."""
    n, h, w, _ = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ky, kx = jax.random.split(key)
    top = jax.random.randint(ky, (n, 1, 1), 0, h + (1 - sy % 2)) - sy // 2
    left = jax.random.randint(kx, (n, 1, 1), 0, w + (1 - sx % 2)) - sx // 2
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    hole = (rows >= top) & (rows < top + sy) & (cols >= left) & (cols < left + sx)
    return jnp.where(hole[..., None], fill.astype(x.dtype), x)


GEOMETRIC = {"translation": translation, "cutout": cutout}


def augmenter(policy: str, key, image_channels: int):
    """aug(site, x) -> x with `policy`'s ops applied (see the module docstring)."""
    ops = parse_policy(policy)
    if not ops:
        return lambda site, x: x

    def aug(site: int, x):
        fill = fill_value(x.shape[-1], image_channels)
        keys = jax.random.split(jax.random.fold_in(key, site), len(OPS))
        for op in ops:
            k = keys[OPS.index(op)]
            x = color(k, x, image_channels) if op == "color" else GEOMETRIC[op](k, x, fill)
        return x

    return aug
