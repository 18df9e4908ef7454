"""Converted checkpoints as run directories that the training and inference commands read as
they are (docs/convert.md):

  stage 1 (train_seg_gan.py, and StyleGAN2 checkpoints)       `train-gan --resume`, `segment --mean-init`,
    DIR/config.json            the stage-1 run config           and the `stage1` of `train-encoder`
    DIR/checkpoints/<step>/    orbax: state = GANState, data = fresh iterator positions
    DIR/converted.json         what was converted (source, file, networks, reference args)
  stage 2 (train_enc.py)                                       `segment`, `evaluate`, `train-encoder --resume`
    DIR/config.json            the stage-2 run config, stage1 = DIR/stage1 (absolute path)
    DIR/checkpoints/<step>/    orbax: state = EncoderState, data = fresh iterator positions
    DIR/stage1/                a stage-1 run directory holding the generator (G = G_ema)
    DIR/converted.json

Parts the official checkpoints do not hold are fresh: optimiser moments (zero, as a new
optax state), the path-length mean (0, as the reference after --ckpt), the iterator positions,
the state's PRNG key (`seed`), and networks a file lacks (StyleGAN2: Dm and, without `d`, Dr;
stage 2: Dr and Dm of DIR/stage1), initialised from `seed`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semgan_jax.convert import networks
from semgan_jax.convert.errors import ConversionError

CONVERTED_FILE = "converted.json"
STAGE1_SUBDIR = "stage1"


# ---- run configs ----------------------------------------------------------------------------

def _set_fields(section, values: dict[str, Any], what: str) -> None:
    """section.update(values), each value cast to the field's type; unknown fields are an error."""
    for key, value in values.items():
        if key not in section:
            raise ConversionError(f"{what} has no field {key!r}")
        old = section[key]
        section[key] = type(old)(value) if isinstance(old, (bool, int, float, str)) and value is not None else value


def stage1_run_config(config: dict[str, Any], base=None):
    """The stage-1 run config (ConfigDict) of a converted checkpoint: `base` (an experiment
    config; default `train.gan.default_config()` updated with the reference's train / log
    arguments) with the checkpoint's model section and data.resolution = model size."""
    from semgan_jax.train import gan

    if base is None:
        run = gan.default_config()
        _set_fields(run.train, config.get("train", {}), "the stage-1 config's train section")
        _set_fields(run.log, config.get("log", {}), "the stage-1 config's log section")
    else:
        run = base.copy_and_resolve_references()
    _set_fields(run.model, config["model"], "the stage-1 config's model section")
    run.data.resolution = config["model"]["size"]
    return run


def stage2_run_config(config: dict[str, Any], stage1_dir: Path, base=None):
    """The stage-2 run config: `base` (default `train.encoder.default_config()`) with the
    checkpoint's encoder section and stage1 = stage1_dir."""
    from semgan_jax.train import encoder as stage2

    run = stage2.default_config() if base is None else base.copy_and_resolve_references()
    _set_fields(run.encoder, config["encoder"], "the stage-2 config's encoder section")
    run.stage1 = str(Path(stage1_dir).absolute())
    return run


# ---- train states ---------------------------------------------------------------------------

def fresh_data_state(data_cfg, seg_dim: int) -> dict[str, Any]:
    """The iterator positions of a run that has read nothing yet, as `Iterator.get_state()`
    writes them for this config's pipeline (the format depends on num_workers, not the data)."""
    from semgan_jax.data.pipeline import make_labeled_iterator, make_unlabeled_iterator

    source = [{"image": np.zeros((8, 8, 1), np.uint8), "mask": np.zeros((8, 8), np.uint8)}]
    opts = dict(num_workers=data_cfg.num_workers, prefetch=data_cfg.prefetch)
    out = {}
    for name, it in (("unlabeled", make_unlabeled_iterator(source, 1, 0, **opts)),
                     ("labeled", make_labeled_iterator(source, 1, 0, max(seg_dim, 1), **opts))):
        out[name] = it.get_state()
        if hasattr(it, "close"):
            it.close()
    return out


def _check_complete(state, what: str) -> None:
    left = [jax.tree_util.keystr(p) for p, leaf in jax.tree_util.tree_leaves_with_path(
        state, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)) if isinstance(leaf, jax.ShapeDtypeStruct)]
    if left:
        raise ConversionError(f"internal: the converter does not fill {what} fields {', '.join(left[:8])}")


def _check_shapes(tree, abstract, what: str) -> None:
    got = jax.tree.map(lambda a: (tuple(np.shape(a)), jnp.asarray(a).dtype), tree)
    want = jax.tree.map(lambda s: (tuple(s.shape), s.dtype), abstract)
    if got != want:
        raise ConversionError(f"{what}: the converted variables do not fit the network the run config builds")


def gan_state(config: dict[str, Any], variables: dict[str, Any], run, seed: int = 0, step: int = 0):
    """A stage-1 `GANState` holding the converted networks (see the module docstring for the
    parts that are fresh)."""
    from semgan_jax.train import gan, guard

    models = gan.build_models(run.model, run.train.lr, run.train.d_reg_every, run.train.g_reg_every)
    abstract = jax.eval_shape(lambda: gan.init_state(models, jax.random.PRNGKey(0)))
    key = jax.random.PRNGKey(seed)
    g_ema = variables["g_ema"]
    g = variables.get("g", g_ema)
    d_img = variables["d_img"] if "d_img" in variables else networks.init("d_img", config, 2 * seed + 1)
    d_seg = variables["d_seg"] if "d_seg" in variables else networks.init("d_seg", config, 2 * seed + 2)
    as_jax = lambda tree: jax.tree.map(jnp.asarray, tree)  # noqa: E731
    params = {"g": as_jax(g["params"]), "g_ema": as_jax(g_ema["params"]), "d_img": as_jax(d_img["params"]),
              "d_seg": as_jax(d_seg["params"])}
    for name, tree in params.items():
        _check_shapes(tree, getattr(abstract, name), name)
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)  # noqa: E731
    state = abstract.replace(
        step=jnp.asarray(step, abstract.step.dtype), key=key, **params,
        g_noises=as_jax(g_ema["noises"]), d_seg_spectral=as_jax(d_seg["spectral"]),
        g_opt=models.g_tx.init(params["g"]), d_img_opt=models.d_img_tx.init(params["d_img"]),
        d_seg_opt=models.d_seg_tx.init(params["d_seg"]),
        mean_path_length=zeros(abstract.mean_path_length), last_reg=zeros(abstract.last_reg),
        health=guard.init_health())
    _check_shapes(state, abstract, "stage-1 state")
    _check_complete(state, "GANState")
    return state


def encoder_state(s1_run, variables: dict[str, Any], run, seed: int = 0, step: int = 0):
    """A stage-2 `EncoderState` holding the converted encoder (fresh optimiser states)."""
    import optax

    from semgan_jax.train import encoder as stage2
    from semgan_jax.train import guard

    models = stage2.build_models(s1_run.model, run)
    abstract = jax.eval_shape(lambda: stage2.init_state(models, jax.random.PRNGKey(0)))
    e = jax.tree.map(jnp.asarray, variables["e"])
    params, stats = e["params"], e.get("batch_stats", {})
    _check_shapes(params, abstract.params, "e")
    _check_shapes(stats, abstract.batch_stats, "e (batch_stats)")
    slow = (lambda: jax.tree.map(jnp.copy, params)) if models.ranger else (lambda: None)
    s_u, s_l = slow(), slow()
    opt_params = (lambda s: optax.LookaheadParams(fast=params, slow=s)) if models.ranger else (lambda s: params)
    state = abstract.replace(step=jnp.asarray(step, abstract.step.dtype), key=jax.random.PRNGKey(seed),
                             params=params, batch_stats=stats, slow_unlabel=s_u, slow_label=s_l,
                             opt_unlabel=models.tx_unlabel.init(opt_params(s_u)),
                             opt_label=models.tx_label.init(opt_params(s_l)), health=guard.init_health())
    _check_shapes(state, abstract, "stage-2 state")
    _check_complete(state, "EncoderState")
    return state


# ---- directories ----------------------------------------------------------------------------

def _prepare(directory: Path, overwrite: bool) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        if not overwrite:
            raise ConversionError(f"{directory} exists and is not empty (use --overwrite to replace it)")
        shutil.rmtree(directory) if directory.is_dir() else directory.unlink()
    directory.mkdir(parents=True, exist_ok=True)


def _save(directory: Path, run, state, step: int, seg_dim: int) -> None:
    from semgan_jax.checkpoint import Checkpointer

    (directory / "config.json").write_text(run.to_json_best_effort(indent=2))
    ckpt = Checkpointer(directory / "checkpoints", keep=run.log.keep)
    try:
        ckpt.save(step, state, fresh_data_state(run.data, seg_dim))
    finally:
        ckpt.close()


def write_workdir(directory: str | os.PathLike, config: dict[str, Any], variables: dict[str, Any], *,
                  stage1_config=None, encoder_config=None, seed: int = 0, overwrite: bool = False,
                  source_file: str | None = None) -> Path:
    """Write a converted checkpoint as a run directory (module docstring); returns its path.

    stage1_config / encoder_config: experiment ConfigDicts the run directory's config starts from
    (their model / encoder sections are replaced by the checkpoint's); default: the trainers'
    default configs with the reference's arguments.
    """
    directory = Path(directory).absolute()
    _prepare(directory, overwrite)
    seg_dim = config["model"]["seg_dim"]
    record = {k: config[k] for k in ("format", "source", "iteration", "networks", "reference_args") if k in config}
    record["file"] = source_file
    if "e" in variables:
        s1_dir = directory / STAGE1_SUBDIR
        s1_dir.mkdir()
        s1_run = stage1_run_config(config, stage1_config)
        _save(s1_dir, s1_run, gan_state(config, {"g_ema": variables["g_ema"]}, s1_run, seed, 0), 0, seg_dim)
        run = stage2_run_config(config, s1_dir, encoder_config)
        step = config.get("iteration") or 0
        _save(directory, run, encoder_state(s1_run, variables, run, seed, step), step, seg_dim)
        record["stage1"] = STAGE1_SUBDIR
    else:
        run = stage1_run_config(config, stage1_config)
        step = (config.get("iteration") or 0) if config.get("source") != "stylegan2" else 0
        _save(directory, run, gan_state(config, variables, run, seed, step), step, seg_dim)
    record["step"] = step
    (directory / CONVERTED_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return directory


def _restore(directory: Path, init_fn):
    from semgan_jax.checkpoint import restore_latest
    from semgan_jax.parallel import make_mesh, replicated

    try:
        state, _ = restore_latest(directory / "checkpoints", init_fn, replicated(make_mesh(1)))
    except FileNotFoundError as err:
        raise ConversionError(str(err)) from None
    return jax.tree.map(np.asarray, state)


def read_workdir(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, {network: variables}) of the latest checkpoint of a stage-1 (train-gan) or stage-2
    (train-encoder) run directory, converted or trained here; config as `convert_checkpoint`
    returns it (model, train, log[, encoder], networks). NumPy arrays."""
    import ml_collections

    from semgan_jax.train import encoder as stage2
    from semgan_jax.train import gan, seg_branch

    directory = Path(directory).absolute()
    path = directory / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path} not found: expected a train-gan or train-encoder run directory "
                              "(or one written by `semgan convert`)")
    run = ml_collections.ConfigDict(json.loads(path.read_text()))
    if "stage1" in run:
        config, variables = read_workdir(run.stage1)
        models = stage2.build_models(ml_collections.ConfigDict(config["model"]), run)
        state = _restore(directory, lambda: stage2.init_state(models, jax.random.PRNGKey(0)))
        e = stage2.encoder_variables(state.params, state.batch_stats)
        config.update(networks=["g_ema", "e"], encoder={k: run.encoder[k] for k in
                                                        ("backbone", "base_width", "feature_dim", "channel_max")})
        return config, {"g_ema": variables["g_ema"], "e": e}
    if "model" not in run or "d_reg_every" not in run.get("train", {}):
        raise ConversionError(f"{path} is neither a stage-1 nor a stage-2 run config")
    models = gan.build_models(run.model, run.train.lr, run.train.d_reg_every, run.train.g_reg_every)
    layout = seg_branch.latest_layout(directory / "checkpoints")
    state = _restore(directory, lambda: seg_branch.init_state_as(models, jax.random.PRNGKey(0), layout))
    config = {"model": run.model.to_dict(), "train": run.train.to_dict(), "log": run.log.to_dict(),
              "networks": ["g", "g_ema", "d_img", "d_seg"]}
    variables = {"g": {"params": state.g, "noises": state.g_noises},
                 "g_ema": {"params": state.g_ema, "noises": state.g_noises},
                 "d_img": {"params": state.d_img},
                 "d_seg": {"params": state.d_seg, "spectral": state.d_seg_spectral}}
    return config, variables
