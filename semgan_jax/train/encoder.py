"""Stage 2: train the encoder E(x) -> w+ against the frozen stage-1 generator (G_ema), as the
official `train_enc.py`.

One iteration (`train_step`, one jit, state donated; G and LPIPS weights are a separate,
non-donated `frozen` argument):
  1. unlabeled update: w+ = E(x), x' = G(w+) (fresh noise), loss = λ_mse·MSE(x', x) +
     λ_lpips·LPIPS(x', x); clip the gradient norm to `unlabel_grad_clip`; step the unlabeled
     optimiser.
  2. labeled update with the new weights: (x', y') = G(E(x_l)), loss = the same reconstruction
     terms + λ_ce·CE(y', y) + λ_dice·Dice(y', y) (softmax CE with tau 0.1 and Dice without the
     background for multi-class masks; soft BCE with tau 0.3 and Dice with it for one channel);
     clip to `label_grad_clip`; step the labeled optimiser.
Both optimisers (Ranger by default, each with the reference's cosine lr window) act on the same
encoder weights and keep their own moments and Lookahead slow weights; the labeled optimiser's
slow weights start from the weights at its first step, as Ranger's lazily created buffer does.
The FPN encoder runs in train mode (BatchNorm batch statistics, running averages updated by
both forwards). `train.bn_eval_after_first` reproduces the reference instead, whose sample pass
at iteration 0 leaves the encoder in eval mode for the rest of the run (docs/architecture.md):
from the second iteration on BatchNorm normalises with its running statistics, which then stay.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from semgan_jax import losses
from semgan_jax.models.encoder import FPNEncoder, ResEncoder
from semgan_jax.models.generator import Generator
from semgan_jax.train import guard
from semgan_jax.train.state import encoder_optimizer


@flax.struct.dataclass
class EncoderState:
    """Everything stage 2 carries between iterations (one pytree, donated)."""
    step: jax.Array
    key: jax.Array
    params: Any                 # encoder params
    batch_stats: Any            # FPN BatchNorm running statistics ({} for the Res encoder)
    slow_unlabel: Any           # Lookahead slow weights of each optimiser (None with Adam)
    slow_label: Any
    opt_unlabel: Any
    opt_label: Any
    health: Any                 # refused non-finite updates (train/guard.py)


# The optimiser updates of one iteration, in the order of `guard.record`'s bits.
UPDATES = ("E (unlabeled)", "E (labeled)")


@dataclasses.dataclass(frozen=True)
class EncoderModels:
    g: Generator
    e: Any                      # FPNEncoder | ResEncoder
    lpips: Any                  # perceptual.lpips.LPIPS, or None when both LPIPS weights are 0
    tx_unlabel: optax.GradientTransformation
    tx_label: optax.GradientTransformation
    ranger: bool


@dataclasses.dataclass(frozen=True)
class EncoderHParams:
    lambda_unlabel_mse: float
    lambda_unlabel_lpips: float
    lambda_label_mse: float
    lambda_label_lpips: float
    lambda_label_ce: float
    lambda_label_dice: float
    bn_eval_after_first: bool = False   # the reference's eval-mode BatchNorm from iteration 1 on


def default_config():
    """Stage-2 config with the official `train_enc.py` defaults; `stage1` names the stage-1
    run directory whose config.json and latest checkpoint give G (its EMA weights)."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stage1 = ""                   # stage-1 workdir (holds config.json and checkpoints/)
    c.data = ml_collections.ConfigDict(dict(
        unlabeled_split="unlabeled", labeled_split="train", num_labeled=0, label_seed=0,
        seg_aug=False,              # the reference's --seg_aug of train_enc.py (stage 1's is its own)
        num_workers=8, prefetch=4,
        data_dir=""))               # "" = stage 1's; dataset name and resolution come from stage 1
    c.encoder = ml_collections.ConfigDict(dict(
        backbone="fpn",             # 'fpn' (pSp FPN, reference default) | 'res'
        base_width=64, feature_dim=512,              # FPN widths (reference: 64, 512)
        num_blocks=(3, 4, 6, 3),                     # FPN bottlenecks per stage (reference: ResNet-50's)
        channel_max=512,                             # Res encoder width cap
        # pSp's option (not in the reference): E outputs offsets from G_ema's mean w (10,000 z)
        start_from_latent_avg=False))
    c.train = ml_collections.ConfigDict(dict(
        iterations=800_000, batch_size=16, optimizer="ranger", lr=0.001, lr_min=1e-5,
        lr_decay_start=30_000, lr_decay_end=100_000,
        unlabel_grad_clip=2.0, label_grad_clip=5.0,  # 0 = no clipping (--no_grad_clip)
        lambda_unlabel_mse=1.0, lambda_unlabel_lpips=10.0, lambda_label_mse=1.0, lambda_label_lpips=10.0,
        lambda_label_ce=1.0, lambda_label_dice=1.0, mesh_data=-1,
        # True: BatchNorm in eval mode (running statistics, frozen) from the second iteration on, as
        # train_enc.py runs (its iteration-0 sample pass calls encoder.eval() and nothing calls
        # train() again); False: batch statistics throughout, as its code reads (docs/architecture.md)
        bn_eval_after_first=False,
        on_nonfinite="stop"))       # a non-finite loss/gradient: 'stop' with an error | 'skip' the update
    c.lpips = ml_collections.ConfigDict(dict(
        net="vgg",                  # the reference's PerceptualLoss(net='vgg'); 'alex'; or 'dr': the stage-1
                                    # run's own Dr as the feature net (perceptual/dr_distance.py)
        backbone="", heads=""))     # weight files ('' = the default location, docs/metrics.md)
    c.log = ml_collections.ConfigDict(dict(
        log_every=100, viz_every=100, n_sample=16, save_every=2000, keep=5, max_minutes=0.0))
    return c


def build_encoder(gan_model_cfg, enc_cfg):
    """E for a generator of `gan_model_cfg` (size, n_latent, style_dim, image channels)."""
    g_size, style_dim = gan_model_cfg.size, gan_model_cfg.style_dim
    n_latent = 2 * (g_size.bit_length() - 1) - 2
    from_avg = bool(enc_cfg.get("start_from_latent_avg", False))  # absent in configs written before it
    if enc_cfg.backbone == "fpn":
        return FPNEncoder(size=g_size, n_latent=n_latent, style_dim=style_dim, feature_dim=enc_cfg.feature_dim,
                          base_width=enc_cfg.base_width,
                          num_blocks=tuple(enc_cfg.get("num_blocks", FPNEncoder.num_blocks)),  # absent before it
                          start_from_latent_avg=from_avg)
    if enc_cfg.backbone == "res":
        return ResEncoder(size=g_size, n_latent=n_latent, style_dim=style_dim,
                          channel_multiplier=gan_model_cfg.channel_multiplier, channel_max=enc_cfg.channel_max,
                          start_from_latent_avg=from_avg)
    raise ValueError(f"encoder.backbone must be 'fpn' or 'res', got {enc_cfg.backbone!r}")


def build_models(gan_model_cfg, config, lpips_module=None) -> EncoderModels:
    from semgan_jax.train.gan import build_models as build_gan

    g = build_gan(gan_model_cfg, 0.0, 1, 1).g
    t = config.train
    kw = dict(lr=t.lr, lr_min=t.lr_min, decay_start=t.lr_decay_start, decay_end=t.lr_decay_end,
              optimizer=t.optimizer)
    return EncoderModels(g=g, e=build_encoder(gan_model_cfg, config.encoder), lpips=lpips_module,
                         tx_unlabel=encoder_optimizer(grad_clip=t.unlabel_grad_clip or None, **kw),
                         tx_label=encoder_optimizer(grad_clip=t.label_grad_clip or None, **kw),
                         ranger=t.optimizer == "ranger")


def hparams_from_config(train_cfg) -> EncoderHParams:
    """EncoderHParams from the config's train section (fields with a default may be absent, as in
    the configs of runs written before they existed)."""
    return EncoderHParams(**{f.name: train_cfg[f.name] if f.default is dataclasses.MISSING
                             else train_cfg.get(f.name, f.default) for f in dataclasses.fields(EncoderHParams)})


def _opt_params(models, params, slow):
    return optax.LookaheadParams(fast=params, slow=slow) if models.ranger else params


N_LATENT_AVG = 10_000  # z samples behind E's latent_avg (as infer's mean-latent start)


def latent_avg(models: EncoderModels, g_params, key):
    """G's mean w over N_LATENT_AVG random z: (style_dim,)."""
    return models.g.apply({"params": g_params}, key, N_LATENT_AVG, method=type(models.g).mean_latent)[0]


def init_state(models: EncoderModels, key, g_params=None) -> EncoderState:
    """Fresh stage-2 state. With `start_from_latent_avg` E's `latent_avg` is G's mean w from
    `g_params` (G_ema's parameters); without them it stays zero (a template to restore into)."""
    k_init, k_state = jax.random.split(key)
    size, channels = models.g.size, models.g.image_channels
    variables = models.e.init(k_init, jnp.zeros((1, size, size, channels)), train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    if "latent_avg" in params and g_params is not None:
        params = {**params, "latent_avg": latent_avg(models, g_params, jax.random.fold_in(key, 0xA5))}
    slow = (lambda: jax.tree.map(jnp.copy, params)) if models.ranger else (lambda: None)
    s_u, s_l = slow(), slow()
    return EncoderState(step=jnp.zeros((), jnp.int32), key=k_state, params=params, batch_stats=stats,
                        slow_unlabel=s_u, slow_label=s_l,
                        opt_unlabel=models.tx_unlabel.init(_opt_params(models, params, s_u)),
                        opt_label=models.tx_label.init(_opt_params(models, params, s_l)), health=guard.init_health())


def encoder_variables(params, batch_stats) -> dict:
    """E's Flax variables: params, plus batch_stats for the FPN encoder ({} for the Res one)."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def encode(models: EncoderModels, params, batch_stats, x, train: bool):
    """E(x): (w+ (N, n_latent, style_dim), updated batch_stats). train=True uses batch statistics."""
    variables = encoder_variables(params, batch_stats)
    if train and batch_stats:
        w, new = models.e.apply(variables, x, train=True, mutable=["batch_stats"])
        return w, new["batch_stats"]
    return models.e.apply(variables, x, train=False), batch_stats


def reconstruct(models: EncoderModels, g_params, w_plus, key, noise=None):
    """G(w+) with fresh noise drawn from `key` (or the given per-layer maps): (image, seg logits)."""
    if noise is not None:
        return models.g.apply({"params": g_params}, w_plus, input_is_latent=True, noise=noise)
    return models.g.apply({"params": g_params}, w_plus, input_is_latent=True, rngs={"noise": key})


def perceptual(models: EncoderModels, lpips_params, x0, x1):
    """Mean LPIPS distance over the batch (0 when LPIPS is off)."""
    if models.lpips is None:
        return jnp.zeros((), jnp.float32)
    return jnp.mean(models.lpips.apply({"params": lpips_params}, x0, x1))


def segmentation_losses(seg_logits, mask_onehot):
    """(CE, Dice) of the labeled update; mask_onehot (N, H, W, C) in [-1, 1] as fed to Dm."""
    target = (mask_onehot + 1.0) / 2.0
    if seg_logits.shape[-1] == 1:
        return (losses.soft_binary_cross_entropy(seg_logits, target, tau=0.3),
                losses.dice_loss(seg_logits, target, sigmoid_tau=0.3, include_bg=True))
    labels = jnp.argmax(mask_onehot, axis=-1)
    return (losses.softmax_cross_entropy(seg_logits, labels, tau=0.1),
            losses.dice_loss(seg_logits, target, sigmoid_tau=0.3))


def _update(models, tx, grads, opt_state, params, slow, loss):
    """(params, slow weights, opt_state, ok): one optimiser step, refused when non-finite."""
    new, opt_state, ok = guard.apply_updates(tx, grads, opt_state, _opt_params(models, params, slow), loss)
    return (new.fast, new.slow, opt_state, ok) if models.ranger else (new, slow, opt_state, ok)


def train_step(models: EncoderModels, hp: EncoderHParams, state: EncoderState, frozen: dict, batch: dict,
               draws=None, pin=None):
    """One stage-2 iteration. frozen: {'g': G_ema params, 'lpips': LPIPS params or None}.
    batch: 'image' (B, H, W, C) unlabeled; 'seg_image' (B, H, W, C) and 'seg_mask'
    (B, H, W, seg_dim) one-hot in [-1, 1]. Returns (new state, metrics).

    For tests against the reference (tests/test_training_parity.py; None in production, where
    the program is the same as without them):
    draws: recorded random draws replacing the key's, {'unlabel' | 'label': {'noise': G's
        per-layer noise maps}};
    pin: f(update, values) -> values, called after each update (UPDATES names) with (params,
        batch_stats, slow weights of that optimiser, its state, the unclipped gradient); the
        iteration continues from what it returns (the gradient returned is ignored)."""
    key, k_u, k_l = jax.random.split(state.key, 3)

    def _pin(update, *values):
        return values[:4] if pin is None else tuple(pin(update, values))[:4]

    def noise(phase):
        return None if draws is None else draws[phase]["noise"]

    def encode_train(params, stats, x):
        """E(x) in train mode, or (bn_eval_after_first, after the first iteration) in eval mode."""
        if not hp.bn_eval_after_first:
            return encode(models, params, stats, x, train=True)
        return jax.lax.cond(state.step == 0, lambda: encode(models, params, stats, x, train=True),
                            lambda: encode(models, params, stats, x, train=False))

    def unlabel_loss(params, stats):
        w, stats = encode_train(params, stats, batch["image"])
        fake_img, _ = reconstruct(models, frozen["g"], w, k_u, noise("unlabel"))
        mse = jnp.mean(jnp.square(fake_img - batch["image"]))
        lp = perceptual(models, frozen["lpips"], fake_img, batch["image"])
        total = hp.lambda_unlabel_mse * mse + hp.lambda_unlabel_lpips * lp
        return total, (stats, {"e_unlabel_mse": mse, "e_unlabel_lpips": lp, "e_unlabel_loss": total})

    (loss, (stats, m_u)), grads = jax.value_and_grad(unlabel_loss, has_aux=True)(state.params, state.batch_stats)
    params, slow_u, opt_u, ok_u = _update(models, models.tx_unlabel, grads, state.opt_unlabel, state.params,
                                          state.slow_unlabel, loss)
    stats = guard.keep_if(ok_u, stats, state.batch_stats)
    params, stats, slow_u, opt_u = _pin(UPDATES[0], params, stats, slow_u, opt_u, grads)

    # Ranger creates the labeled optimiser's slow buffer at its first step, from the weights then
    slow_l = state.slow_label
    if models.ranger:
        first = state.step == 0
        slow_l = jax.tree.map(lambda p, s: jnp.where(first, p, s), params, slow_l)

    def label_loss(params, stats):
        w, stats = encode_train(params, stats, batch["seg_image"])
        fake_img, fake_seg = reconstruct(models, frozen["g"], w, k_l, noise("label"))
        ce, dice = segmentation_losses(fake_seg.astype(jnp.float32), batch["seg_mask"])
        mse = jnp.mean(jnp.square(fake_img - batch["seg_image"]))
        lp = perceptual(models, frozen["lpips"], fake_img, batch["seg_image"])
        total = (hp.lambda_label_ce * ce + hp.lambda_label_dice * dice + hp.lambda_label_mse * mse
                 + hp.lambda_label_lpips * lp)
        return total, (stats, {"e_label_ce": ce, "e_label_dice": dice, "e_label_mse": mse, "e_label_lpips": lp,
                               "e_label_loss": total})

    (loss, (new_stats, m_l)), grads = jax.value_and_grad(label_loss, has_aux=True)(params, stats)
    params, slow_l, opt_l, ok_l = _update(models, models.tx_label, grads, state.opt_label, params, slow_l, loss)
    stats = guard.keep_if(ok_l, new_stats, stats)
    params, stats, slow_l, opt_l = _pin(UPDATES[1], params, stats, slow_l, opt_l, grads)

    health = guard.record(state.health, state.step, (ok_u, ok_l))
    new_state = state.replace(step=state.step + 1, key=key, params=params, batch_stats=stats, slow_unlabel=slow_u,
                              slow_label=slow_l, opt_unlabel=opt_u, opt_label=opt_l, health=health)
    metrics = {**m_u, **m_l, "skipped_updates": health["skipped"]}
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def jit_train_step(models: EncoderModels, hp: EncoderHParams, mesh):
    """`train_step` under one jit: state and frozen weights replicated (state donated), batch
    split over 'data'. Returns step(state, batch, frozen)."""
    from semgan_jax.parallel import batch_sharding, compiler_options, replicated

    rep, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(lambda state, batch, frozen: train_step(models, hp, state, frozen, batch),
                   in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=(0,),
                   compiler_options=compiler_options(mesh))


def programs(gan_model_cfg, config, lpips_module, mesh) -> tuple:
    """(models, init(key, g_params) -> state, step(state, batch, frozen)) of a stage-2 run, jitted
    (init's state replicated). Made once per process for the same networks, perceptual module,
    optimisers, losses and mesh (`train.iterations` aside), as gan.programs."""
    train = {k: v for k, v in config.train.to_dict().items() if k != "iterations"}
    return _programs(gan_model_cfg.to_json(sort_keys=True), config.encoder.to_json(sort_keys=True),
                     json.dumps(train, sort_keys=True), lpips_module, mesh)


@functools.lru_cache(maxsize=4)
def _programs(gan_model_json: str, encoder_json: str, train_json: str, lpips_module, mesh) -> tuple:
    import ml_collections

    from semgan_jax.parallel import replicated

    config = ml_collections.ConfigDict({"encoder": json.loads(encoder_json), "train": json.loads(train_json)})
    models = build_models(ml_collections.ConfigDict(json.loads(gan_model_json)), config, lpips_module)
    init = jax.jit(lambda k, g: init_state(models, k, g), out_shardings=replicated(mesh))
    return models, init, jit_train_step(models, hparams_from_config(config.train), mesh)


# --------------------------------------------------------------------------------------------
# Reading the stage-1 run, and the loop
# --------------------------------------------------------------------------------------------

def load_stage1_config(stage1_dir: str | Path):
    """The stage-1 run's config (WORKDIR/config.json) as a ConfigDict."""
    import json

    import ml_collections

    path = Path(stage1_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `stage1` must name a stage-1 workdir (semgan train-gan)")
    cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
    if "model" not in cfg or "d_reg_every" not in cfg.get("train", {}):
        raise ValueError(f"{path} is not a stage-1 (train-gan) config")
    return cfg


def load_stage1(stage1_dir: str | Path, mesh=None):
    """(stage-1 config, GANModels, state) of the latest checkpoint of a stage-1 run (either mode)."""
    from semgan_jax import parallel
    from semgan_jax.checkpoint import restore_latest
    from semgan_jax.train import gan, seg_branch

    cfg = load_stage1_config(stage1_dir)
    gm = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    mesh = mesh or parallel.make_mesh(1)
    layout = seg_branch.latest_layout(Path(stage1_dir) / "checkpoints")
    state, _ = restore_latest(Path(stage1_dir) / "checkpoints",
                              lambda: seg_branch.init_state_as(gm, jax.random.PRNGKey(0), layout),
                              parallel.replicated(mesh), "stage-1 checkpoint")
    return cfg, gm, state


def load_generator(stage1_dir: str | Path, mesh=None):
    """(stage-1 config, G module, G_ema params, fixed noises) from the latest stage-1 checkpoint."""
    cfg, gm, state = load_stage1(stage1_dir, mesh)
    return cfg, gm.g, state.g_ema, state.g_noises


def load_perceptual(lpips_cfg, stage1_models, stage1_state):
    """(module, params) of the perceptual distance `lpips_cfg.net` names: 'dr' is the stage-1 run's
    own Dr (perceptual/dr_distance.py: no weight files, no labels); 'vgg' / 'alex' are LPIPS, whose
    missing weight files raise WeightsNotFoundError saying what to download and where."""
    if lpips_cfg.net == "dr":
        from semgan_jax.perceptual.dr_distance import DrDistance, variables_for

        return DrDistance(stage1_models.d_img), variables_for(stage1_state.d_img)
    from semgan_jax.perceptual.convert import load_lpips

    module, variables = load_lpips(lpips_cfg.net, lpips_cfg.backbone or None, lpips_cfg.heads or None)
    return module, variables["params"]


def first_labeled_examples(data_cfg, seg_dim: int, n: int) -> dict:
    """The first `n` examples of the labeled split (subset as configured), unaugmented and the
    same in every process: {'image' (n, H, W, C) in [-1, 1], 'mask' (n, H, W), ...}."""
    from semgan_jax.data.datasets import load_split
    from semgan_jax.data.pipeline import make_eval_batches

    labeled = load_split(data_cfg.name, data_cfg.labeled_split, data_dir=data_cfg.data_dir or None,
                         resolution=data_cfg.resolution, num_labeled=data_cfg.num_labeled or None,
                         label_seed=data_cfg.label_seed)
    return next(make_eval_batches(labeled, n, seg_dim))


def train(config, workdir: str, resume: bool = True) -> EncoderState:
    """Run stage 2 as configured; resumable from WORKDIR/checkpoints. Writes config.json,
    metrics.jsonl, samples/step_XXXXXX.png (labeled inputs | reconstructions | predicted
    masks | true masks) and checkpoints, as stage 1."""
    import ml_collections
    import numpy as np

    from semgan_jax import viz
    from semgan_jax.checkpoint import Checkpointer
    from semgan_jax.data.datasets import get_dataset_info
    from semgan_jax.parallel import check_batch_size, make_mesh, replicated
    from semgan_jax.train import gan, loop
    from semgan_jax.train.observe import MetricsLogger, write_config

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(config.train.mesh_data)
    s1, gm, s1_state = load_stage1(config.stage1, mesh)
    g_ema, g_noises = s1_state.g_ema, s1_state.g_noises
    lpips_module, lpips_params = None, None
    if config.train.lambda_unlabel_lpips or config.train.lambda_label_lpips:
        lpips_module, lpips_params = load_perceptual(config.lpips, gm, s1_state)
    models, init, step = programs(s1.model, config, lpips_module, mesh)
    local_batch = check_batch_size(config.train.batch_size, mesh)
    write_config(workdir, config)

    frozen = jax.device_put({"g": g_ema, "lpips": lpips_params}, replicated(mesh))
    state = init(jax.random.PRNGKey(config.seed), frozen["g"])
    data_cfg = s1.data.copy_and_resolve_references()
    data_cfg.update({k: v for k, v in config.data.items() if k != "data_dir" or v})
    feed = ml_collections.ConfigDict(dict(data=data_cfg, seed=config.seed, model=s1.model))
    it_u, it_l = gan.make_iterators(feed, local_batch)
    iterators = {"unlabeled": it_u, "labeled": it_l}
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.log.keep)
    if resume:
        state = loop.restore_latest(ckpt, state, iterators)

    palette = get_dataset_info(data_cfg.name).palette
    viz_batch = first_labeled_examples(data_cfg, s1.model.seg_dim, config.log.n_sample)
    viz_images = jax.device_put(viz_batch["image"], replicated(mesh))

    @jax.jit
    def predict(state, frozen, noises, x):
        w, _ = encode(models, state.params, state.batch_stats, x, train=False)
        return models.g.apply({"params": frozen["g"], "noises": noises}, w, input_is_latent=True,
                              randomize_noise=False)

    def write_samples(state, step):  # every process computes (one program), process 0 writes
        img, seg = jax.device_get(predict(state, frozen, g_noises, viz_images))
        if jax.process_index() == 0:
            cols = [viz.to_uint8(viz_batch["image"]), viz.to_uint8(img), viz.colorize(viz.seg_to_labels(seg), palette),
                    viz.colorize(np.asarray(viz_batch["mask"]), palette)]
            viz.save_png(workdir / "samples" / f"step_{step:06d}.png", viz.grid(cols, ncol=2),
                         scale=viz.grid_scale(img.shape[1]))

    logger = MetricsLogger(workdir, int(state.step), config.train.iterations, config.train.batch_size,
                           show=("e_unlabel_loss", "e_label_loss"))
    return loop.run(state, step, lambda: gan.next_batch(it_u, it_l, mesh),
                    total=config.train.iterations, log_cfg=config.log, ckpt=ckpt, iterators=iterators,
                    logger=logger, write_samples=write_samples, updates=UPDATES,
                    on_nonfinite=config.train.get("on_nonfinite", "stop"), consts=(frozen,))
