"""Building a dataset into array_record files: what `semgan prepare` runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from semgan_jax.data import common, datasets


@dataclasses.dataclass
class PrepareResult:
    """Where the dataset was written, its split sizes, and the examples skipped per split."""

    name: str
    resolution: int
    data_path: str
    split_sizes: dict[str, int]
    skipped: dict[str, list[common.BadExampleError]]


def prepare(name: str, *, manual_dir: str | None = None, data_dir: str | None = None,
            resolution: int | None = None, skip_bad: bool = False, num_threads: int = 4,
            overwrite: bool = False) -> PrepareResult:
    """Builds `name` at `resolution` (TFDS progress bars on stderr).

    manual_dir: the downloaded files (not used by 'synthetic'); data_dir: output root (TFDS
    default ~/tensorflow_datasets); skip_bad: skip and report bad examples instead of raising
    BadExampleError; overwrite: rebuild even if already prepared. A failed build leaves nothing
    behind that could be mistaken for a finished dataset (TFDS writes to a temporary directory).
    """
    builder = datasets.get_builder(name, resolution, data_dir, skip_bad=skip_bad, num_threads=num_threads)
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        if manual_dir is None:
            raise ValueError(f"{name} is read from a manual download: pass manual_dir (--manual-dir)")
        if not Path(manual_dir).is_dir():
            raise FileNotFoundError(f"manual_dir {manual_dir} is not a directory")
        if not any(Path(manual_dir).iterdir()):
            raise FileNotFoundError(f"manual_dir {manual_dir} is empty: download {name} into it (docs/data.md)")
    mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite else \
        tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode))
    return PrepareResult(
        name=name, resolution=builder.builder_config.resolution, data_path=str(builder.data_path),
        split_sizes={s: info.num_examples for s, info in builder.info.splits.items()},
        skipped=dict(builder.skipped))
