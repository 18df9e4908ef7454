"""Procedural faces with part masks: the default dataset for the demo and tests (no download).

Each example is a face made of ellipses (skin with shading, hair behind the head and as a fringe,
two eyes with irises, arched brows, a mouth) on a textured background (colour, a sine grating and
smooth noise), rendered with numpy over whole chunks of examples at once.

    images uint8 (N, R, R, 3)   masks uint8 (N, R, R) in 0..5 (CLASS_NAMES)

Geometry is given in resolution-free coordinates, so one seed draws the same faces at every R.
Randomness comes from `np.random.default_rng([seed, chunk, stream])` with a fixed chunk size:
the same (seed, index, resolution) always gives the same bytes, whatever `num` is asked for.

The out-of-domain variant (`ood=True`) draws the same geometry, hence the same masks, and changes
only the appearance: colours rotated about the grey axis, a checkerboard texture over the whole
image, a box blur and reduced contrast. In-domain vs OOD accuracy then measures generalisation
to an appearance shift with identical label semantics.

`SyntheticSource` is a random-access source (`__len__`/`__getitem__`) for the pipelines;
`SyntheticFaces` is the TFDS builder behind `semgan prepare synthetic` (same bytes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from semgan_jax.data import common

CLASS_NAMES = ("background", "skin", "hair", "eye", "brow", "mouth")
PALETTE = np.array([[0, 0, 0], [0, 0, 205], [142, 142, 56], [25, 25, 112], [187, 255, 255],
                    [227, 207, 87]], np.uint8)
CHANNELS = 3
RESOLUTIONS = (32, 64, 128, 256)
CHUNK = 64
# split -> (number of examples, seed, out-of-domain)
SPLITS = {"train": (4000, 0, False), "test": (500, 1, False), "test_ood": (500, 2, True)}

_HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.55, 0.38, 0.20],
                          [0.85, 0.70, 0.45], [0.55, 0.20, 0.10], [0.60, 0.60, 0.62]], np.float32)
_IRIS_COLOURS = np.array([[0.25, 0.15, 0.08], [0.20, 0.35, 0.60], [0.25, 0.45, 0.25]], np.float32)
_SKIN_LIGHT = np.array([0.96, 0.80, 0.69], np.float32)
_SKIN_DARK = np.array([0.42, 0.28, 0.20], np.float32)


def _col(x: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1, 1) for broadcasting against (n, R, R)."""
    return np.asarray(x, np.float32)[:, None, None]


def _smooth_noise(rng: np.random.Generator, n: int, res: int, cells: int = 6) -> np.ndarray:
    """(n, R, R) bilinear upsampling of a (cells x cells) N(0, 1) grid."""
    grid = rng.standard_normal((n, cells, cells)).astype(np.float32)
    pos = (np.arange(res) + 0.5) / res * (cells - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    w = (pos - i0).astype(np.float32)
    interp = np.zeros((res, cells), np.float32)
    interp[np.arange(res), i0] = 1 - w
    interp[np.arange(res), i0 + 1] = w
    return np.einsum("yi,nij,xj->nyx", interp, grid, interp)


def _box_blur(x: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Mean over a (2 radius + 1) window along axis, edges replicated."""
    k = 2 * radius + 1
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius + 1, radius)
    c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float32)
    n = c.shape[axis]
    return (np.take(c, np.arange(k, n), axis) - np.take(c, np.arange(0, n - k), axis)) / k


def _ellipse(x, y, cx, cy, rx, ry) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _render_chunk(seed: int, chunk: int, res: int, ood: bool) -> tuple[np.ndarray, np.ndarray]:
    """CHUNK examples: (images uint8 (CHUNK, R, R, 3), masks uint8 (CHUNK, R, R))."""
    n = CHUNK
    geo = np.random.default_rng([seed, chunk, 0])
    app = np.random.default_rng([seed, chunk, 1])
    u = ((np.arange(res) + 0.5) / res * 2 - 1).astype(np.float32)
    x, y = u[None, None, :], u[None, :, None]

    # Geometry: face frame (xf, yf) centred on the face and rotated by its tilt.
    cx, cy = _col(geo.uniform(-0.1, 0.1, n)), _col(geo.uniform(0.0, 0.12, n))
    rx = _col(geo.uniform(0.48, 0.6, n))
    ry = rx * _col(geo.uniform(1.12, 1.3, n))
    tilt = _col(geo.uniform(-0.3, 0.3, n))
    has_hair = _col(geo.random(n) > 0.1) > 0
    hair_len, fringe = _col(geo.uniform(-0.1, 0.9, n)), _col(geo.uniform(0.45, 0.8, n))
    eye_dx, eye_y = _col(geo.uniform(0.32, 0.45, n)) * rx, _col(geo.uniform(-0.25, -0.05, n)) * ry
    eye_rx = _col(geo.uniform(0.13, 0.19, n)) * rx
    eye_ry = eye_rx * _col(geo.uniform(0.45, 0.75, n))
    brow_y = eye_y - eye_ry - _col(geo.uniform(0.06, 0.14, n)) * ry
    mouth_y, mouth_rx = _col(geo.uniform(0.42, 0.6, n)) * ry, _col(geo.uniform(0.22, 0.38, n)) * rx
    mouth_ry = _col(geo.uniform(0.06, 0.11, n)) * ry
    iris_dx = _col(geo.uniform(-0.35, 0.35, n)) * eye_rx

    dx, dy = x - cx, y - cy
    xf = np.cos(tilt) * dx + np.sin(tilt) * dy
    yf = -np.sin(tilt) * dx + np.cos(tilt) * dy
    r2 = (xf / rx) ** 2 + (yf / ry) ** 2
    face = r2 <= 1.0
    hair_back = has_hair & _ellipse(xf, yf, 0, -0.1 * ry, 1.2 * rx, 1.12 * ry) & (yf <= hair_len * ry)
    fringe_line = -fringe * ry + 0.08 * ry * np.cos(np.pi * xf / rx)
    hair_front = has_hair & face & (yf < fringe_line)
    eyes = _ellipse(np.abs(xf), yf, eye_dx, eye_y, eye_rx, eye_ry)
    brow_w = 1.25 * eye_rx
    brow_t = (np.abs(xf) - eye_dx) / brow_w
    brows = (np.abs(brow_t) <= 1) & (np.abs(yf - (brow_y - 0.05 * ry * (1 - brow_t ** 2))) <= 0.07 * ry)
    mouth = _ellipse(xf, yf, 0, mouth_y, mouth_rx, mouth_ry)

    mask = np.zeros((n, res, res), np.uint8)
    for part, label in ((hair_back, 2), (face, 1), (hair_front, 2), (brows, 4), (eyes, 3), (mouth, 5)):
        mask[part] = label

    # Appearance.
    angle, freq = _col(app.uniform(0, np.pi, n)), _col(app.uniform(2, 6, n))
    grating = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + _col(app.uniform(0, 6.3, n)))
    bg = app.uniform(0.15, 0.85, (n, 1, 1, 3)).astype(np.float32)
    bg = bg + 0.12 * grating[..., None] * app.uniform(0.3, 1.0, (n, 1, 1, 3)).astype(np.float32)
    bg = bg + 0.08 * np.stack([_smooth_noise(app, n, res) for _ in range(3)], -1)

    tone = app.uniform(0, 1, (n, 1, 1, 1)).astype(np.float32)
    skin = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone + app.normal(0, 0.02, (n, 1, 1, 3)).astype(np.float32)
    light = _col(app.uniform(-1, 1, n))
    skin = skin * (1 - 0.25 * np.clip(r2, 0, 1) + 0.08 * light * xf / rx)[..., None]

    hair_rgb = _HAIR_COLOURS[app.integers(0, len(_HAIR_COLOURS), n)][:, None, None, :]
    hair_rgb = hair_rgb + app.normal(0, 0.03, (n, 1, 1, 3)).astype(np.float32)
    strands = np.sin(2 * np.pi * _col(app.uniform(8, 14, n)) * (xf + 0.3 * yf))
    hair = hair_rgb * (1 + 0.15 * strands)[..., None]

    iris_rgb = _IRIS_COLOURS[app.integers(0, len(_IRIS_COLOURS), n)][:, None, None, :]
    iris = _ellipse(np.abs(xf), yf, eye_dx + iris_dx * np.sign(xf), eye_y, 0.55 * eye_ry, 0.9 * eye_ry)
    eye = np.where(iris[..., None], iris_rgb, np.float32(0.92))
    lips = np.stack([app.uniform(0.55, 0.8, n), app.uniform(0.15, 0.3, n), app.uniform(0.2, 0.35, n)], -1)
    lips = lips.astype(np.float32)[:, None, None, :]

    img = bg
    for label, colour in ((1, skin), (2, hair), (3, eye), (4, 0.7 * hair_rgb), (5, lips)):
        img = np.where((mask == label)[..., None], colour, img)

    if ood:
        img = _domain_shift(np.random.default_rng([seed, chunk, 2]), img, x, y, res)
    img = img + app.normal(0, 0.015, img.shape).astype(np.float32)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), mask


def _domain_shift(rng: np.random.Generator, img: np.ndarray, x, y, res: int) -> np.ndarray:
    """Appearance shift: hue rotation, checkerboard texture, box blur, lower contrast."""
    n = img.shape[0]
    phi = rng.uniform(0.6 * np.pi, 1.4 * np.pi, n)
    k = np.ones(3) / np.sqrt(3)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = (np.cos(phi)[:, None, None] * np.eye(3) + np.sin(phi)[:, None, None] * cross
           + (1 - np.cos(phi))[:, None, None] * np.outer(k, k)).astype(np.float32)
    img = np.einsum("nhwc,ndc->nhwd", img, rot)
    fx, fy = _col(rng.uniform(5, 9, n)), _col(rng.uniform(5, 9, n))
    checker = np.sign(np.sin(2 * np.pi * fx * x) * np.sin(2 * np.pi * fy * y))
    img = img + 0.1 * checker[..., None]
    radius = max(1, res // 64)
    img = _box_blur(_box_blur(img, radius, 1), radius, 2)
    mean = img.mean(axis=(1, 2, 3), keepdims=True)
    contrast = rng.uniform(0.5, 0.75, (n, 1, 1, 1)).astype(np.float32)
    return mean + (img - mean) * contrast + rng.uniform(-0.1, 0.1, (n, 1, 1, 1)).astype(np.float32)


def generate(num: int, resolution: int, seed: int, ood: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (num, R, R, 3), masks uint8 (num, R, R)); deterministic in (seed, index, R)."""
    chunks = [_render_chunk(seed, c, resolution, ood) for c in range((num + CHUNK - 1) // CHUNK)]
    if not chunks:
        return np.zeros((0, resolution, resolution, 3), np.uint8), np.zeros((0, resolution, resolution), np.uint8)
    images = np.concatenate([c[0] for c in chunks])[:num]
    masks = np.concatenate([c[1] for c in chunks])[:num]
    return images, masks


class SyntheticSource:
    """Random-access in-memory source: item i is {'image' (R, R, 3) uint8, 'mask' (R, R) uint8,
    'labeled' True, 'name' str}."""

    def __init__(self, num_examples: int = 4000, resolution: int = 32, seed: int = 0, ood: bool = False):
        self.images, self.masks = generate(num_examples, resolution, seed, ood)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "mask": self.masks[index], "labeled": True,
                "name": f"{index:05d}"}


def synthetic_split(split: str, resolution: int = 32) -> SyntheticSource:
    """The in-memory source of one split of SPLITS (same content as the TFDS build)."""
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; choose from {sorted(SPLITS)}")
    num, seed, ood = SPLITS[split]
    return SyntheticSource(num, resolution, seed, ood)


class SyntheticFaces(common.SegmentationBuilder):
    """Procedural faces with 6-class part masks, in-domain train/test and an out-of-domain test split."""

    name = "synthetic_faces"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = common.resolution_configs(*RESOLUTIONS)
    CHANNELS = CHANNELS
    CLASS_NAMES = CLASS_NAMES

    def _splits(self, manual_dir: Path | None) -> dict[str, list[common.Pair]]:
        splits = {}
        for split in SPLITS:
            src = synthetic_split(split, self.resolution)
            splits[split] = [common.Pair(f"{i:05d}", lambda r, s=src, i=i: (s.images[i], s.masks[i]))
                             for i in range(len(src))]
        return splits
