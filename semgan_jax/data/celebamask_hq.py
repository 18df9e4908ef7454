"""CelebAMask-HQ face parts merged into the 8 classes SemanticGAN uses ("CelebA-Mask-8").

Where to get the data (manual download; non-commercial research use only):
  * CelebAMask-HQ (Lee et al., CVPR 2020): https://github.com/switchablenorms/CelebAMask-HQ
    (CelebAMask-HQ.zip: 30,000 CelebA-HQ images at 1024 px, 19 part masks per face at 512 px).
    Licence: non-commercial research and educational use only; images remain under CelebA's
    terms (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html).
  * list_eval_partition.txt from CelebA (its "Eval" folder) for the official train/val/test split.

Two layouts are read from manual_dir (detected automatically):

  raw download (what CelebAMask-HQ.zip unpacks to)::

      CelebAMask-HQ/CelebA-HQ-img/{idx}.jpg                              idx = 0..29999
      CelebAMask-HQ/CelebAMask-HQ-mask-anno/{idx // 2000}/{idx:05d}_{part}.png
      CelebAMask-HQ/CelebA-HQ-to-CelebA-mapping.txt                     idx orig_idx orig_file
      list_eval_partition.txt   (or Eval/list_eval_partition.txt)        orig_file 0|1|2

    splits: train / val / test from CelebA's partition (0 / 1 / 2) through the mapping file.
    The unlabeled set is the train partition itself; `datasets.load_split(..., 'unlabeled')`
    reads `train` for this layout instead of storing the images twice.

  SemanticGAN layout (what the reference `dataloader/dataset.py` reads; masks already 0..7)::

      label_data/image/{name}   label_data/label/{name}   (same file name; or its stem + .png)
      label_data/train_full_list.txt  val_full_list.txt  test_list.txt  [train_{N}_list.txt ...]
      unlabel_data/image/{name}  unlabel_data/unlabel_list.txt

    splits: train, val, test, unlabeled, plus train_{N} / val_{N} for every such list file.

Class merge (19 CelebAMask-HQ parts -> 8 classes). The parts are painted in CelebAMask-HQ's own
merge order (its face_parsing/Data_preprocessing/g_mask.py: later parts overwrite earlier ones,
so hair covers skin), then mapped with MERGE. The class list is `face_8_class` of the NVIDIA
SemanticGAN/DatasetGAN code; the 19->8 mapping follows the same lab's published
`trans_mask_stylegan_19classTo8` (glasses -> eye; hat, earring, neck, necklace, cloth ->
background). nv-tlabs/semanticGAN_code issue #3 guessed glasses -> background instead; the
reference repository ships no merge script. Palette: the reference loader's colour map.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from semgan_jax.data import common

INSTRUCTIONS = __doc__  # the class body's __doc__ is the class docstring
CLASS_NAMES = ("background", "skin", "nose", "eye", "brow", "ear", "mouth", "hair")
PALETTE = np.array([
    [0, 0, 0], [0, 0, 205], [132, 112, 255], [25, 25, 112],
    [187, 255, 255], [102, 205, 170], [227, 207, 87], [142, 142, 56],
], np.uint8)
CHANNELS = 3

PAINT_ORDER = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
               "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")
MERGE = {
    "skin": 1, "nose": 2, "l_eye": 3, "r_eye": 3, "eye_g": 3, "l_brow": 4, "r_brow": 4,
    "l_ear": 5, "r_ear": 5, "mouth": 6, "u_lip": 6, "l_lip": 6, "hair": 7,
    "hat": 0, "ear_r": 0, "neck": 0, "neck_l": 0, "cloth": 0,
}
PARTITION_SPLITS = {"0": "train", "1": "val", "2": "test"}
MASK_SCALES = (1, 2)  # masks at the image size or half of it (raw download: 1024 vs 512)


def merge_parts(parts: dict[str, np.ndarray]) -> np.ndarray:
    """{part name: (H, W) bool/uint8 mask} -> (H, W) uint8 class map in 0..7 (see MERGE)."""
    unknown = set(parts) - set(PAINT_ORDER)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}")
    shape = next(iter(parts.values())).shape
    out = np.zeros(shape, np.uint8)
    for part in PAINT_ORDER:
        if part in parts:
            out[np.asarray(parts[part]) != 0] = MERGE[part]
    return out


def read_list(path: Path) -> list[str]:
    """Whitespace-separated file names of a SemanticGAN list file."""
    if not path.is_file():
        raise common.BadExampleError(path, "missing list file")
    return common.read_text(path).split()


def _raw_root(manual_dir: Path) -> Path | None:
    for root in (manual_dir / "CelebAMask-HQ", manual_dir):
        if (root / "CelebA-HQ-img").is_dir():
            return root
    return None


def _partition_file(manual_dir: Path, root: Path) -> Path:
    for cand in (manual_dir / "list_eval_partition.txt", manual_dir / "Eval" / "list_eval_partition.txt",
                 root / "list_eval_partition.txt"):
        if cand.is_file():
            return cand
    raise common.BadExampleError(manual_dir / "list_eval_partition.txt",
                                 "missing file (CelebA's official partition, needed for the splits)")


def _index_annotations(anno_dir: Path) -> dict[int, dict[str, Path]]:
    """{image idx: {part: path}} from CelebAMask-HQ-mask-anno/*/{idx:05d}_{part}.png."""
    index: dict[int, dict[str, Path]] = {}
    pattern = re.compile(r"^(\d+)_(.+)\.png$")
    for sub in sorted(p for p in anno_dir.iterdir() if p.is_dir()):
        for fname in os.listdir(sub):
            m = pattern.match(fname)
            if m:
                index.setdefault(int(m.group(1)), {})[m.group(2)] = sub / fname
    return index


def _load_raw(image_path: Path, parts: dict[str, Path], resolution: int):
    image = common.read_rgb(image_path)
    if not parts:
        raise common.BadExampleError(image_path, "no part annotation found in CelebAMask-HQ-mask-anno")
    masks = {}
    for part, path in parts.items():
        if part not in MERGE:
            raise common.BadExampleError(path, f"part '{part}' outside the CelebAMask-HQ part set")
        masks[part] = np.asarray(common.open_image(path, "L"))
        common.check_mask_size(image.shape, masks[part].shape, path, MASK_SCALES)
    shapes = {m.shape for m in masks.values()}
    if len(shapes) > 1:
        raise common.BadExampleError(image_path, f"part masks of different sizes {sorted(shapes)}")
    mask = merge_parts(masks)
    return common.resize_image(image, resolution), common.resize_mask(mask, resolution)


def raw_splits(manual_dir: Path, root: Path) -> dict[str, list[common.Pair]]:
    """Splits of the raw CelebAMask-HQ download (layout in the module docstring)."""
    partition = {}
    for line in common.read_text(_partition_file(manual_dir, root)).splitlines():
        fields = line.split()
        if len(fields) == 2:
            partition[fields[0]] = PARTITION_SPLITS.get(fields[1])
    mapping = root / "CelebA-HQ-to-CelebA-mapping.txt"
    if not mapping.is_file():
        raise common.BadExampleError(mapping, "missing file")
    anno_dir = root / "CelebAMask-HQ-mask-anno"
    if not anno_dir.is_dir():
        raise common.BadExampleError(anno_dir, "missing directory")
    annotations = _index_annotations(anno_dir)
    splits: dict[str, list[common.Pair]] = {name: [] for name in PARTITION_SPLITS.values()}
    for n, line in enumerate(common.read_text(mapping).splitlines()[1:], start=2):
        fields = line.split()
        if len(fields) != 3:
            continue
        if not fields[0].isdecimal():
            raise common.BadExampleError(mapping, f"line {n}: image index {fields[0]!r} is not a number")
        idx, orig_file = int(fields[0]), fields[2]
        split = partition.get(orig_file)
        if split is None:
            raise common.BadExampleError(mapping, f"CelebA file {orig_file} (idx {idx}) has no partition entry")
        image_path = root / "CelebA-HQ-img" / f"{idx}.jpg"
        parts = annotations.get(idx, {})
        splits[split].append(common.Pair(
            str(idx), lambda r, i=image_path, p=parts: _load_raw(i, p, r)))
    return splits


def _label_path(label_dir: Path, name: str) -> Path:
    exact = label_dir / name
    return exact if exact.is_file() else label_dir / (Path(name).stem + ".png")


def _load_semanticgan(image_path: Path, label_path: Path | None, resolution: int):
    return common.load_rgb_pair(
        image_path, label_path, resolution, mask_scales=MASK_SCALES,
        mask_reader=lambda p: common.read_label_map(p, len(CLASS_NAMES)))


def semanticgan_splits(manual_dir: Path) -> dict[str, list[common.Pair]]:
    """Splits of the SemanticGAN layout (label_data/ + unlabel_data/ with list files)."""
    label_dir = manual_dir / "label_data"
    lists = {"train": "train_full_list.txt", "val": "val_full_list.txt", "test": "test_list.txt"}
    for path in sorted(label_dir.glob("*_list.txt")):
        m = re.fullmatch(r"(train|val)_(\d+)_list\.txt", path.name)
        if m:
            lists[f"{m.group(1)}_{m.group(2)}"] = path.name
    splits = {}
    for split, fname in lists.items():
        splits[split] = [
            common.Pair(name, lambda r, i=label_dir / "image" / name, m=_label_path(label_dir / "label", name):
                        _load_semanticgan(i, m, r))
            for name in read_list(label_dir / fname)]
    unlabel_dir = manual_dir / "unlabel_data"
    if unlabel_dir.is_dir():
        splits["unlabeled"] = [
            common.Pair(name, lambda r, i=unlabel_dir / "image" / name: _load_semanticgan(i, None, r))
            for name in read_list(unlabel_dir / "unlabel_list.txt")]
    return splits


class CelebamaskHq(common.SegmentationBuilder):
    """CelebAMask-HQ faces with 8-class part masks (background, skin, nose, eye, brow, ear, mouth, hair)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = common.resolution_configs(256, 512, 1024)
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    CHANNELS = CHANNELS
    CLASS_NAMES = CLASS_NAMES
    HOMEPAGE = "https://github.com/switchablenorms/CelebAMask-HQ"
    CITATION = ("@inproceedings{CelebAMask-HQ, title={MaskGAN: Towards Diverse and Interactive Facial "
                "Image Manipulation}, author={Lee, Cheng-Han and Liu, Ziwei and Wu, Lingyun and Luo, Ping}, "
                "booktitle={CVPR}, year={2020}}")

    def _splits(self, manual_dir: Path) -> dict[str, list[common.Pair]]:
        if (manual_dir / "label_data").is_dir():
            return semanticgan_splits(manual_dir)
        root = _raw_root(manual_dir)
        if root is None:
            raise common.BadExampleError(
                manual_dir, "neither CelebAMask-HQ/CelebA-HQ-img/ (raw download) nor label_data/ "
                            "(SemanticGAN layout) found")
        return raw_splits(manual_dir, root)
