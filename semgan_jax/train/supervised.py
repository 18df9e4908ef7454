"""Supervised baseline: a U-Net (models/unet.py) trained on the labeled subset alone, as the
point of comparison for SemanticGAN's semi-supervised segmentation (docs/baseline.md).

Same data as SemanticGAN's labeled stream: `data.labeled_split` limited to `data.num_labeled`
examples picked with `data.label_seed` (datasets.select_labeled: the same subset stage 1 and 2
see), fed by `pipeline.make_labeled_iterator` with stage 1's seed (config.seed + 1), so the
order and the augmentation (random horizontal flips of image and mask together) are those of
SemanticGAN's labeled batches. No other augmentation, no unlabeled data.

One iteration (`train_step`, one jit, state donated, batch split over 'data'):
  loss = lambda_ce · softmax CE(logits, labels) + lambda_dice · (1 − soft Dice), the Dice on
  softmax probabilities with sums over the whole batch, foreground classes averaged (nnU-Net's
  CE + Dice); one AdamW step (weight decay on conv kernels only) with the encoder stage's
  learning-rate shape (constant, then a cosine to lr_min between lr_decay_start and
  lr_decay_end, absolute step numbers so that a resumed run follows the same schedule),
  refused when the loss or a gradient is non-finite (train/guard.py).
Binary datasets use two output classes (background, foreground) and the same softmax loss.

`evaluate(workdir, split)` scores the latest checkpoint on a split with
`metrics.SegmentationMetrics`, giving the same dict as `semgan evaluate` (mIoU, per-class IoU /
Dice, JSI / DSC for two classes). No model selection: the final checkpoint is what is scored
(a validation set would cost labels the label-limited comparison does not have).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from semgan_jax import losses
from semgan_jax.models.unet import UNet
from semgan_jax.train import guard
from semgan_jax.train.state import encoder_lr_schedule


@flax.struct.dataclass
class SupervisedState:
    """Everything the baseline carries between iterations (one pytree, donated)."""
    step: jax.Array             # int32 scalar: iterations done
    key: jax.Array              # PRNGKey, split every step (for stochastic layers; the U-Net has none)
    params: Any                 # U-Net params
    opt_state: Any
    health: Any                 # refused non-finite updates (train/guard.py)


# The optimiser updates of one iteration, in the order of `guard.record`'s bits.
UPDATES = ("U-Net",)


@dataclasses.dataclass(frozen=True)
class SupervisedModels:
    """The network, its optimiser and the input shape, built from a config (static, hashable)."""
    net: UNet
    tx: optax.GradientTransformation
    schedule: Any               # learning rate per update count
    size: int
    channels: int

    @property
    def num_classes(self) -> int:
        return self.net.num_classes


@dataclasses.dataclass(frozen=True)
class SupervisedHParams:
    lambda_ce: float
    lambda_dice: float


def default_config():
    """Baseline config for CelebAMask-HQ at 256 px with the paper's U-Net (base width 64, four
    poolings). Files in experiments/ start from it and change what they need."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(
        name="celebamask_hq", resolution=256,
        data_dir="",                  # "" = TFDS default dir (synthetic: generated in memory)
        labeled_split="train",
        num_labeled=0,                # label-limited subset size, e.g. 30 / 150 / 1500 (0 = all)
        label_seed=0, num_workers=8, prefetch=4))
    c.model = ml_collections.ConfigDict(dict(
        base_width=64, depth=4,       # channels of the first level; number of 2x poolings
        norm="group", norm_groups=32,  # 'group' | 'none' (models/unet.py says why not BatchNorm)
        up="transpose",               # 'transpose' (2x2 up-conv) | 'bilinear' (+ 1x1 conv)
        dtype="float32"))             # compute dtype; "bfloat16" = mixed precision (params f32)
    c.train = ml_collections.ConfigDict(dict(
        iterations=20_000, batch_size=16, lr=1e-3, lr_min=1e-5, lr_decay_start=10_000, lr_decay_end=20_000,
        weight_decay=1e-4,            # AdamW, decoupled (scaled by the lr as torch's AdamW), kernels only
        lambda_ce=1.0, lambda_dice=1.0,
        mesh_data=-1,                 # devices on the 'data' axis (-1 = all)
        on_nonfinite="stop"))         # a non-finite loss/gradient: 'stop' with an error | 'skip' the update
    c.log = ml_collections.ConfigDict(dict(
        log_every=100, viz_every=1000, n_sample=16,
        viz_split="",                 # examples in the sample grids: "" = the labeled subset; else a split
        save_every=2000, keep=3, max_minutes=0.0))
    return c


def build_models(config) -> SupervisedModels:
    """U-Net and AdamW from a config; classes and channels from the dataset's registry entry."""
    from semgan_jax.data.datasets import get_dataset_info

    info = get_dataset_info(config.data.name)
    m, t = config.model, config.train
    net = UNet(num_classes=info.num_classes, base_width=m.base_width, depth=m.depth, norm=m.norm,
               norm_groups=m.norm_groups, up=m.up, dtype=jnp.dtype(m.dtype))
    schedule = encoder_lr_schedule(t.lr, t.lr_min, t.lr_decay_start, t.lr_decay_end)
    tx = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=t.weight_decay,
                     mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params))
    return SupervisedModels(net=net, tx=tx, schedule=schedule, size=config.data.resolution, channels=info.channels)


def hparams_from_config(train_cfg) -> SupervisedHParams:
    return SupervisedHParams(**{f.name: train_cfg[f.name] for f in dataclasses.fields(SupervisedHParams)})


def init_state(models: SupervisedModels, key) -> SupervisedState:
    k_init, k_state = jax.random.split(key)
    params = models.net.init(k_init, jnp.zeros((1, models.size, models.size, models.channels)))["params"]
    return SupervisedState(step=jnp.zeros((), jnp.int32), key=k_state, params=params,
                           opt_state=models.tx.init(params), health=guard.init_health())


def predict(models: SupervisedModels, params, images):
    """U-Net logits (N, H, W, K) float32 for images (N, H, W, C) in [-1, 1]."""
    return models.net.apply({"params": params}, images)


def soft_dice_loss(logits, labels, smooth: float = 1.0):
    """1 − mean over the foreground classes of (2·Σ p·t + s) / (Σ p + Σ t + s), p the softmax
    probabilities (N, H, W, K), t the one-hot labels, sums over the whole batch (batch Dice, as
    nnU-Net; the background class is left out). `losses.dice_loss` is the reference encoder's
    sigmoid-per-channel variant, kept for SemanticGAN; a softmax network takes this one."""
    k = logits.shape[-1]
    p = jax.nn.softmax(logits, axis=-1)
    t = jax.nn.one_hot(labels, k, dtype=p.dtype)
    axes = tuple(range(logits.ndim - 1))
    dice = (2.0 * jnp.sum(p * t, axis=axes) + smooth) / (jnp.sum(p, axis=axes) + jnp.sum(t, axis=axes) + smooth)
    return 1.0 - jnp.mean(dice[1:])


def train_step(models: SupervisedModels, hp: SupervisedHParams, state: SupervisedState, batch: dict):
    """One iteration. batch: 'image' float (B, H, W, C) in [-1, 1], 'mask' int32 (B, H, W)
    class indices. Returns (new state, metrics dict of float32 scalars)."""
    key, _ = jax.random.split(state.key)
    labels = batch["mask"]

    def loss_fn(params):
        logits = predict(models, params, batch["image"])
        ce = losses.softmax_cross_entropy(logits, labels, tau=1.0)
        dice = soft_dice_loss(logits, labels)
        total = hp.lambda_ce * ce + hp.lambda_dice * dice
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return total, {"loss": total, "ce": ce, "dice": dice, "pixel_accuracy": accuracy}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state, ok = guard.apply_updates(models.tx, grads, state.opt_state, state.params, loss)
    health = guard.record(state.health, state.step, (ok,))
    metrics.update(lr=models.schedule(state.step), skipped_updates=health["skipped"])
    new_state = state.replace(step=state.step + 1, key=key, params=params, opt_state=opt_state, health=health)
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def jit_train_step(models: SupervisedModels, hp: SupervisedHParams, mesh):
    """`train_step` under one jit: state replicated and donated, batch split over 'data'."""
    from semgan_jax.parallel import batch_sharding, compiler_options, replicated

    rep, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(lambda state, batch: train_step(models, hp, state, batch), in_shardings=(rep, data),
                   out_shardings=(rep, rep), donate_argnums=(0,), compiler_options=compiler_options(mesh))


# --------------------------------------------------------------------------------------------
# Data, the loop, evaluation
# --------------------------------------------------------------------------------------------

def make_iterator(config, local_batch: int, num_classes: int):
    """Endless labeled grain iterator for this process's shard: the subset, order and flips of
    stage 1's labeled stream (`gan.make_iterators`, seed config.seed + 1)."""
    from semgan_jax.data.datasets import load_split
    from semgan_jax.data.pipeline import make_labeled_iterator

    d = config.data
    labeled = load_split(d.name, d.labeled_split, data_dir=d.data_dir or None, resolution=d.resolution,
                         num_labeled=d.num_labeled or None, label_seed=d.label_seed)
    return make_labeled_iterator(labeled, local_batch, config.seed + 1, num_classes,
                                 shard_index=jax.process_index(), shard_count=jax.process_count(),
                                 num_workers=d.num_workers, prefetch=d.prefetch)


def next_batch(it, mesh) -> dict:
    """One global batch {'image', 'mask'} from the labeled iterator."""
    from semgan_jax.parallel import global_batch

    b = next(it)
    return global_batch({"image": b["image"], "mask": b["mask"]}, mesh)


def _viz_examples(config, num_classes: int) -> dict:
    """The first log.n_sample examples shown in the sample grids (unaugmented, every process)."""
    from semgan_jax.train.encoder import first_labeled_examples

    split = config.log.get("viz_split", "")
    if not split:
        return first_labeled_examples(config.data, num_classes, config.log.n_sample)
    from semgan_jax.data.datasets import load_split
    from semgan_jax.data.pipeline import make_eval_batches

    d = config.data
    source = load_split(d.name, split, data_dir=d.data_dir or None, resolution=d.resolution)
    return next(make_eval_batches(source, config.log.n_sample, num_classes))


def save_grid(path, images, pred, target, palette) -> None:
    """PNG of inputs | predicted masks | true masks (integer maps), four examples per row."""
    from semgan_jax import viz

    cols = [viz.to_uint8(images), viz.colorize(pred, palette), viz.colorize(target, palette)]
    viz.save_png(path, viz.grid(cols, ncol=4), scale=viz.grid_scale(images.shape[1]))


def train(config, workdir: str, resume: bool = True) -> SupervisedState:
    """Train the baseline as configured; resumable from WORKDIR/checkpoints. Returns the final
    state. Writes WORKDIR/config.json, metrics.jsonl, samples/step_XXXXXX.png (inputs | predicted
    masks | true masks of the first log.n_sample examples of the labeled subset, or of
    log.viz_split) and checkpoints every log.save_every steps, at the end, on SIGTERM/SIGINT
    and after log.max_minutes, as the SemanticGAN stages."""
    from semgan_jax import viz
    from semgan_jax.checkpoint import Checkpointer
    from semgan_jax.data.datasets import get_dataset_info
    from semgan_jax.parallel import check_batch_size, make_mesh, replicated
    from semgan_jax.train import loop
    from semgan_jax.train.observe import MetricsLogger, write_config

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(config.train.mesh_data)
    local_batch = check_batch_size(config.train.batch_size, mesh)
    models = build_models(config)
    hp = hparams_from_config(config.train)
    write_config(workdir, config)

    state = jax.jit(lambda k: init_state(models, k), out_shardings=replicated(mesh))(jax.random.PRNGKey(config.seed))
    it = make_iterator(config, local_batch, models.num_classes)
    iterators = {"labeled": it}
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.log.keep)
    if resume:
        state = loop.restore_latest(ckpt, state, iterators)

    palette = get_dataset_info(config.data.name).palette
    shown = _viz_examples(config, models.num_classes)
    shown_images = jax.device_put(shown["image"], replicated(mesh))
    predict_fn = jax.jit(lambda p, x: predict(models, p, x))

    def write_samples(state, step):  # every process computes (one program), process 0 writes
        logits = jax.device_get(predict_fn(state.params, shown_images))
        if jax.process_index() == 0:
            save_grid(workdir / "samples" / f"step_{step:06d}.png", shown["image"], viz.seg_to_labels(logits),
                      shown["mask"], palette)

    logger = MetricsLogger(workdir, int(state.step), config.train.iterations, config.train.batch_size,
                           show=("loss", "pixel_accuracy"))
    return loop.run(state, jit_train_step(models, hp, mesh), lambda: next_batch(it, mesh),
                    total=config.train.iterations, log_cfg=config.log, ckpt=ckpt, iterators=iterators,
                    logger=logger, write_samples=write_samples, updates=UPDATES,
                    on_nonfinite=config.train.get("on_nonfinite", "stop"))


def load_run(workdir: str | Path, mesh=None):
    """(config, models, state) of a train-supervised run directory, from its config.json and
    latest checkpoint."""
    import json

    import ml_collections

    from semgan_jax import parallel
    from semgan_jax.checkpoint import restore_latest

    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --workdir must name a train-supervised run directory")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    if "base_width" not in config.get("model", {}):
        raise ValueError(f"{path} is not a train-supervised config")
    models = build_models(config)
    mesh = mesh or parallel.make_mesh(1)
    state, _ = restore_latest(Path(workdir) / "checkpoints", lambda: init_state(models, jax.random.PRNGKey(0)),
                              parallel.replicated(mesh), "train-supervised checkpoint")
    return config, models, state


def evaluate(workdir: str | Path, split: str = "test", *, limit: int = 0, batch_size: int = 32,
             data_dir: str | None = None, grid: int = 0, grid_path: str | Path | None = None,
             verbose: bool = True) -> dict:
    """Score the latest checkpoint of a train-supervised run on `split` of its dataset (e.g.
    'test', 'test_ood'): `SegmentationMetrics(...).result()` (the dict `semgan evaluate` writes:
    dataset-level and per-image IoU / Dice, mIoU, pixel accuracy, JSI / DSC for binary tasks)
    plus source, checkpoint, step, num_labeled, seconds and images_per_s. `limit`: only the
    first N examples (0 = all). `grid` > 0 with `grid_path`: a PNG of inputs | predictions |
    ground truth for the first `grid` examples. Prints the table unless verbose=False."""
    import io

    from semgan_jax.data.datasets import get_dataset_info, load_split
    from semgan_jax.data.pipeline import make_eval_batches
    from semgan_jax.metrics import SegmentationMetrics, report

    config, models, state = load_run(workdir)
    d = config.data
    info = get_dataset_info(d.name)
    source = load_split(d.name, split, data_dir=data_dir or d.data_dir or None, resolution=d.resolution)
    metrics = SegmentationMetrics(info.num_classes, info.class_names)
    run = jax.jit(lambda p, x: jnp.argmax(predict(models, p, x), axis=-1).astype(jnp.int32))
    shown, done, t0 = [], 0, time.perf_counter()
    for batch in make_eval_batches(source, batch_size, info.num_classes):
        images, masks = batch["image"], batch["mask"]
        if limit:
            images, masks = images[:limit - done], masks[:limit - done]
        n = len(images)
        pad = np.zeros((batch_size - n, *images.shape[1:]), images.dtype)  # one compiled shape
        pred = np.asarray(run(state.params, np.concatenate([images, pad])))[:n]
        metrics.update(pred, masks)
        if sum(len(s[0]) for s in shown) < grid:
            shown.append((images, pred, masks))
        done += n
        if limit and done >= limit:
            break
    dt = time.perf_counter() - t0
    where = f"{d.name}/{split}"
    result = report(metrics, title=f"{where}: {metrics.num_images} images (U-Net, step {int(state.step)})",
                    file=None if verbose else io.StringIO())
    result.update(source=where, checkpoint=str(workdir), step=int(state.step), num_labeled=int(d.num_labeled),
                  seconds=dt, images_per_s=metrics.num_images / max(dt, 1e-9))
    if grid and grid_path and shown:
        images, pred, masks = (np.concatenate([s[k] for s in shown])[:grid] for k in range(3))
        save_grid(grid_path, images, pred, masks, info.palette)
    return result
