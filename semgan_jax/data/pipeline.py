"""grain input pipelines feeding SemanticGAN training and evaluation.

A *source* is any object with `__len__` and `__getitem__(i) -> dict` holding 'image' uint8
(H, W, C) and, for labeled use, 'mask' uint8 (H, W) (optionally 'labeled' bool and 'name'):
a TFDS `builder.as_data_source(split)`, `synthetic.SyntheticSource`, or `datasets.select_labeled(...)`.

API
    make_unlabeled_iterator(source, batch_size, seed, *, shard_index=0, shard_count=1, flip=True,
                            image_fn=None, num_workers=0, prefetch=2, read_threads=1)
        -> iterator of {'image': float32 (B, H, W, C) in [-1, 1]}, endless.
    make_labeled_iterator(source, batch_size, seed, num_classes, *, same keywords, seg_aug=False)
        -> iterator of {'image': float32 (B, H, W, C) in [-1, 1],
                        'mask': int32 (B, H, W) class indices,
                        'mask_onehot': float32 (B, H, W, K) in {-1, 1}}, endless.
           K = num_classes; num_classes=1 means a binary mask given as one channel (the
           reference's seg_dim 1), so K = 1 and the channel is 2 * mask - 1.
    make_eval_batches(source, batch_size, num_classes=None, *, shard_index=0, shard_count=1)
        -> one ordered pass, no augmentation, last batch may be smaller; same keys as above
           ('mask'/'mask_onehot' only when num_classes is given) plus 'name' (list of str).
    image_to_float(image) / mask_to_onehot(mask, num_classes): the conversions (any leading dims).

Order and determinism: the training iterators define one *global* stream — epoch e is a
permutation of the whole source drawn from (seed, e), each example flipped horizontally (image
and mask together) with probability 1/2 from (seed, global stream position), and with
`seg_aug` (the reference's option for labeled pairs) then shifted, scaled and rotated together
with probability 1/2 from the same draw (`shift_scale_rotate`, `SEG_AUG`) — cut into global
batches of `batch_size * shard_count`. Process `shard_index` (pass `jax.process_index()`,
`jax.process_count()`) reads only its slice `[shard_index * batch_size, (shard_index + 1) *
batch_size)` of each global batch, so the processes' reads are disjoint and the global batches
are the same for any process count (N processes train exactly as one). Batches are whole (drop
remainder) and the stream never ends. `make_eval_batches` reads the strided shard
`source[shard_index::shard_count]` instead (disjoint, together covering the source). The iterators are grain `DatasetIterator`s:
`state = it.get_state()` and, on a freshly made iterator with the same arguments,
`it.set_state(state)` resume the exact sequence (also with worker processes, whose output is the
same as in-process). Call `it.close()` when done with an iterator that has worker processes.

Performance knobs: num_workers (worker processes, 0 = in-process), prefetch (batches buffered per
worker, or in-process), read_threads (threads reading/flipping per process). Examples are read,
flipped and batched as uint8; scaling and one-hot run on whole batches, in the read threads
in-process, or in the main process after the worker hand-off (so only uint8 crosses processes).
`image_fn`, a picklable function uint8 (H, W, C) -> uint8 (H, W, C), runs before flipping
(e.g. `chest_xray.reference_preprocess`).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import grain
import numpy as np
from absl import flags

ImageFn = Callable[[np.ndarray], np.ndarray]


def image_to_float(image: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, C) -> float32 in [-1, 1] (x / 127.5 - 1, the reference's scaling)."""
    return image.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)


def mask_to_onehot(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """int (..., H, W) -> float32 (..., H, W, K) with 1 for the class and -1 elsewhere.

    num_classes == 1: binary {0, 1} mask -> one channel 2 * mask - 1 (K = 1).
    """
    limit = max(num_classes, 2)
    if mask.size and (mask.min() < 0 or mask.max() >= limit):
        raise ValueError(f"mask values {np.unique(mask[(mask < 0) | (mask >= limit)])[:5].tolist()} "
                         f"outside 0..{limit - 1}")
    table = np.eye(limit, dtype=np.float32) * 2 - 1
    if num_classes == 1:
        table = table[:, 1:]
    return np.take(table, mask, axis=0)


def _flip_unlabeled(example: dict, rng: np.random.Generator, *, flip: bool, image_fn: ImageFn | None) -> dict:
    image = example["image"] if image_fn is None else image_fn(example["image"])
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
    return {"image": image}


def shift_scale_rotate(image: np.ndarray, mask: np.ndarray, angle: float, scale: float, dx: float,
                       dy: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by `angle` degrees (counter-clockwise on screen) and scale by `scale` about the
    image centre, then shift by (dx, dy) · (W, H): albumentations' ShiftScaleRotate (cv2's
    getRotationMatrix2D + warpAffine). uint8 image (H, W, C) bilinear, mask (H, W) nearest;
    pixels from outside are 0 (black image, background mask), its BORDER_CONSTANT with value 0."""
    h, w = mask.shape
    a, b = scale * np.cos(np.deg2rad(angle)), scale * np.sin(np.deg2rad(angle))
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # output pixel (x, y) reads the input at the inverse map: undo the shift, then the rotation.
    yo, xo = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = xo - cx - dx * w, yo - cy - dy * h
    det = a * a + b * b
    xs, ys = cx + (a * u - b * v) / det, cy + (b * u + a * v) / det

    xn, yn = np.floor(xs + 0.5).astype(np.int64), np.floor(ys + 0.5).astype(np.int64)
    inside = (xn >= 0) & (xn < w) & (yn >= 0) & (yn < h)
    out_mask = np.where(inside, mask[np.clip(yn, 0, h - 1), np.clip(xn, 0, w - 1)], 0).astype(mask.dtype)

    x0, y0 = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]
    src = image.astype(np.float64)

    def tap(yy, xx):
        ok = ((xx >= 0) & (xx < w) & (yy >= 0) & (yy < h))[..., None]
        return np.where(ok, src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0)

    out = ((1 - fy) * ((1 - fx) * tap(y0, x0) + fx * tap(y0, x0 + 1))
           + fy * ((1 - fx) * tap(y0 + 1, x0) + fx * tap(y0 + 1, x0 + 1)))
    return np.clip(np.round(out), 0, 255).astype(image.dtype), out_mask


# The reference's --seg_aug (dataloader/dataset.py): HorizontalFlip(p 0.5), then ShiftScaleRotate
# with shift_limit 0.1, scale_limit 0.2, rotate_limit 15 (degrees), p 0.5.
SEG_AUG = dict(p=0.5, shift=0.1, scale=0.2, rotate=15.0)


def _augment_labeled(example: dict, rng: np.random.Generator, *, flip: bool, image_fn: ImageFn | None,
                     seg_aug: bool) -> dict:
    if not example.get("labeled", True):
        raise ValueError(f"unlabeled example {example.get('name')!r} in a labeled stream")
    image = example["image"] if image_fn is None else image_fn(example["image"])
    mask = example["mask"]
    if flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if seg_aug and rng.random() < SEG_AUG["p"]:
        angle = rng.uniform(-SEG_AUG["rotate"], SEG_AUG["rotate"])
        scale = rng.uniform(1 - SEG_AUG["scale"], 1 + SEG_AUG["scale"])
        dx, dy = rng.uniform(-SEG_AUG["shift"], SEG_AUG["shift"], 2)
        image, mask = shift_scale_rotate(image, mask, angle, scale, dx, dy)
    return {"image": image, "mask": mask}


def _to_model_inputs(batch: dict, *, num_classes: int | None) -> dict:
    """uint8 batch -> {'image' float32 [-1, 1], and with num_classes: 'mask' int32, 'mask_onehot'}."""
    out = {"image": image_to_float(batch["image"])}
    if num_classes is not None:
        out["mask"] = batch["mask"].astype(np.int32)
        out["mask_onehot"] = mask_to_onehot(out["mask"], num_classes)
    return out


def _check_shard(source, shard_index: int, shard_count: int) -> None:
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    if len(source) == 0:
        raise ValueError("the source has no examples")


class _ProcessSlice(grain.MapDataset):
    """This process's slice of every global batch of an (endless) global stream: element i is
    global element (i // b) * b * count + index * b + i % b, b = the per-process batch size."""

    def __init__(self, parent: grain.MapDataset, batch_size: int, index: int, count: int):
        super().__init__(parent)
        self._b, self._index, self._count = batch_size, index, count

    def __len__(self) -> int:
        return len(self._parent) // (self._b * self._count) * self._b

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.slice(i)
        b = self._b
        return self._parent[(i // b) * b * self._count + self._index * b + i % b]


def _shard(source, shard_index: int, shard_count: int) -> grain.MapDataset:
    _check_shard(source, shard_index, shard_count)
    ds = grain.MapDataset.source(source)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"shard {shard_index}/{shard_count} of a source with {len(source)} examples is empty")
    return ds


def _endless(source, batch_size: int, seed: int, augment, num_classes: int | None, *, shard_index: int,
             shard_count: int, num_workers: int, prefetch: int, read_threads: int) -> grain.DatasetIterator:
    """Shuffle, repeat, flip and batch as uint8; scale / one-hot whole batches. With worker
    processes the conversion runs after the hand-off, so only uint8 crosses processes."""
    convert = functools.partial(_to_model_inputs, num_classes=num_classes)
    _check_shard(source, shard_index, shard_count)
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat().random_map(augment, seed=seed)
    if shard_count > 1:
        ds = _ProcessSlice(ds, batch_size, shard_index, shard_count)
    ds = ds.batch(batch_size, drop_remainder=True)
    if num_workers == 0:
        ds = ds.map(convert)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():
            # grain 0.2.18 reads an absl flag when starting workers; outside absl.app nobody
            # parsed flags, so take their defaults (a later absl.app.run still parses argv).
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                               per_worker_buffer_size=prefetch))
        it_ds = it_ds.map(convert)
    return iter(it_ds)


def make_unlabeled_iterator(source, batch_size: int, seed: int, *, shard_index: int = 0,
                            shard_count: int = 1, flip: bool = True, image_fn: ImageFn | None = None,
                            num_workers: int = 0, prefetch: int = 2,
                            read_threads: int = 1) -> grain.DatasetIterator:
    """Endless shuffled batches {'image': float32 (B, H, W, C) in [-1, 1]} (see module docstring)."""
    augment = functools.partial(_flip_unlabeled, flip=flip, image_fn=image_fn)
    return _endless(source, batch_size, seed, augment, None, shard_index=shard_index, shard_count=shard_count,
                    num_workers=num_workers, prefetch=prefetch, read_threads=read_threads)


def make_labeled_iterator(source, batch_size: int, seed: int, num_classes: int, *, shard_index: int = 0,
                          shard_count: int = 1, flip: bool = True, image_fn: ImageFn | None = None,
                          seg_aug: bool = False, num_workers: int = 0, prefetch: int = 2,
                          read_threads: int = 1) -> grain.DatasetIterator:
    """Endless shuffled batches {'image', 'mask', 'mask_onehot'} (see module docstring)."""
    augment = functools.partial(_augment_labeled, flip=flip, image_fn=image_fn, seg_aug=seg_aug)
    return _endless(source, batch_size, seed, augment, num_classes, shard_index=shard_index,
                    shard_count=shard_count, num_workers=num_workers, prefetch=prefetch,
                    read_threads=read_threads)


def _name(example: dict, index: int) -> str:
    name = example.get("name", str(index))
    return name.decode() if isinstance(name, bytes) else str(name)


def make_eval_batches(source, batch_size: int, num_classes: int | None = None, *, shard_index: int = 0,
                      shard_count: int = 1, image_fn: ImageFn | None = None) -> Iterator[dict]:
    """One ordered pass over the shard without augmentation; the last batch may be smaller."""
    ds = _shard(source, shard_index, shard_count)
    for start in range(0, len(ds), batch_size):
        examples = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        raw = {"image": np.stack([e["image"] if image_fn is None else image_fn(e["image"]) for e in examples])}
        if num_classes is not None:
            raw["mask"] = np.stack([e["mask"] for e in examples])
        batch = _to_model_inputs(raw, num_classes=num_classes)
        batch["name"] = [_name(e, start + k) for k, e in enumerate(examples)]
        yield batch
