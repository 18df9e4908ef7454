"""Sample grids a person looks at: images beside their colour-coded label maps, as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float images in [-1, 1] (N, H, W, C), C in {1, 3} -> uint8 RGB (N, H, W, 3)."""
    x = np.clip((np.asarray(images, np.float32) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Integer label maps (N, H, W) -> uint8 RGB (N, H, W, 3) with `palette` (K, 3)."""
    return np.asarray(palette, np.uint8)[np.clip(labels, 0, len(palette) - 1)]


def seg_to_labels(seg_logits: np.ndarray) -> np.ndarray:
    """Seg branch output (N, H, W, K) -> label map: argmax, or logit > 0 for one channel."""
    seg_logits = np.asarray(seg_logits)
    if seg_logits.shape[-1] == 1:
        return (seg_logits[..., 0] > 0).astype(np.int32)
    return np.argmax(seg_logits, axis=-1).astype(np.int32)


def _cell_width(n_columns: int, w: int, pad: int) -> int:
    return n_columns * w + (n_columns - 1) * pad // 2


def _tiles(n: int, n_columns: int, h: int, w: int, ncol: int, pad: int):
    """(example i, column j, top y, left x) of every image tile of `grid`'s layout."""
    cell_w = _cell_width(n_columns, w, pad)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (cell_w + pad)
        for j in range(n_columns):
            yield i, j, y, x + j * (w + pad // 2)


def grid(columns: list[np.ndarray], ncol: int, pad: int = 2) -> np.ndarray:
    """Tile N examples, each shown as its `columns` side by side (each (N, H, W, 3) uint8),
    `ncol` examples per row, white padding. Returns uint8 (rows*(H+pad)+pad, ..., 3)."""
    n, h, w, _ = columns[0].shape
    nrow = -(-n // ncol)
    out = np.full((nrow * (h + pad) + pad, ncol * (_cell_width(len(columns), w, pad) + pad) + pad, 3), 255, np.uint8)
    for i, j, y, x in _tiles(n, len(columns), h, w, ncol, pad):
        out[y:y + h, x:x + w] = columns[j][i]
    return out


def ungrid(image: np.ndarray, n: int, n_columns: int, size: tuple[int, int], ncol: int, pad: int = 2,
           scale: int = 1) -> list[np.ndarray]:
    """The inverse of `grid` (saved with `scale`): the first `n` examples of a grid PNG's pixels
    (H', W', 3) as its `n_columns` columns, each (n, h, w, 3); `size` = (h, w) of one image."""
    h, w = size
    img = np.asarray(image)[::scale, ::scale]
    columns = [np.zeros((n, h, w, 3), np.uint8) for _ in range(n_columns)]
    for i, j, y, x in _tiles(n, n_columns, h, w, ncol, pad):
        columns[j][i] = img[y:y + h, x:x + w, :3]
    return columns


def grid_scale(size: int) -> int:
    """Upscaling of the 128-px grids (evaluation, stage-2 samples): images of `size` px shown at >= 128."""
    return max(1, 128 // size)


def save_png(path: str | Path, image: np.ndarray, scale: int = 1) -> None:
    """Write uint8 (H, W, 3) atomically (temp file + rename), upscaled by `scale` (nearest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def save_samples(path: str | Path, images: np.ndarray, seg_logits: np.ndarray, palette: np.ndarray,
                 ncol: int | None = None) -> None:
    """PNG grid of generated samples: each image beside its argmax label map in colour."""
    n = len(images)
    ncol = ncol or max(1, int(np.ceil(np.sqrt(n))))
    g = grid([to_uint8(images), colorize(seg_to_labels(seg_logits), palette)], ncol)
    save_png(path, g, scale=max(1, 256 // images.shape[1]))
