"""torch state dicts -> Flax variables for the perceptual networks, read from local files only.

    find_weights(kind, path=None) -> Path               (raises WeightsNotFoundError with download help)
    load_state_dict(source) -> dict[str, np.ndarray]    (path to .pth / .pt / .npz, or a mapping)
    lpips_variables(net, backbone, heads) -> {'params': ...} for perceptual.lpips.LPIPS(net)
    inception_variables(source) -> {'params', 'batch_stats'} for perceptual.inception.InceptionV3
    load_lpips(net="vgg", backbone=None, heads=None) -> (LPIPS module, variables)
    load_inception(path=None) -> (InceptionV3 module, variables)

`source` / `backbone` / `heads` may be a path or an already loaded mapping name -> array (numpy
arrays or torch tensors), so tests and numpy-only setups need no torch. torch is imported only to
read .pth / .pt files. Nothing is downloaded: WEIGHTS says what to fetch and where to put it.

Layouts: torch conv weight (out, in, kh, kw) -> Flax kernel (kh, kw, in, out); Linear (out, in) ->
(in, out); BatchNorm weight/bias/running_mean/running_var -> params scale/bias + batch_stats
mean/var. Every expected array must be present with the right shape; extra arrays are an error
except those listed as ignored (Inception's AuxLogits and num_batches_tracked, classifier layers).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

WEIGHTS_ENV = "SEMGAN_WEIGHTS"


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    filename: str
    source: str  # where to download it


WEIGHTS = {
    "vgg16": WeightsFile("vgg16-397923af.pth",
                         "https://download.pytorch.org/models/vgg16-397923af.pth (torchvision VGG16 IMAGENET1K_V1)"),
    "alexnet": WeightsFile("alexnet-owt-7be5be79.pth",
                           "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth "
                           "(torchvision AlexNet IMAGENET1K_V1)"),
    "inception_v3": WeightsFile("inception_v3_google-0cc3c7bd.pth",
                                "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth "
                                "(torchvision Inception-v3 IMAGENET1K_V1, the network the reference uses; "
                                "not pytorch-fid's pt_inception-2015-12-05 weights)"),
    "lpips_vgg": WeightsFile("vgg.pth", "weights/v0.1/vgg.pth inside the `lpips` wheel on PyPI "
                                        "(`pip download lpips==0.1.4 --no-deps`, unzip), or "
                                        "github.com/richzhang/PerceptualSimilarity lpips/weights/v0.1/vgg.pth"),
    "lpips_alex": WeightsFile("alex.pth", "weights/v0.1/alex.pth inside the `lpips` wheel on PyPI "
                                          "(`pip download lpips==0.1.4 --no-deps`, unzip), or "
                                          "github.com/richzhang/PerceptualSimilarity lpips/weights/v0.1/alex.pth"),
}


class WeightsNotFoundError(FileNotFoundError):
    """A weights file is missing; the message says what to download and where to put it."""


def weights_dir() -> Path:
    """$SEMGAN_WEIGHTS, else ~/.cache/semgan_jax/weights."""
    return Path(os.environ.get(WEIGHTS_ENV) or Path.home() / ".cache" / "semgan_jax" / "weights")


def _lpips_package_file(filename: str) -> Path | None:
    """The head file shipped in an installed `lpips` package (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / filename
    return path if path.is_file() else None


def find_weights(kind: str, path: str | os.PathLike | None = None) -> Path:
    """Local file for `kind` (a WEIGHTS key): `path` if given, else weights_dir()/<filename>, else
    (LPIPS heads) the file inside an installed `lpips` package."""
    if kind not in WEIGHTS:
        raise ValueError(f"unknown weights {kind!r}; choose from {', '.join(WEIGHTS)}")
    entry = WEIGHTS[kind]
    if path is not None:
        if Path(path).is_file():
            return Path(path)
        where = f"{path} does not exist"
    else:
        candidate = weights_dir() / entry.filename
        if candidate.is_file():
            return candidate
        if kind.startswith("lpips_") and (shipped := _lpips_package_file(entry.filename)):
            return shipped
        where = f"not found at {candidate}"
    raise WeightsNotFoundError(
        f"{kind} weights {where}. Nothing is downloaded automatically: download {entry.source} "
        f"and save it as {weights_dir() / entry.filename} (the folder is ${WEIGHTS_ENV} or "
        f"~/.cache/semgan_jax/weights), or pass its path explicitly.")


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """name -> numpy array from a mapping, an .npz file, or a torch .pth/.pt file (needs torch)."""
    if isinstance(source, Mapping):
        return {k: _to_numpy(v) for k, v in source.items()}
    path = Path(source)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"reading {path} needs torch (pip install 'semgan_jax[torch]'), or save the "
                          "state dict as .npz with numpy arrays") from err
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {k: _to_numpy(v) for k, v in state.items()}


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch (out, in, kh, kw) -> Flax (kh, kw, in, out)."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)), dtype=np.float32)


def _check(expected, got, what: str, extra: list[str]) -> None:
    """Raise if `got` misses a leaf of `expected` (a tree of ShapeDtypeStructs) or a shape differs."""
    flat_expected = {jax.tree_util.keystr(p): l.shape for p, l in jax.tree_util.tree_leaves_with_path(expected)}
    flat_got = {jax.tree_util.keystr(p): l.shape for p, l in jax.tree_util.tree_leaves_with_path(got)}
    missing = sorted(set(flat_expected) - set(flat_got))
    wrong = sorted(k for k in set(flat_expected) & set(flat_got) if flat_expected[k] != flat_got[k])
    extra = list(extra) + sorted(set(flat_got) - set(flat_expected))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} arrays, e.g. {missing[:3]}")
    if wrong:
        problems.append("shape mismatch " + ", ".join(f"{k}: {flat_got[k]} != {flat_expected[k]}" for k in wrong[:3]))
    if extra:
        problems.append(f"unexpected keys {extra[:5]}")
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))


# torchvision `features.{i}` or lpips `net.slice{k}.{i}` conv layers.
_FEATURE_KEY = re.compile(r"(?:^|\.)(?:features|slice\d)\.(\d+)\.(weight|bias)$")
_HEAD_KEY = re.compile(r"^lin(\d)\.model\.\d+\.weight$")
# torchvision's classifier; in a whole lpips.LPIPS state dict its heads (twice) and ScalingLayer buffers.
_IGNORED_BACKBONE_KEY = re.compile(r"^(classifier\.|lin\d\.|lins\.\d|scaling_layer\.)")


def backbone_params(state: Mapping[str, np.ndarray]) -> tuple[dict, list[str]]:
    """Conv layers of a torchvision VGG16/AlexNet (or lpips) state dict -> ({'conv_i': ...}, unused keys)."""
    params, extra = {}, []
    for key, value in state.items():
        match = _FEATURE_KEY.search(key)
        if match is None:
            if not _IGNORED_BACKBONE_KEY.match(key):
                extra.append(key)
            continue
        layer = params.setdefault(f"conv_{match.group(1)}", {})
        if match.group(2) == "weight":
            layer["kernel"] = conv_kernel(value)
        else:
            layer["bias"] = np.asarray(value, np.float32)
    return params, extra


def head_params(state: Mapping[str, np.ndarray]) -> dict:
    """lpips v0.1 head file (lin{j}.model.1.weight (1, C, 1, 1)) -> {'lin_j': {'kernel' (1, 1, C, 1)}}."""
    return {f"lin_{m.group(1)}": {"kernel": conv_kernel(v)}
            for k, v in state.items() if (m := _HEAD_KEY.match(k))}


def lpips_variables(net: str, backbone, heads) -> dict:
    """Variables for `LPIPS(net)` from a torchvision state dict (or lpips's own, whose `net.sliceK`
    keep torchvision's layer indices) and the v0.1 head file; paths or mappings."""
    from semgan_jax.perceptual.lpips import LPIPS

    feats, extra = backbone_params(load_state_dict(backbone))
    params = {"features": feats, **head_params(load_state_dict(heads))}
    dummy = np.zeros((1, 64, 64, 3), np.float32)
    expected = jax.eval_shape(LPIPS(net).init, jax.random.key(0), dummy, dummy)["params"]
    _check(expected, params, f"LPIPS-{net} weights", extra)
    return {"params": params}


_BN_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def inception_variables(source) -> dict:
    """Variables for `InceptionV3` from torchvision's inception_v3 state dict (path or mapping)."""
    from semgan_jax.perceptual.inception import InceptionV3

    state = load_state_dict(source)
    variables: dict = {"params": {}, "batch_stats": {}}
    extra = []
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "AuxLogits" or parts[-1] == "num_batches_tracked":
            continue
        if parts[0] == "fc" and len(parts) == 2:
            fc = variables["params"].setdefault("fc", {})
            fc["kernel" if parts[1] == "weight" else "bias"] = (
                np.ascontiguousarray(value.T, np.float32) if parts[1] == "weight" else np.asarray(value, np.float32))
            continue
        if len(parts) < 3 or parts[-2] not in ("conv", "bn"):
            extra.append(key)
            continue
        if parts[-2] == "conv":
            collection, leaf, array = "params", "kernel", conv_kernel(value)
        elif parts[-1] in _BN_FIELDS:
            (collection, leaf), array = _BN_FIELDS[parts[-1]], np.asarray(value, np.float32)
        else:
            extra.append(key)
            continue
        node = variables[collection]
        for name in parts[:-1]:
            node = node.setdefault(name, {})
        node[leaf] = array
    expected = jax.eval_shape(InceptionV3().init, jax.random.key(0), np.zeros((1, 75, 75, 3), np.float32))
    _check(expected, variables, "Inception-v3 weights (torchvision inception_v3 state dict expected)", extra)
    return variables


def load_lpips(net: str = "vgg", backbone=None, heads=None):
    """(LPIPS(net), variables) from local files (see find_weights) or given paths / mappings."""
    from semgan_jax.perceptual.lpips import LPIPS

    if net not in ("vgg", "alex"):
        raise ValueError(f"unknown LPIPS net {net!r}; choose 'vgg' or 'alex'")
    kind = "vgg16" if net == "vgg" else "alexnet"
    backbone = backbone if isinstance(backbone, Mapping) else find_weights(kind, backbone)
    heads = heads if isinstance(heads, Mapping) else find_weights(f"lpips_{net}", heads)
    return LPIPS(net), lpips_variables(net, backbone, heads)


def load_inception(path=None):
    """(InceptionV3(), variables) from a local torchvision inception_v3 file (see find_weights)."""
    from semgan_jax.perceptual.inception import InceptionV3

    source = path if isinstance(path, Mapping) else find_weights("inception_v3", path)
    return InceptionV3(), inception_variables(source)
