"""MetFaces-40: the paper's out-of-domain face-parts test set (40 MetFaces portraits annotated by
NVIDIA with the 8 classes of celebamask_hq), for scoring a celebamask_hq model on paintings.

Where to get the data (manual download):
  * the annotations released with SemanticGAN (nv-tlabs/semanticGAN_code README, "Dataset":
    https://drive.google.com/drive/folders/1ibZzaWSUVoQ94OPoLNS0FrUufBeDvRP4). Licence: Creative
    Commons BY-NC 4.0, NVIDIA Corporation (non-commercial use, with attribution).
  * the portraits themselves are MetFaces images (Karras et al. 2020,
    https://github.com/NVlabs/metfaces-dataset; CC BY-NC 2.0 for the curated set, images from the
    Metropolitan Museum of Art's open access collection) if the release does not include them.

Layout read from manual_dir (the folders at any depth, e.g. label_data/image as the SemanticGAN
layout of celebamask_hq)::

    image/{name}.png|jpg        (or images/, img/)       the portraits, any size
    label/{name}.png            (or labels/, mask/, masks/) label maps, same stem as the image
    test_list.txt               (optional, beside image/) file names to use, in this order

A label map is either a single-channel PNG of class indices 0..7 (the celebamask_hq classes,
background, skin, nose, eye, brow, ear, mouth, hair), a grey RGB PNG holding those indices, or
an RGB PNG coloured with celebamask_hq's palette (the reference loader's colour map). Label maps
at the image size or half of it are accepted. One split: `test` (every pair, 40 in the release).
The official code ships no loader for this set; the layout above is what its README and the
celebamask_hq list format describe, and every missing or unexpected file is named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from semgan_jax.data import common
from semgan_jax.data.celebamask_hq import CHANNELS, CLASS_NAMES, MASK_SCALES, PALETTE, read_list

INSTRUCTIONS = __doc__  # the class body's __doc__ is the class docstring
IMAGE_DIRS = ("image", "images", "img")
LABEL_DIRS = ("label", "labels", "mask", "masks")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LIST_FILE = "test_list.txt"


def colours_to_classes(rgb: np.ndarray, path) -> np.ndarray:
    """(H, W, 3) uint8 label colours -> (H, W) uint8 class indices: grey (r = g = b) pixels hold
    the index itself, others must be colours of PALETTE (BadExampleError naming the others)."""
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        grey = rgb[..., 0]
        common.check_labels(grey, len(CLASS_NAMES), path)
        return grey
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    palette = (PALETTE[:, 0].astype(np.int64) << 16) | (PALETTE[:, 1].astype(np.int64) << 8) | PALETTE[:, 2]
    order = np.argsort(palette)
    pos = np.clip(np.searchsorted(palette[order], codes), 0, len(palette) - 1)
    known = palette[order][pos] == codes
    if not known.all():
        colours = [tuple(int(c) >> s & 255 for s in (16, 8, 0)) for c in np.unique(codes[~known])[:5]]
        raise common.BadExampleError(path, f"label colours {colours} are not in the celebamask_hq palette "
                                           f"(classes {', '.join(CLASS_NAMES)})")
    return order[pos].astype(np.uint8)


def read_label(path) -> np.ndarray:
    """(H, W) uint8 class indices 0..7 from a label map (formats in the module docstring)."""
    img = common.open_image(path)
    if img.mode in ("RGB", "RGBA"):
        return colours_to_classes(np.asarray(common.convert(img, "RGB", path)), path)
    return common.read_label_map(path, len(CLASS_NAMES))


def _find(manual_dir: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        found = common.find_dir(manual_dir, name)
        if found is not None:
            return found
    raise common.BadExampleError(manual_dir / names[0], f"missing directory ({what}; also looked for "
                                                        f"{', '.join(names[1:])} at any depth)")


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """{stem: file} of the files with `suffixes` in folder; two files of one stem are an error."""
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() in suffixes:
            if f.stem in out:
                raise common.BadExampleError(f, f"two files for '{f.stem}': {out[f.stem].name} and {f.name}")
            out[f.stem] = f
    return out


def _load(image_path: Path, label_path: Path, resolution: int):
    return common.load_rgb_pair(image_path, label_path, resolution, mask_reader=read_label,
                                mask_scales=MASK_SCALES)


def labeled_pairs(manual_dir: Path) -> list[common.Pair]:
    """The (image, label map) pairs of the download, by stem (or in test_list.txt's order)."""
    image_dir = _find(manual_dir, IMAGE_DIRS, "the portraits")
    label_dir = _find(manual_dir, LABEL_DIRS, "the label maps")
    images, labels = _files(image_dir, IMAGE_SUFFIXES), _files(label_dir, (".png",))
    listed = image_dir.parent / LIST_FILE
    if listed.is_file():
        stems = [Path(name).stem for name in read_list(listed)]
        for stem in stems:
            if stem not in images:
                raise common.BadExampleError(image_dir / stem, f"missing image (named in {listed})")
    else:
        stems = sorted(images.keys() | labels.keys())
        for stem in stems:
            if stem not in images:
                raise common.BadExampleError(image_dir / stem, f"missing image for the label map {labels[stem]}")
    return [common.Pair(stem, lambda r, i=images[stem], m=labels.get(stem, label_dir / f"{stem}.png"):
                        _load(i, m, r)) for stem in stems]


class Metfaces40(common.SegmentationBuilder):
    """MetFaces-40 portraits with 8-class face-part label maps (out-of-domain test set of SemanticGAN)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = common.resolution_configs(256, 512, 1024)
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    CHANNELS = CHANNELS
    CLASS_NAMES = CLASS_NAMES
    HOMEPAGE = "https://github.com/nv-tlabs/semanticGAN_code"
    CITATION = ("@inproceedings{semanticGAN, title={Semantic Segmentation with Generative Models: "
                "Semi-Supervised Learning and Strong Out-of-Domain Generalization}, author={Li, Daiqing and "
                "Yang, Junlin and Kreis, Karsten and Torralba, Antonio and Fidler, Sanja}, booktitle={CVPR}, "
                "year={2021}}")

    def _splits(self, manual_dir: Path) -> dict[str, list[common.Pair]]:
        return {"test": labeled_pairs(manual_dir)}
