"""Official PyTorch checkpoints (SemanticGAN stage 1 / 2, rosinality StyleGAN2) <-> Flax.

    config, variables = convert_file("002000.pt")       # torch needed only to read .pt files
    write_workdir("runs/celeba", config, variables)       # a run directory train-gan --resume,
                                                          # train-encoder and segment read
    config, variables = read_workdir("runs/celeba")       # latest checkpoint of a run directory
    export_file(config, variables, "out.pt")              # back to the official format

On NumPy state dicts (no torch): convert_checkpoint / export_checkpoint. See docs/convert.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# imported on first use, so that `semgan --help` (which imports convert.cli) stays fast
_LAZY = {"ConversionError": "errors", "convert_checkpoint": "formats", "export_checkpoint": "formats",
         "load_torch_checkpoint": "torch_io", "save_torch_checkpoint": "torch_io",
         "read_workdir": "workdir", "write_workdir": "workdir"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"semgan_jax.convert.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'semgan_jax.convert' has no attribute {name!r}")


def convert_file(path: str | os.PathLike, *, seg_dim: int | None = None,
                 seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read an official .pt checkpoint safely and convert it: (config, {network: variables}).

    config['iteration'] is the file name's number when it has one (as train_seg_gan.py --ckpt)
    that fits a step counter (int32). ConversionError messages name the file.
    """
    from semgan_jax.convert.errors import ConversionError
    from semgan_jax.convert.formats import convert_checkpoint
    from semgan_jax.convert.torch_io import load_torch_checkpoint

    stem = Path(path).stem
    iteration = int(stem) if stem.isdecimal() and int(stem) < 2**31 else None
    ckpt = load_torch_checkpoint(path)
    try:
        return convert_checkpoint(ckpt, seg_dim=seg_dim, seed=seed, iteration=iteration)
    except ConversionError as err:
        raise ConversionError(f"{path}: {err}") from None


def export_file(config: dict[str, Any], variables: dict[str, Any], path: str | os.PathLike) -> None:
    """Write (config, variables) as an official PyTorch checkpoint."""
    from semgan_jax.convert.formats import export_checkpoint
    from semgan_jax.convert.torch_io import save_torch_checkpoint

    save_torch_checkpoint(path, export_checkpoint(config, variables))


__all__ = ["ConversionError", "convert_checkpoint", "convert_file", "export_checkpoint", "export_file",
           "load_torch_checkpoint", "read_workdir", "save_torch_checkpoint", "write_workdir"]
