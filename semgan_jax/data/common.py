"""Shared pieces of the TFDS builders: image/mask reading, validation, resizing, base builder.

Every builder stores the same features (R = config resolution, C = 3 for RGB, 1 for grey):

    image   uint8 (R, R, C)
    mask    uint8 (R, R)    class indices; all zeros where `labeled` is False (zlib-compressed)
    labeled bool  ()        False for examples of unlabeled splits
    name    text            source file stem, for tracing an example back to the download

Builders read from `manual_dir` only, resize images with Lanczos and masks with nearest neighbour
to (R, R) (aspect ratio is not kept, as in the reference loaders), and turn every problem with an
input file into `BadExampleError(path, problem)`. With `skip_bad=True` such examples are skipped
and recorded in `builder.skipped`; otherwise the build stops and TFDS removes its temporary
directory, so no half-written dataset is ever left as finished.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import contextlib
import dataclasses
import inspect
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image, UnidentifiedImageError

BINARY_VALUES = (0, 1, 255)
# decoders offered to input files: the formats of the downloads (and of `semgan segment` inputs);
# Pillow's rarer plugins fail on malformed files with arbitrary exception types
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")


def printable(text: str) -> str:
    """`text` as valid UTF-8: bytes of non-UTF-8 file names (surrogate escapes) become \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class BadExampleError(ValueError):
    """An input file that cannot become an example; `path` names the file, `problem` says why."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(printable(f"{self.path}: {problem}"))


def open_image(path: os.PathLike | str, mode: str | None = None) -> Image.Image:
    """Opens and fully decodes an image file, converted to `mode` if given; missing, corrupt,
    truncated or oversized files raise BadExampleError."""
    path = Path(path)
    if not path.is_file():
        raise BadExampleError(path, "not a file" if path.exists() else "missing file")
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            img.load()
    except Image.DecompressionBombError as err:
        raise BadExampleError(path, f"image too large ({err})") from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise BadExampleError(path, f"corrupt or truncated image ({err})") from err
    return img if mode is None else convert(img, mode, path)


def convert(img: Image.Image, mode: str, path: os.PathLike | str) -> Image.Image:
    """`img` in `mode`; BadExampleError naming `path` for modes Pillow cannot convert (e.g. LAB to L)."""
    if img.mode == mode:
        return img
    try:
        return img.convert(mode)
    except ValueError as err:
        raise BadExampleError(path, f"cannot convert image mode {img.mode} to {mode} ({err})") from err


def read_text(path: os.PathLike | str) -> str:
    """The text of an index file (split lists, mappings), which must be UTF-8."""
    if not Path(path).is_file():
        raise BadExampleError(path, "missing file")
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadExampleError(path, f"not a UTF-8 text file ({err})") from err


def to_grey_uint8(img: Image.Image, path: os.PathLike | str) -> np.ndarray:
    """(H, W) uint8 grey levels; 16-/32-bit integer images are scaled by their bit depth (from the max)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(img, dtype=np.float64)
        depth = max(8, int(np.ceil(np.log2(max(arr.max(), 1.0) + 1.0))))
        return np.clip(np.round(arr * (255.0 / (2**depth - 1))), 0, 255).astype(np.uint8)
    return np.asarray(convert(img, "L", path))


def read_rgb(path: os.PathLike | str) -> np.ndarray:
    """(H, W, 3) uint8."""
    return np.asarray(open_image(path, "RGB"))


def read_grey(path: os.PathLike | str) -> np.ndarray:
    """(H, W) uint8."""
    return to_grey_uint8(open_image(path), path)


def read_label_map(path: os.PathLike | str, num_classes: int) -> np.ndarray:
    """(H, W) uint8 class indices from a single-channel PNG; values must lie in [0, num_classes)."""
    img = open_image(path)
    if img.mode not in ("L", "P", "1", "I", "I;16"):
        raise BadExampleError(path, f"label map must be single-channel, got mode {img.mode}")
    mask = np.asarray(img).astype(np.int64)
    check_labels(mask, num_classes, path)
    return mask.astype(np.uint8)


def read_binary_mask(path: os.PathLike | str) -> np.ndarray:
    """(H, W) uint8 in {0, 1} from a mask stored as {0, 255} or {0, 1} (any channel count)."""
    return binarize(np.asarray(open_image(path, "L")), path)


def binarize(mask: np.ndarray, path: os.PathLike | str) -> np.ndarray:
    """Maps a {0, 1, 255}-valued mask to {0, 1}; any other value is a bad label."""
    bad = ~np.isin(mask, BINARY_VALUES)
    if bad.any():
        values = np.unique(mask[bad])[:5].tolist()
        raise BadExampleError(path, f"label values {values} outside the binary set {{0, 255}}")
    return (mask != 0).astype(np.uint8)


def check_labels(mask: np.ndarray, num_classes: int, path: os.PathLike | str) -> None:
    """Raises if any value of `mask` is not a class index in [0, num_classes)."""
    bad = (mask < 0) | (mask >= num_classes)
    if bad.any():
        values = np.unique(mask[bad])[:5].tolist()
        raise BadExampleError(path, f"label values {values} outside the class set 0..{num_classes - 1}")


def check_mask_size(image_hw: Sequence[int], mask_hw: Sequence[int], path,
                    mask_scales: Sequence[int] = (1,)) -> None:
    """Raises unless mask (h, w) * s == image (h, w) for some s in mask_scales
    (some downloads annotate at half the image size)."""
    ih, iw = image_hw[:2]
    mh, mw = mask_hw[:2]
    if not any(mh * s == ih and mw * s == iw for s in mask_scales):
        allowed = " or ".join("equal" if s == 1 else f"1/{s} of it" for s in mask_scales)
        raise BadExampleError(path, f"mask size {mh}x{mw} does not match image size {ih}x{iw} "
                                    f"(must be {allowed})")


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> (R, R, C) uint8, Lanczos."""
    out = np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.Resampling.LANCZOS))
    return out[..., None] if out.ndim == 2 else out


def resize_mask(mask: np.ndarray, resolution: int) -> np.ndarray:
    """(H, W) uint8 -> (R, R) uint8, nearest neighbour (class indices are never blended)."""
    return np.asarray(Image.fromarray(mask).resize((resolution, resolution), Image.Resampling.NEAREST))


def find_dir(root: Path, name: str) -> Path | None:
    """`root/name` or the first directory called `name` below root (downloads unzip to varied depths)."""
    if (root / name).is_dir():
        return root / name
    return next((p for p in sorted(root.rglob(name)) if p.is_dir()), None)


@dataclasses.dataclass(frozen=True)
class Pair:
    """One example to load: `key` is unique in its split; `load(resolution)` returns the
    resized (image (R, R, C), mask (R, R) or None for unlabeled) or raises BadExampleError."""

    key: str
    load: Callable[[int], tuple[np.ndarray, np.ndarray | None]]


def features(resolution: int, channels: int) -> tfds.features.FeaturesDict:
    """The feature spec shared by all builders (see module docstring)."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(resolution, resolution, channels), dtype=np.uint8),
        "mask": tfds.features.Tensor(shape=(resolution, resolution), dtype=np.uint8,
                                     encoding=tfds.features.Encoding.ZLIB),
        "labeled": tfds.features.Tensor(shape=(), dtype=np.bool_),
        "name": tfds.features.Text(),
    })


@dataclasses.dataclass
class ResolutionConfig(tfds.core.BuilderConfig):
    """Builder config selecting the stored resolution R."""

    resolution: int = 256


def resolution_configs(*resolutions: int) -> list[ResolutionConfig]:
    """One config per resolution, named by the number (e.g. '256'); the first is the default."""
    return [ResolutionConfig(name=str(r), resolution=r, description=f"{r}x{r} px") for r in resolutions]


def _load_or_error(pair: Pair, resolution: int):
    try:
        return pair.load(resolution)
    except BadExampleError as err:
        return err


def ordered_map(fn, items: Iterable, num_threads: int) -> Iterator:
    """fn over items in order, using threads (PIL decoding/resizing release the GIL)."""
    if num_threads <= 1:
        yield from map(fn, items)
        return
    window = 8 * num_threads
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for the image + mask builders.

    Subclasses set CHANNELS, CLASS_NAMES, BUILDER_CONFIGS (resolution_configs(...)), VERSION,
    MANUAL_DOWNLOAD_INSTRUCTIONS (if reading a download) and implement `_splits(manual_dir)`
    returning {split name: [Pair, ...]}.

    Args (besides tfds.core.GeneratorBasedBuilder's): skip_bad: skip and record bad examples
    instead of failing; num_threads: threads decoding/resizing images while generating.
    """

    CHANNELS: int = 3
    CLASS_NAMES: tuple[str, ...] = ()
    DESCRIPTION: str = ""
    HOMEPAGE: str = ""
    CITATION: str = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup needs the `importlib_resources` backport on Python >= 3.9 for
        # builders defined in packages; the file of the class is all it needs.
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, skip_bad: bool = False, num_threads: int = 4, **kwargs):
        self.skip_bad = skip_bad
        self.num_threads = num_threads
        self.skipped: dict[str, list[BadExampleError]] = collections.defaultdict(list)
        super().__init__(**kwargs)

    @property
    def resolution(self) -> int:
        return self.builder_config.resolution

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION or (self.__doc__ or "").strip().split("\n")[0],
            features=features(self.resolution, self.CHANNELS),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            disable_shuffling=True,  # index i = i-th example in generation (sorted file) order
        )

    def _split_generators(self, dl_manager):
        manual_dir = Path(dl_manager.manual_dir) if self.MANUAL_DOWNLOAD_INSTRUCTIONS else None
        splits = self._splits(manual_dir)
        for name in [n for n, pairs in splits.items() if not pairs]:
            logging.warning("%s: split %r has no examples in %s; not built", self.name, name, manual_dir)
            del splits[name]
        return {name: self._generate_examples(name, pairs) for name, pairs in splits.items()}

    @abc.abstractmethod
    def _splits(self, manual_dir: Path | None) -> dict[str, list[Pair]]:
        """{split name: examples to load}, read from the download in manual_dir."""

    def _generate_examples(self, split: str, pairs: list[Pair]):
        res = self.resolution
        # closed here when a bad example stops the build, not later by the garbage collector
        # (which may run in one of the pool's own threads, which cannot join themselves)
        with contextlib.closing(ordered_map(lambda p: _load_or_error(p, res), pairs, self.num_threads)) as loaded:
            for pair, result in zip(pairs, loaded):
                if isinstance(result, BadExampleError):
                    if not self.skip_bad:
                        raise result
                    self.skipped[split].append(result)
                    if len(self.skipped[split]) == len(pairs):
                        raise BadExampleError(result.path, f"every example of split '{split}' is bad "
                                                           f"({len(pairs)}), this one: {result.problem}")
                    continue
                image, mask = result
                key = printable(pair.key)  # TFDS keys and text features must be valid UTF-8
                yield key, {
                    "image": image,
                    "mask": np.zeros((res, res), np.uint8) if mask is None else mask,
                    "labeled": mask is not None,
                    "name": key,
                }


def load_rgb_pair(image_path: Path, mask_path: Path | None, resolution: int, *,
                  mask_reader: Callable[[Path], np.ndarray] = read_binary_mask,
                  mask_scales: Sequence[int] = (1,)) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads, validates and resizes one RGB image and its mask (None: unlabeled)."""
    image = read_rgb(image_path)
    if mask_path is None:
        return resize_image(image, resolution), None
    mask = mask_reader(mask_path)
    check_mask_size(image.shape, mask.shape, mask_path, mask_scales)
    return resize_image(image, resolution), resize_mask(mask, resolution)
