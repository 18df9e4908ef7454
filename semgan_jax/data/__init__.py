"""Data layer: TFDS builders (celebamask_hq, isic2018, chest_xray, metfaces40, synthetic), grain pipelines.

Modules: common (shared reading/validation/base builder), one module per dataset (builder,
CLASS_NAMES, PALETTE), synthetic (procedural faces, in-memory source + builder), datasets
(registry, load_split, select_labeled), pipeline (grain iterators), prepare (building:
`semgan_jax.data.prepare.prepare(...)`, what `semgan prepare` runs). The names below are
imported lazily, so `import semgan_jax.data` loads neither TFDS nor grain.
"""

import importlib

_EXPORTS = {
    "DATASET_NAMES": "datasets", "DatasetInfo": "datasets", "get_dataset_info": "datasets",
    "get_builder": "datasets", "load_split": "datasets", "select_labeled": "datasets",
    "SyntheticSource": "synthetic", "synthetic_split": "synthetic",
    "make_unlabeled_iterator": "pipeline", "make_labeled_iterator": "pipeline",
    "make_eval_batches": "pipeline", "image_to_float": "pipeline", "mask_to_onehot": "pipeline",
    "BadExampleError": "common",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
