"""Reading and writing PyTorch .pt checkpoints safely (torch is the optional extra `[torch]`).

Checkpoints are pickles, and unpickling can run arbitrary code. A file is first checked without
unpickling it (`pickle_scan.check_checkpoint`: every name its pickles would import must be one
torch.save writes for state dicts; empty, random and damaged files are told apart), then read
with `torch.load(weights_only=True)`, whose unpickler rebuilds tensors, containers and primitive
values, plus an allow-list of the classes the official checkpoints legitimately hold
(`argparse.Namespace`, the `args` of train_seg_gan.py and rosinality's train.py). Anything else
is refused with ConversionError before it is constructed: nothing from the file is executed.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from typing import Any

import numpy as np

from semgan_jax.convert.errors import ConversionError
from semgan_jax.convert.pickle_scan import check_checkpoint

SAFE_GLOBALS = (argparse.Namespace,)
INSTALL_HINT = "pip install 'semgan_jax[torch]' (or: pip install torch)"


def _torch():
    try:
        import torch
    except ImportError:
        raise ConversionError(f"reading and writing PyTorch checkpoints needs torch: {INSTALL_HINT}") from None
    return torch


def _to_numpy(obj, torch):
    """Tensors -> NumPy (floating types as float32), Namespace -> dict, containers recursively."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return (t.float() if t.is_floating_point() else t).numpy()
    if isinstance(obj, argparse.Namespace):
        return dict(vars(obj))
    if isinstance(obj, dict):
        return {k: _to_numpy(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v, torch) for v in obj)
    return obj


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Read a .pt file with the restricted unpickler; tensors come back as NumPy arrays and
    argparse.Namespace as a dict. ConversionError for a missing file, a file that is not a
    PyTorch checkpoint, or one holding anything off the allow-list (checked before torch is
    needed)."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    check_checkpoint(path)
    torch = _torch()
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise ConversionError(
                f"{path}: refused: the file contains '{found.group(1)}', which is not on the allow-list of "
                f"what SemanticGAN / StyleGAN2 checkpoints hold (tensors, containers, numbers, strings, "
                f"argparse.Namespace). Nothing from it was executed. If it is a whole pickled model, load it "
                f"where you trust it and save its state_dict() instead.") from None
        # torch's own words end in advice to load with weights_only=False: keep only its finding
        found = re.search(r"WeightsUnpickler error: (.*)", str(err))
        raise ConversionError(f"{path}: refused by torch's restricted unpickler: "
                              f"{found.group(1) if found else type(err).__name__}") from None
    except Exception as err:  # torch reports foreign files as RuntimeError, KeyError, EOFError, ...
        raise ConversionError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: {err})") from None
    return _to_numpy(obj, torch)


def _to_torch(obj, torch):
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj, copy=True, order="C"))
    if isinstance(obj, dict):
        return {k: _to_torch(v, torch) for k, v in obj.items()}
    return obj


def save_torch_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    """torch.save a checkpoint dict whose state dicts hold NumPy arrays (as tensors)."""
    torch = _torch()
    torch.save(_to_torch(ckpt, torch), path)
