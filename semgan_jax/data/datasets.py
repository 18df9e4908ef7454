"""Dataset registry and loading: names -> builder, classes, palette; splits as random-access sources.

    get_dataset_info(name) -> DatasetInfo (class names, (K, 3) uint8 palette, channels, ...)
    get_builder(name, resolution=None, data_dir=None, **builder_kwargs) -> TFDS builder
    load_split(name, split, *, data_dir=None, resolution=None, num_labeled=None, label_seed=0)
        -> source with __len__/__getitem__ (see pipeline.py)
    select_labeled(source, num_labeled, seed=0) -> SubsetSource: the label-limited subset

Dataset modules are imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np

DATASET_NAMES = ("synthetic", "celebamask_hq", "isic2018", "chest_xray", "metfaces40")
# name -> (module, builder class, out-of-domain splits)
_REGISTRY = {
    "synthetic": ("semgan_jax.data.synthetic", "SyntheticFaces", ("test_ood",)),
    "celebamask_hq": ("semgan_jax.data.celebamask_hq", "CelebamaskHq", ()),
    "isic2018": ("semgan_jax.data.isic2018", "Isic2018", ("ph2", "dermis", "dermquest")),
    "chest_xray": ("semgan_jax.data.chest_xray", "ChestXray", ("montgomery", "shenzhen")),
    # out-of-domain test set for celebamask_hq models (same classes): `semgan evaluate --dataset`
    "metfaces40": ("semgan_jax.data.metfaces40", "Metfaces40", ("test",)),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; palette[k] is the RGB colour of class k in sample grids."""

    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray  # (K, 3) uint8
    channels: int
    resolutions: tuple[int, ...]
    ood_splits: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def default_resolution(self) -> int:
        return self.resolutions[0]


def _module(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    return importlib.import_module(_REGISTRY[name][0])


def builder_class(name: str):
    """The TFDS builder class registered for `name`."""
    return getattr(_module(name), _REGISTRY[name][1])


def get_dataset_info(name: str) -> DatasetInfo:
    module = _module(name)
    cls = builder_class(name)
    return DatasetInfo(
        name=name, class_names=tuple(module.CLASS_NAMES), palette=module.PALETTE, channels=module.CHANNELS,
        resolutions=tuple(c.resolution for c in cls.BUILDER_CONFIGS), ood_splits=_REGISTRY[name][2])


def get_builder(name: str, resolution: int | None = None, data_dir: str | None = None, **builder_kwargs):
    """Builder for `name` at `resolution` (default: the dataset's first, 256 for real data)."""
    info = get_dataset_info(name)
    resolution = resolution or info.default_resolution
    if resolution not in info.resolutions:
        raise ValueError(f"{name} has no {resolution} px config; choose from {info.resolutions}")
    return builder_class(name)(config=str(resolution), data_dir=data_dir, **builder_kwargs)


class SubsetSource:
    """The examples `indices` of `source`, as a source (`indices` is public, for logging)."""

    def __init__(self, source, indices: np.ndarray):
        self.source = source
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.source[int(self.indices[index])]


def select_labeled(source, num_labeled: int, seed: int = 0) -> SubsetSource:
    """`num_labeled` examples picked by a permutation drawn from `seed`.

    The subsets for one seed are nested (the 30-label set is inside the 150-label set) and
    depend only on (seed, len(source)), so "train with 30 labels" is reproducible.
    """
    if not 0 < num_labeled <= len(source):
        raise ValueError(f"num_labeled must be in [1, {len(source)}], got {num_labeled}")
    order = np.random.default_rng(seed).permutation(len(source))
    return SubsetSource(source, order[:num_labeled])


def load_split(name: str, split: str, *, data_dir: str | None = None, resolution: int | None = None,
               num_labeled: int | None = None, label_seed: int = 0):
    """A split as a random-access source, optionally limited to `num_labeled` examples.

    'synthetic' without data_dir is generated in memory (identical to its TFDS build). A dataset
    built without an 'unlabeled' split serves 'unlabeled' from 'train' (its images, masks ignored).
    """
    if name == "synthetic" and data_dir is None:
        from semgan_jax.data import synthetic

        source = synthetic.synthetic_split("train" if split == "unlabeled" else split, resolution or 32)
    else:
        builder = get_builder(name, resolution, data_dir)
        if not builder.is_prepared():
            res = builder.builder_config.resolution
            hint = f"semgan prepare {name} --manual-dir DIR --resolution {res}"
            hint += f" --data-dir {data_dir}" if data_dir else ""
            raise FileNotFoundError(f"{name} at {res} px is not prepared in {builder.data_dir}; run `{hint}`")
        splits = builder.info.splits
        if split == "unlabeled" and "unlabeled" not in splits:
            split = "train"
        if split not in splits:
            raise ValueError(f"{name} has no split {split!r}; built splits: {sorted(splits)}")
        source = builder.as_data_source(split=split)
    return source if num_labeled is None else select_labeled(source, num_labeled, label_seed)
