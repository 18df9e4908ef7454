"""ISIC 2018 task 1 skin-lesion segmentation (binary) and the out-of-domain skin sets.

Where to get the data (manual download; check each page's terms before use):
  * ISIC 2018 task 1 (Codella et al. 2018; Tschandl et al. 2018): https://challenge.isic-archive.com/data/#2018
    Licence CC BY-NC 4.0. Training input + ground truth (2,594 images) are required; validation
    (100) and test (1,000) are built when both their input and ground-truth folders are present.
  * ISIC 2019 training input, optional extra unlabeled images: https://challenge.isic-archive.com/data/#2019
    (CC BY-NC 4.0). Images that are also in the 2018 val/test splits are left out.
  * PH2 (Mendonca et al. 2013), out-of-domain: https://www.fc.up.pt/addi/ph2%20database.html
    (free for research and benchmarking, cite the paper).
  * DermIS / DermQuest sets of the Waterloo "Skin Cancer Detection" data (Vision and Image
    Processing Lab, University of Waterloo), out-of-domain:
    https://uwaterloo.ca/vision-image-processing-lab/research-demos/skin-cancer-detection
    (research use; images originate from the DermIS and DermQuest atlases).

Layout in manual_dir (each folder may sit at any depth, as the zips unpack)::

    ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg
    ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png      values {0, 255}
    ISIC2018_Task1-2_Validation_Input/   ISIC2018_Task1_Validation_GroundTruth/
    ISIC2018_Task1-2_Test_Input/         ISIC2018_Task1_Test_GroundTruth/
    ISIC_2019_Training_Input/ISIC_*.jpg                                    (optional)
    PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp
                                        /IMD002/IMD002_lesion/IMD002_lesion.bmp
    .../skin_data/{melanoma,notmelanoma}/{dermIS,dermquest}/{name}_orig.jpg + {name}_contour.png

Splits: train, val, test (ISIC 2018), unlabeled (ISIC 2019), ph2, dermis, dermquest — each
out-of-domain / optional split only when its files are present. Masks: 0 background, 1 lesion.
Images are RGB, resized to the config resolution without keeping the aspect ratio (as the reference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from semgan_jax.data import common

INSTRUCTIONS = __doc__  # the class body's __doc__ is the class docstring
CLASS_NAMES = ("background", "lesion")
PALETTE = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
CHANNELS = 3

ISIC_SPLITS = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}
UNLABELED_DIR = "ISIC_2019_Training_Input"
WATERLOO_SETS = ("dermis", "dermquest")  # lower-cased folder names = split names


def _pair(key: str, image: Path, mask: Path | None) -> common.Pair:
    return common.Pair(key, lambda r: common.load_rgb_pair(image, mask, r))


def isic_split(image_dir: Path, gt_dir: Path) -> list[common.Pair]:
    """Every ISIC_*.jpg of image_dir with its {stem}_segmentation.png in gt_dir."""
    return [_pair(p.stem, p, gt_dir / f"{p.stem}_segmentation.png")
            for p in sorted(image_dir.glob("ISIC_*.jpg"))]


def ph2_split(root: Path) -> list[common.Pair]:
    """PH2: IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp with IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp."""
    pairs = []
    for image in sorted(root.rglob("*_Dermoscopic_Image/*.bmp")):
        case_dir = image.parent.parent
        pairs.append(_pair(image.stem, image, case_dir / f"{image.stem}_lesion" / f"{image.stem}_lesion.bmp"))
    return pairs


def waterloo_splits(root: Path) -> dict[str, list[common.Pair]]:
    """Waterloo skin data: {name}_orig.jpg + {name}_contour.png, split by the dermIS/dermquest folder."""
    splits: dict[str, list[common.Pair]] = {}
    for image in sorted(root.rglob("*_orig.jpg")):
        split = image.parent.name.lower()
        if split not in WATERLOO_SETS:
            continue
        name = image.name[: -len("_orig.jpg")]
        key = f"{image.parent.parent.name}_{name}"
        splits.setdefault(split, []).append(_pair(key, image, image.parent / f"{name}_contour.png"))
    return splits


class Isic2018(common.SegmentationBuilder):
    """ISIC 2018 task 1 lesion segmentation (binary) with PH2 / DermIS / DermQuest out-of-domain splits."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = common.resolution_configs(256, 512)
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    CHANNELS = CHANNELS
    CLASS_NAMES = CLASS_NAMES
    HOMEPAGE = "https://challenge.isic-archive.com/data/#2018"
    CITATION = ("@article{codella2019skin, title={Skin Lesion Analysis Toward Melanoma Detection 2018: "
                "A Challenge Hosted by the International Skin Imaging Collaboration (ISIC)}, "
                "author={Codella, Noel and others}, journal={arXiv:1902.03368}, year={2019}}")

    def _splits(self, manual_dir: Path) -> dict[str, list[common.Pair]]:
        splits = {}
        for split, (image_name, gt_name) in ISIC_SPLITS.items():
            image_dir = common.find_dir(manual_dir, image_name)
            gt_dir = common.find_dir(manual_dir, gt_name)
            if image_dir is not None and gt_dir is not None:
                splits[split] = isic_split(image_dir, gt_dir)
            elif split == "train":
                missing = image_name if image_dir is None else gt_name
                raise common.BadExampleError(manual_dir / missing, "missing directory (ISIC 2018 training data)")
        unlabeled_dir = common.find_dir(manual_dir, UNLABELED_DIR)
        if unlabeled_dir is not None:
            held_out = {p.key for s in ("val", "test") for p in splits.get(s, [])}
            splits["unlabeled"] = [_pair(p.stem, p, None) for p in sorted(unlabeled_dir.glob("ISIC_*.jpg"))
                                   if p.stem not in held_out]
        ph2 = ph2_split(manual_dir)
        if ph2:
            splits["ph2"] = ph2
        splits.update(waterloo_splits(manual_dir))
        return splits
