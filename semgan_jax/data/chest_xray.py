"""Chest X-ray lung segmentation (binary): JSRT in-domain, Montgomery and Shenzhen out-of-domain.

Where to get the data (manual download; check each page's terms before use):
  * JSRT (Shiraishi et al. 2000), 247 radiographs, 2048x2048 12-bit raw .IMG:
    http://db.jsrt.or.jp/eng.php — free for research/education after registration, no redistribution.
  * SCR lung masks for JSRT (van Ginneken et al. 2006), 1024x1024 GIFs in two folds:
    https://www.isi.uu.nl/Research/Databases/SCR/ (mirrored on zenodo) — research use, cite the paper.
  * Montgomery County set (Jaeger et al. 2014) with manual lung masks, NLM:
    https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets (public, cite).
  * Shenzhen set (Jaeger et al. 2014), NLM, same page; lung masks by Stirenko et al. 2018
    ("Chest X-ray analysis of tuberculosis by deep learning with segmentation and augmentation",
    released as `mask/CHNCXR_*_mask.png`, e.g. kaggle.com/datasets/yoctoman/shcxr-lung-mask).

Layout in manual_dir (each folder may sit at any depth)::

    JPCLN001.IMG ... JPCNN093.IMG            (JSRT, e.g. in All247images/; .png copies also read)
    .../fold1/masks/left lung/JPCLN001.gif   .../fold1/masks/right lung/JPCLN001.gif   (SCR; also fold2)
    MontgomerySet/CXR_png/MCUCXR_0001_0.png
    MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png   .../rightMask/MCUCXR_0001_0.png
    ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png
    .../CHNCXR_0001_0_mask.png               (Shenzhen masks, any folder)

Splits: train = SCR fold 1 (124 images), test = SCR fold 2 (123) — the SCR two-fold protocol;
montgomery (138) and shenzhen (images with a mask, 566) when present. Mask = left | right lung,
0 background / 1 lung. Images are stored grey (R, R, 1); JSRT raw values are inverted so that
bone is bright, as in the usual PNG conversions. The reference applies histogram equalisation and
gamma 0.5 when it loads CXR images; `reference_preprocess` reproduces that for the pipeline
(`image_fn=chest_xray.reference_preprocess`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageOps

from semgan_jax.data import common

INSTRUCTIONS = __doc__  # the class body's __doc__ is the class docstring
CLASS_NAMES = ("background", "lung")
PALETTE = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
CHANNELS = 1

JSRT_SIZE = 2048
SCR_FOLDS = {"fold1": "train", "fold2": "test"}
MASK_SCALES = (1, 2)  # SCR masks are 1024 px for 2048 px JSRT images


def read_jsrt(path: Path) -> np.ndarray:
    """JSRT .IMG: headerless big-endian 12-bit 2048x2048 -> (H, W) uint8, inverted (bone bright);
    other extensions are read as ordinary grey images."""
    if path.suffix.lower() != ".img":
        return common.read_grey(path)
    if not path.is_file():
        raise common.BadExampleError(path, "missing file")
    raw = np.fromfile(path, dtype=">u2")
    if raw.size != JSRT_SIZE * JSRT_SIZE:
        raise common.BadExampleError(path, f"corrupt or truncated raw image: {raw.size * 2} bytes, "
                                           f"expected {JSRT_SIZE * JSRT_SIZE * 2}")
    if raw.max() > 4095:
        raise common.BadExampleError(path, "corrupt raw image: values above 12 bits")
    grey = 255.0 - raw.reshape(JSRT_SIZE, JSRT_SIZE).astype(np.float32) * (255.0 / 4095.0)
    return np.round(grey).astype(np.uint8)


def reference_preprocess(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) uint8 -> (H, W, 1) uint8: histogram equalisation then gamma 0.5 (reference CXR transform)."""
    eq = np.asarray(ImageOps.equalize(Image.fromarray(image[..., 0])))
    lut = np.floor(255.999 * (np.arange(256) / 255.0) ** 0.5).astype(np.uint8)
    return lut[eq][..., None]


def _load(image_path: Path, mask_paths: list[Path], resolution: int, mask_scales=(1,)):
    """Image and the union of its lung masks (left/right files, or one file for both)."""
    image = read_jsrt(image_path)
    mask = None
    for path in mask_paths:
        part = common.read_binary_mask(path)
        common.check_mask_size(image.shape, part.shape, path, mask_scales)
        if mask is not None and part.shape != mask.shape:
            raise common.BadExampleError(path, f"mask size {part.shape} differs from {mask_paths[0]}")
        mask = part if mask is None else mask | part
    return common.resize_image(image, resolution), common.resize_mask(mask, resolution)


def jsrt_splits(manual_dir: Path) -> dict[str, list[common.Pair]]:
    """SCR folds -> splits; each SCR mask stem names the JSRT image it belongs to."""
    images = {p.stem.upper(): p for p in manual_dir.rglob("JPC*.*") if p.suffix.lower() in (".img", ".png")}
    masks: dict[str, dict[str, dict[str, Path]]] = {}
    for gif in sorted(manual_dir.rglob("*.gif")):
        side = gif.parent.name.lower()
        fold = next((a.name.lower() for a in gif.parents if a.name.lower() in SCR_FOLDS), None)
        if side in ("left lung", "right lung") and fold is not None:
            masks.setdefault(fold, {}).setdefault(gif.stem.upper(), {})[side] = gif
    splits = {}
    for fold, split in SCR_FOLDS.items():
        pairs = []
        for stem, sides in sorted(masks.get(fold, {}).items()):
            if len(sides) != 2:
                other = next(iter(sides.values()))
                missing = "right lung" if "left lung" in sides else "left lung"
                raise common.BadExampleError(other.parent.parent / missing / other.name, "missing file")
            image = images.get(stem, manual_dir / f"{stem}.IMG")
            pairs.append(common.Pair(stem, lambda r, i=image, s=sides: _load(
                i, [s["left lung"], s["right lung"]], r, MASK_SCALES)))
        if pairs:
            splits[split] = pairs
    return splits


def montgomery_split(root: Path) -> list[common.Pair]:
    """MontgomerySet/CXR_png/*.png with ManualMask/{leftMask,rightMask}/ of the same name."""
    masks = root / "ManualMask"
    return [common.Pair(p.stem, lambda r, i=p: _load(
        i, [masks / "leftMask" / i.name, masks / "rightMask" / i.name], r))
        for p in sorted((root / "CXR_png").glob("*.png"))]


def shenzhen_split(manual_dir: Path, image_dir: Path) -> list[common.Pair]:
    """Every CHNCXR_*_mask.png under manual_dir with its image in ChinaSet_AllFiles/CXR_png."""
    pairs = []
    for mask in sorted(manual_dir.rglob("CHNCXR_*_mask.png")):
        stem = re.sub(r"_mask$", "", mask.stem)
        pairs.append(common.Pair(stem, lambda r, i=image_dir / f"{stem}.png", m=mask: _load(i, [m], r)))
    return pairs


class ChestXray(common.SegmentationBuilder):
    """Chest X-ray lung masks: JSRT/SCR (train/test) with Montgomery and Shenzhen out-of-domain splits."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = common.resolution_configs(256, 512, 1024)
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    CHANNELS = CHANNELS
    CLASS_NAMES = CLASS_NAMES
    HOMEPAGE = "http://db.jsrt.or.jp/eng.php"
    CITATION = ("@article{shiraishi2000jsrt, title={Development of a digital image database for chest "
                "radiographs with and without a lung nodule}, author={Shiraishi, Junji and others}, "
                "journal={American Journal of Roentgenology}, volume={174}, pages={71--74}, year={2000}}")

    def _splits(self, manual_dir: Path) -> dict[str, list[common.Pair]]:
        splits = jsrt_splits(manual_dir)
        if "train" not in splits:
            raise common.BadExampleError(manual_dir, "no SCR lung masks (fold1/masks/left lung/*.gif) found")
        montgomery = common.find_dir(manual_dir, "MontgomerySet")
        if montgomery is not None:
            splits["montgomery"] = montgomery_split(montgomery)
        china = common.find_dir(manual_dir, "ChinaSet_AllFiles")
        if china is not None:
            splits["shenzhen"] = shenzhen_split(manual_dir, china / "CXR_png")
        return splits
