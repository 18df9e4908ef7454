"""Whole checkpoints of the official code <-> (config, Flax variables), on NumPy state dicts.

Recognised checkpoint dicts (top-level keys):
  semanticgan-stage1  train_seg_gan.py: g, g_ema, d_img, d_seg, args (+ optimiser states)
  semanticgan-stage2  train_enc.py:     g_ema, e (FPNEncoder or ResEncoder; no args)
  stylegan2           rosinality's train.py / convert_weight.py: g_ema without to_seg* keys
                      (+ g, d, args); the seg branch is freshly initialised (`seg_dim`, `seed`),
                      identically in g and g_ema, and d becomes d_img.
The model config comes from `args` where the checkpoint has it, otherwise from the generator's
shapes; every tensor is then checked against the Flax network built from that config.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax.traverse_util import flatten_dict

from semgan_jax.convert import networks
from semgan_jax.convert.errors import ConversionError
from semgan_jax.convert.mapping import assemble, export_state_dict, import_state_dict
from semgan_jax.convert.tables import generator_table
from semgan_jax.models.widths import log2_size

FORMAT_VERSION = 1
STAGE1, STAGE2, STYLEGAN2 = "semanticgan-stage1", "semanticgan-stage2", "stylegan2"
_REQUIRED = {STAGE1: ("g", "g_ema", "d_img", "d_seg"), STAGE2: ("g_ema", "e"), STYLEGAN2: ("g_ema",)}
# train_seg_gan.py defaults used when exporting a checkpoint without its reference args
_STAGE1_DEFAULTS = {"lr": 0.002, "d_reg_every": 16, "g_reg_every": 4}


def detect_source(ckpt: Mapping[str, Any]) -> str:
    """Which official script wrote `ckpt`; ConversionError if none or a network is missing."""
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f"expected a checkpoint dict, got {type(ckpt).__name__}")
    keys = set(ckpt)
    if "e" in keys:
        source = STAGE2
    elif keys & {"d_img", "d_seg"}:
        source = STAGE1
    elif isinstance(ckpt.get("g_ema"), Mapping) and "to_seg1.bias" not in ckpt["g_ema"]:
        source = STYLEGAN2
    elif "g_ema" in keys:
        source = STAGE1
    else:
        raise ConversionError(
            f"not a SemanticGAN or StyleGAN2 checkpoint: top-level keys are {sorted(map(str, keys))}; expected "
            "g, g_ema, d_img, d_seg, args (train_seg_gan.py), g_ema, e (train_enc.py) or g_ema (StyleGAN2)")
    for name in _REQUIRED[source]:
        if name not in ckpt:
            raise ConversionError(f"{source} checkpoint lacks network '{name}' "
                                  f"(top-level keys: {sorted(map(str, keys))})")
        if not isinstance(ckpt[name], Mapping):
            raise ConversionError(f"'{name}' is not a state dict but a {type(ckpt[name]).__name__}")
    return source


def _check_state_dict(sd: Mapping[str, Any], network: str) -> None:
    """ConversionError unless `sd` maps string keys to tensors (arrays), as a torch state dict."""
    for key, value in sd.items():
        if not isinstance(key, str):
            raise ConversionError(f"{network}: state dict key {key!r} is not a string")
        if not hasattr(value, "shape"):
            raise ConversionError(f"{network}: torch key '{key}' holds a {type(value).__name__}, not a tensor")


def _shape(sd: Mapping[str, np.ndarray], key: str, ndim: int) -> tuple[int, ...]:
    if key not in sd:
        raise ConversionError(f"g_ema: not a StyleGAN2 generator state dict (no '{key}')")
    shape = tuple(np.shape(sd[key]))
    if len(shape) != ndim:
        raise ConversionError(f"g_ema: torch key '{key}' has shape {shape}, expected {ndim} dimensions")
    return shape


# model field -> the train_seg_gan.py argument setting it
_MODEL_ARGS = {"size": "size", "style_dim": "latent", "n_mlp": "n_mlp", "seg_dim": "seg_dim",
               "image_channels": "image_mode", "channel_multiplier": "channel_multiplier"}


def _model_arg(args: Mapping[str, Any], field: str) -> int | None:
    """Model field `field` as the reference args set it (None where they do not)."""
    value = args.get(_MODEL_ARGS[field])
    if field == "image_channels":
        return {"RGB": 3, "L": 1}.get(value) if isinstance(value, str) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not float(value).is_integer():
        raise ConversionError(f"args.{_MODEL_ARGS[field]} is {value!r}, expected an integer")
    return int(value)


def model_config(g_sd: Mapping[str, np.ndarray], args: Mapping[str, Any] | None,
                 seg_dim: int | None = None) -> dict[str, Any]:
    """The stage-1 config's `model` section for a generator state dict: from args where given,
    else from the tensor shapes (widths at <= 32 px do not depend on channel_multiplier; it is
    read from the 64-px conv when there is one, else from args, default 2)."""
    args = args or {}
    noises = [int(k.rsplit("_", 1)[1]) for k in g_sd if re.fullmatch(r"noises\.noise_\d+", k)]
    if not noises:
        raise ConversionError("g_ema: not a StyleGAN2 generator state dict (no 'noises.noise_*' buffers)")
    size = _shape(g_sd, f"noises.noise_{max(noises)}", 4)[-1]  # the last noise map has the image size
    cm = _shape(g_sd, "convs.6.conv.weight", 5)[1] // 256 if size >= 64 else 2
    shaped = {
        "size": size,
        "style_dim": _shape(g_sd, "style.1.weight", 2)[0],
        "n_mlp": sum(k.startswith("style.") and k.endswith(".weight") for k in g_sd),
        "seg_dim": _shape(g_sd, "to_seg1.bias", 4)[1] if seg_dim is None else seg_dim,
        "image_channels": _shape(g_sd, "to_rgb1.bias", 4)[1],
        "channel_multiplier": cm,
    }
    m = {}
    for field, value in shaped.items():
        given = None if field == "seg_dim" and seg_dim is not None else _model_arg(args, field)
        m[field] = value if given is None else given
        where = f"args.{_MODEL_ARGS[field]}" if given is not None else "the g_ema tensor shapes"
        if m[field] < 1:
            raise ConversionError(f"model {field} {m[field]} (from {where}) is not positive")
        if field == "size":
            try:
                log2_size(m[field])
            except ValueError as err:
                raise ConversionError(f"{err} (from {where})") from None
    # the reference's fixed parts: channel table (channel_base 0), mapping lr, Dm (pix2pixHD defaults)
    m.update(channel_base=0, channel_max=512, lr_mlp=0.01, modconv_impl="input_scaling",
             dm_ndf=64, dm_n_layers=3, dm_num_d=3, dm_max_channels=512, dtype="float32")
    return m


# train_seg_gan.py argument -> stage-1 config `train` / `log` field
_TRAIN_ARGS = {"iter": "iterations", "batch": "batch_size", "lr": "lr", "r1": "r1",
               "path_regularize": "path_regularize", "path_batch_shrink": "path_batch_shrink",
               "d_reg_every": "d_reg_every", "g_reg_every": "g_reg_every", "mixing": "mixing",
               "lambda_dseg_feat": "lambda_dseg_feat"}
_LOG_ARGS = {"n_sample": "n_sample", "viz_every": "viz_every", "save_every": "save_every"}


def _sections(args: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The stage-1 `train` and `log` fields that the reference args set (numbers only)."""
    args = args or {}
    out = {"train": {}, "log": {}}
    for section, table in (("train", _TRAIN_ARGS), ("log", _LOG_ARGS)):
        for theirs, ours in table.items():
            value = args.get(theirs)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise ConversionError(f"args.{theirs} is {value}, expected a finite number")
                out[section][ours] = value
    return out


def _json_args(args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The JSON-representable entries of the reference's argparse args (kept for the record)."""
    ok = (str, int, float, bool, type(None))
    return {k: v for k, v in (args or {}).items()
            if isinstance(v, ok) or (isinstance(v, (list, tuple)) and all(isinstance(x, ok) for x in v))}


def convert_checkpoint(ckpt: Mapping[str, Any], *, seg_dim: int | None = None, seed: int = 0,
                       iteration: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Official checkpoint dict (NumPy state dicts, args as a dict) -> (config, variables).

    variables: {network: Flax variables} for the networks in config['networks'].
    seg_dim / seed: StyleGAN2 checkpoints only, the fresh seg branch (seg_dim default 8).
    """
    source = detect_source(ckpt)
    if seg_dim is not None and source != STYLEGAN2:
        raise ConversionError(f"seg_dim applies to StyleGAN2 checkpoints only; this is a {source} checkpoint")
    if seg_dim is not None and seg_dim < 1:
        raise ConversionError(f"seg_dim must be positive, got {seg_dim}")
    args = ckpt.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, Mapping) else None
    fresh_seg = source == STYLEGAN2
    sources = {"d_img": "d"} if fresh_seg else {}
    names = [n for n in networks.NETWORKS if isinstance(ckpt.get(sources.get(n, n)), Mapping)]
    for name in names:
        _check_state_dict(ckpt[sources.get(name, name)], name)
    config = {"format": FORMAT_VERSION, "source": source, "iteration": iteration,
              "model": model_config(ckpt["g_ema"], args, (seg_dim or 8) if fresh_seg else None),
              **(_sections(args) if source == STAGE1 else {}), "reference_args": _json_args(args)}
    if source == STAGE2:
        e = ckpt["e"]
        backbone = "fpn" if "FPN_module.conv1.weight" in e else "res" if "final_linear.weight" in e else None
        if backbone is None:
            raise ConversionError("e: neither an FPNEncoder (no 'FPN_module.conv1.weight') nor a ResEncoder "
                                  "(no 'final_linear.weight') state dict")
        # the stage-2 config's `encoder` section; widths are the reference's (FPN 64 / 512)
        config["encoder"] = {"backbone": backbone, "base_width": 64, "feature_dim": 512, "channel_max": 512}
    config["networks"] = names
    fresh = {}
    if fresh_seg:
        fresh = flatten_dict(jax.tree.map(np.asarray, networks.init("g_ema", config, seed)))
    variables = {}
    for name in names:
        template = networks.template(name, config)
        table = networks.table(name, config, template)
        if fresh_seg and name in ("g", "g_ema"):
            table = generator_table(config["model"]["size"], config["model"]["n_mlp"], seg=False)
        flat = dict(fresh) if name in ("g", "g_ema") else {}
        flat.update(import_state_dict(ckpt[sources.get(name, name)], table, template, name))
        variables[name] = assemble(flat, template, name)
    return config, variables


def _fresh_adam(n_params: int, lr: float, reg_every: int) -> dict[str, Any]:
    """torch.optim.Adam state dict as train_seg_gan.py sets it up, with no moments yet."""
    c = reg_every / (reg_every + 1)
    return {"state": {}, "param_groups": [{"lr": lr * c, "betas": (0.0 ** c, 0.99 ** c), "eps": 1e-8,
                                           "weight_decay": 0, "amsgrad": False,
                                           "params": list(range(n_params))}]}


# what the official modules hard-wire (train_seg_gan.py sets latent 512 and n_mlp 8 itself)
_REFERENCE_MODEL = {"style_dim": 512, "n_mlp": 8, "channel_max": 512, "lr_mlp": 0.01, "dm_ndf": 64,
                    "dm_n_layers": 3, "dm_num_d": 3, "dm_max_channels": 512}
_REFERENCE_ENCODER = {"base_width": 64, "feature_dim": 512, "channel_max": 512}


def check_exportable(config: Mapping[str, Any]) -> None:
    """ConversionError unless the official modules can hold these networks."""
    m = config["model"]
    bad = [f"model.{k}={m.get(k)} (official: {v})" for k, v in _REFERENCE_MODEL.items() if m.get(k) != v]
    if m.get("channel_base", 0) not in (0, 16384 * m["channel_multiplier"]):
        bad.append(f"model.channel_base={m['channel_base']} (official: 0, the reference channel table)")
    if "e" in config["networks"]:
        enc = config["encoder"]
        bad += [f"encoder.{k}={enc.get(k)} (official: {v})" for k, v in _REFERENCE_ENCODER.items()
                if enc.get(k) != v and not (enc["backbone"] == "res" and k != "channel_max")
                and not (enc["backbone"] == "fpn" and k == "channel_max")]
    if bad:
        raise ConversionError("the official code cannot hold these networks: " + ", ".join(bad))


def export_checkpoint(config: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    """(config, variables) -> official checkpoint dict (NumPy state dicts).

    With an encoder: train_enc.py's {g_ema, e}. Otherwise train_seg_gan.py's networks + 'args'
    (argparse.Namespace); when all of g, d_img, d_seg are there, also fresh Adam states
    (g_optim, d_img_optim, d_seg_optim: learning rates and betas as the reference computes
    them, no moments), which train_seg_gan.py --ckpt requires.
    """
    check_exportable(config)
    out: dict[str, Any] = {}
    n_params = {}
    for name in config["networks"]:
        table = networks.table(name, config, variables[name])
        out[name] = export_state_dict(variables[name], table, name)
        n_params[name] = sum(t.is_parameter for t in table.tensors)
    if "e" in out:
        return {"g_ema": out["g_ema"], "e": out["e"]}
    m = config["model"]
    args = {**_STAGE1_DEFAULTS, **config.get("reference_args", {})}
    for section, table in (("train", _TRAIN_ARGS), ("log", _LOG_ARGS)):
        args.update({theirs: config[section][ours] for theirs, ours in table.items()
                     if ours in config.get(section, {})})
    args.update(size=m["size"], latent=m["style_dim"], n_mlp=m["n_mlp"], seg_dim=m["seg_dim"],
                image_mode="RGB" if m["image_channels"] == 3 else "L", channel_multiplier=m["channel_multiplier"])
    out["args"] = argparse.Namespace(**args)
    if {"g", "d_img", "d_seg"} <= set(out):
        out["g_optim"] = _fresh_adam(n_params["g"], args["lr"], args["g_reg_every"])
        out["d_img_optim"] = _fresh_adam(n_params["d_img"], args["lr"], args["d_reg_every"])
        out["d_seg_optim"] = _fresh_adam(n_params["d_seg"], args["lr"], args["d_reg_every"])
    return out
