"""Stage 1: semi-supervised GAN training of G, Dr and Dm, as the official `train_seg_gan.py`.

One iteration (`train_step`, a single jitted function of (state, batch)):
  1. Dr update: non-saturating logistic loss on real images vs G(z) (fresh z, style mixing).
  2. Dm update: hinge loss on its scales' final maps, (fake image, fake seg logits) vs labeled
     (image, one-hot mask in [-1, 1]), averaged / 2 (fresh z).
  3. Every d_reg_every iterations: R1 on Dr (real images) and on Dm (real image+mask), each
     weighted r1 / 2 * d_reg_every, each its own optimiser step. (The official loop's R1 never
     reaches Dr, whose requires_grad it leaves off; `train.r1_img_zero_grad` reproduces that.)
  4. G update (fresh z): non-saturating loss from Dr + hinge "real" loss from Dm + Dm feature
     matching (L1, lambda_dseg_feat, 1/3 per scale); the image given to Dm is DETACHED, so
     Dm's losses reach G only through the seg branch.
  5. Every g_reg_every iterations: path-length regulariser on batch // path_batch_shrink,
     weighted path_regularize * g_reg_every, its own optimiser step.
  6. EMA of G's parameters with decay 0.5 ** (32 / 10000) (or StyleGAN2-ADA's ramp-up:
     `train.ema_rampup`, off in the reference configs).
Every optimiser update is refused when its loss or a gradient is non-finite (train/guard.py);
`state.health` records which, and the loop stops or skips as `train.on_nonfinite` says.
Whether an iteration regularises is static (`d_reg`, `g_reg`, decided on the host from the step
counter, as the reference does): the loop runs one of at most four compiled variants, each one
jit. (A `lax.cond` on the step would keep one program, but XLA:CPU runs a conditional branch
holding convolutions up to ~90x slower than the same code outside one.) R1 and path length run
the networks' clones in `models` (`d_img_r1`, `d_seg_r1`, `g_path`: same parameters and numbers,
convs in the form `model.reg_conv_form` picks). Dm's spectral-norm vectors are threaded through
every train-mode call in the reference's order (Dm step: fake, real; R1: real; G step: fake, real).

Batch statistics that the reference computes per GPU (minibatch-stddev groups, the path-length
running mean) are defined here on the global batch, so N devices compute exactly what one
device computes on the same global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from semgan_jax import losses
from semgan_jax.models.discriminator import ImageDiscriminator, MaskDiscriminator
from semgan_jax.models.generator import Generator, init_generator
from semgan_jax.train import augment, guard
from semgan_jax.train.state import ema_decay_at, ema_update, lazy_adam


@flax.struct.dataclass
class GANState:
    """Everything stage 1 carries from one iteration to the next (one pytree, donated)."""
    step: jax.Array                 # int32 scalar: iterations done
    key: jax.Array                  # PRNGKey (uint32[2])
    g: Any                          # generator params
    g_ema: Any                      # EMA generator params
    g_noises: Any                   # generator's fixed noise maps (for randomize_noise=False)
    d_img: Any                      # Dr params
    d_seg: Any                      # Dm params
    d_seg_spectral: Any             # Dm spectral-norm u, v
    g_opt: Any
    d_img_opt: Any
    d_seg_opt: Any
    mean_path_length: jax.Array     # float32 scalar
    last_reg: Any                   # last values of the lazy regularisers (logged every step)
    health: Any                     # refused non-finite updates (train/guard.py)


# The optimiser updates of one iteration, in the order of `guard.record`'s bits.
UPDATES = ("Dr", "Dm", "Dr R1", "Dm R1", "G", "G path length")


@dataclasses.dataclass(frozen=True)
class GANModels:
    """The networks and optimisers of stage 1, built from a config (static, hashable)."""
    g: Generator
    d_img: ImageDiscriminator
    d_seg: MaskDiscriminator
    g_tx: optax.GradientTransformation
    d_img_tx: optax.GradientTransformation
    d_seg_tx: optax.GradientTransformation
    # Dr and Dm as R1 runs them, G as path length runs it: the same params and numbers, with the
    # convs in the form `model.reg_conv_form` picks
    d_img_r1: ImageDiscriminator
    d_seg_r1: MaskDiscriminator
    g_path: Generator


@dataclasses.dataclass(frozen=True)
class GANHParams:
    """Loss weights and schedules of one stage-1 run (the config's `train` section)."""
    batch_size: int
    r1: float
    path_regularize: float
    path_batch_shrink: int
    d_reg_every: int
    g_reg_every: int
    mixing: float
    lambda_dseg_feat: float
    ema_decay: float
    g_reg_offset: int = 0
    ema_rampup: float = 0.0
    r1_img_zero_grad: bool = False
    augment_dr: str = ""
    augment_dm: str = ""
    r1_dr: float = -1.0
    fake_mask: str = "raw"
    dm_mismatch: float = 0.0

    @property
    def r1_weights(self) -> tuple[float, float]:
        """(Dr's, Dm's) R1 weight: train.r1 for both (the reference) unless train.r1_dr >= 0."""
        return (self.r1 if self.r1_dr < 0 else self.r1_dr), self.r1

    def __post_init__(self):
        augment.parse_policy(self.augment_dr)
        augment.parse_policy(self.augment_dm)
        if self.fake_mask not in FAKE_MASKS:
            raise ValueError(f"train.fake_mask must be one of {FAKE_MASKS}, got {self.fake_mask!r}")
        if not 0 <= self.g_reg_offset < self.g_reg_every:
            raise ValueError(f"train.g_reg_offset must be in [0, g_reg_every={self.g_reg_every}), "
                             f"got {self.g_reg_offset}")


def default_config():
    """Stage-1 config with the official `train_seg_gan.py` defaults (CelebAMask-HQ at 256 px,
    full-width networks). Files in experiments/ start from it and change what they need."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(
        name="celebamask_hq", resolution=256,
        data_dir="",                  # "" = TFDS default dir (synthetic: generated in memory)
        unlabeled_split="unlabeled", labeled_split="train",
        num_labeled=0,                # label-limited subset size, e.g. 30 / 150 / 1500 (0 = all)
        label_seed=0,
        seg_aug=False,                # the reference's --seg_aug: labeled pairs also shifted / scaled / rotated
        num_workers=8, prefetch=4))
    c.model = ml_collections.ConfigDict(dict(
        size=256, style_dim=512, n_mlp=8,
        seg_dim=8,                    # = number of classes of the dataset (1 for binary masks)
        image_channels=3, channel_multiplier=2,
        channel_base=0,               # 0 = the reference channel table; else stylegan2-ada's base
        channel_max=512, lr_mlp=0.01, modconv_impl="input_scaling",
        dm_ndf=64, dm_n_layers=3, dm_num_d=3, dm_max_channels=512,
        dtype="float32",              # compute dtype; "bfloat16" = mixed precision (params f32)
        reg_conv_form="auto"))        # convs inside R1 and path length: "direct" | "dense" (same numbers;
                                      # Dr / Dm strided convs subsampled, G's upsampling convs zero-inserted,
                                      # so XLA:CPU's second-order gradients stay fast) | "auto" (CPU: dense)
    c.train = ml_collections.ConfigDict(dict(
        iterations=800_000, batch_size=16, lr=0.002, r1=10.0, path_regularize=2.0, path_batch_shrink=2,
        d_reg_every=16, g_reg_every=4,
        g_reg_offset=0,               # path length at iterations i with (i - offset) % g_reg_every == 0;
                                      # 0 = the reference; 2 never meets R1 (d_reg_every 16), so the
                                      # step with both regularisers is never compiled (3 programs, not 4)
        mixing=0.9, lambda_dseg_feat=2.0, ema_decay=0.5 ** (32 / 10000),
        ema_rampup=0.0,               # > 0: StyleGAN2-ADA's EMA ramp-up (half-life min(h, rampup * step)
                                      # iterations, h that of ema_decay); 0 = the reference (constant)
        r1_img_zero_grad=False,       # True = the official code's bug: its R1 on Dr runs while Dr's
                                      # requires_grad is off (set for the Dm step), so Dr's optimiser
                                      # steps on zero gradients (docs/architecture.md)
        r1_dr=-1.0,                   # Dr's R1 weight when >= 0 (Dm keeps r1); -1 = r1 for both (reference)
        fake_mask="raw",              # G's mask as Dm sees it: 'raw' seg logits (reference) | 'softmax'
                                      # (2 softmax - 1; tanh for seg_dim 1) | 'hard' (one-hot in [-1, 1]
                                      # forward, the softmax's gradient backward), see dm_mask
        dm_mismatch=0.0,              # > 0: Dm also learns to reject real images paired with another
                                      # example's real mask, at this weight (dm_loss); 0 = reference
        augment_dr="", augment_dm="", # DiffAugment policies for Dr's / Dm's inputs, e.g.
                                      # "translation,cutout" (train/augment.py); "" = none (reference)
        mesh_data=-1,                 # devices on the 'data' axis (-1 = all)
        on_nonfinite="stop",          # a non-finite loss/gradient: 'stop' with an error | 'skip' the update
        trainable="all"))             # 'all' | 'seg_branch': only ToSEG and Dm train, G frozen (seg_branch.py) |
                                      # 'image': G's image path and Dr on the unlabeled images (a StyleGAN2)
    c.log = ml_collections.ConfigDict(dict(
        log_every=100, viz_every=100, n_sample=64, save_every=2000, keep=5,
        max_minutes=0.0))             # stop (with a checkpoint) after this wall time; 0 = no limit
    c.eval = ml_collections.ConfigDict(dict(
        stats="",                     # `semgan inception-stats` file of the real data; "" = no FID
        every=1000,                   # the reference's eval_every
        n_samples=10_000,             # G_ema samples per FID / IS (the reference draws 10k)
        inception="",                 # torchvision Inception-v3 weights ("" = default location)
        batch_size=50,
        oracle=False,                 # oracle mask agreement / Fréchet distance of G and G_ema (oracle.py;
                                      # datasets with labels to spare, e.g. synthetic)
        oracle_samples=512))
    return c


def build_models(model_cfg, lr: float, d_reg_every: int, g_reg_every: int) -> GANModels:
    """Networks from a config's `model` section; optimisers as the reference (lazy Adam)."""
    dtype = jnp.dtype(model_cfg.dtype)
    g = Generator(size=model_cfg.size, style_dim=model_cfg.style_dim, n_mlp=model_cfg.n_mlp,
                  seg_dim=model_cfg.seg_dim, image_channels=model_cfg.image_channels,
                  channel_multiplier=model_cfg.channel_multiplier, channel_base=model_cfg.channel_base or None,
                  channel_max=model_cfg.channel_max, lr_mlp=model_cfg.lr_mlp, impl=model_cfg.modconv_impl,
                  dtype=dtype)
    d_img = ImageDiscriminator(size=model_cfg.size, channel_multiplier=model_cfg.channel_multiplier,
                               channel_base=model_cfg.channel_base or None, channel_max=model_cfg.channel_max,
                               dtype=dtype)
    d_seg = MaskDiscriminator(ndf=model_cfg.dm_ndf, n_layers=model_cfg.dm_n_layers, num_d=model_cfg.dm_num_d,
                              max_channels=model_cfg.dm_max_channels, dtype=dtype)
    form = model_cfg.get("reg_conv_form", "auto")
    if form not in ("auto", "direct", "dense"):
        raise ValueError(f"model.reg_conv_form must be auto, direct or dense, got {form!r}")
    dense = form == "dense" or (form == "auto" and jax.default_backend() == "cpu")
    return GANModels(g, d_img, d_seg, lazy_adam(lr, g_reg_every), lazy_adam(lr, d_reg_every),
                     lazy_adam(lr, d_reg_every), d_img.clone(subsample_strides=dense),
                     d_seg.clone(subsample_strides=dense), g.clone(upsample_form="zero_insert" if dense else "phases"))


def hparams_from_config(train_cfg) -> GANHParams:
    """The config's `train` fields GANHParams names (g_reg_offset may be absent: runs saved before it)."""
    return GANHParams(**{f.name: train_cfg[f.name] for f in dataclasses.fields(GANHParams) if f.name in train_cfg})


def init_state(models: GANModels, key) -> GANState:
    """Fresh stage-1 state; G_ema starts as a copy of G (the reference's accumulate(.., 0))."""
    k_g, k_dimg, k_dseg, k_state = jax.random.split(key, 4)
    g_vars = init_generator(models.g, k_g)
    size, c_img, c_seg = models.g.size, models.g.image_channels, models.g.seg_dim
    d_img = models.d_img.init(k_dimg, jnp.zeros((1, size, size, c_img)))["params"]
    dm_vars = models.d_seg.init(k_dseg, jnp.zeros((1, size, size, c_img + c_seg)))
    def zero():  # distinct buffers: the state is donated leaf by leaf
        return jnp.zeros((), jnp.float32)

    return GANState(
        step=jnp.zeros((), jnp.int32), key=k_state, g=g_vars["params"],
        g_ema=jax.tree.map(jnp.copy, g_vars["params"]), g_noises=g_vars["noises"], d_img=d_img,
        d_seg=dm_vars["params"], d_seg_spectral=dm_vars["spectral"],
        g_opt=models.g_tx.init(g_vars["params"]), d_img_opt=models.d_img_tx.init(d_img),
        d_seg_opt=models.d_seg_tx.init(dm_vars["params"]), mean_path_length=zero(),
        last_reg={"r1_img": zero(), "r1_seg": zero(), "path": zero(), "path_length": zero()},
        health=guard.init_health())


def mixing_styles(key, g: Generator, batch: int, prob: float):
    """The reference's `mixing_noise`: two z and a crossover index with probability `prob`,
    else one z (crossover index n_latent = no mixing). Returns ([z1, z2], inject_index)."""
    k1, k2, k_coin, k_idx = jax.random.split(key, 4)
    z = [jax.random.normal(k1, (batch, g.style_dim)), jax.random.normal(k2, (batch, g.style_dim))]
    mix = jax.random.uniform(k_coin) < prob
    inject = jnp.where(mix, jax.random.randint(k_idx, (), 1, g.n_latent), g.n_latent)
    return z, inject


def generate(models: GANModels, params, key, batch: int, prob: float, return_latents=False, draw=None):
    """G(z) with style mixing and fresh noise: (image, seg[, w+]). `draw` (tests) replaces the
    key's draws: {'z': (2, batch, style_dim), 'inject': int (n_latent = no mixing), 'noise': maps}."""
    if draw is not None:
        return models.g.apply({"params": params}, list(draw["z"]), inject_index=draw["inject"],
                              noise=list(draw["noise"]), return_latents=return_latents)
    k_style, k_noise = jax.random.split(key)
    z, inject = mixing_styles(k_style, models.g, batch, prob)
    return models.g.apply({"params": params}, z, inject_index=inject, rngs={"noise": k_noise},
                          return_latents=return_latents)


def _dm(models, params, spectral, x, net=None):
    """Dm (or `net`, a form of it) in train mode: (features, new spectral state)."""
    feats, new = (net or models.d_seg).apply({"params": params, "spectral": spectral}, x, update_stats=True,
                                             mutable=["spectral"])
    return feats, new["spectral"]


FAKE_MASKS = ("raw", "softmax", "hard")


def dm_mask(fake_seg, fake_mask: str):
    """G's seg logits (N, H, W, seg_dim) as Dm sees them. Real masks enter Dm as one-hot maps in
    [-1, 1]; `fake_mask` says how G's do: 'raw' as they are (the reference), 'softmax' as
    2 softmax - 1 (tanh for a single channel), 'hard' as the one-hot map of their argmax (sign for
    a single channel) with the softmax's gradient (straight-through), so that fake and real masks
    share their values and only shape and placement tell them apart."""
    if fake_mask == "raw":
        return fake_seg
    k = fake_seg.shape[-1]
    if k == 1:
        soft, hard = jnp.tanh(fake_seg), jnp.sign(fake_seg)
    else:
        soft = 2 * jax.nn.softmax(fake_seg, axis=-1) - 1
        hard = 2 * jax.nn.one_hot(jnp.argmax(fake_seg, -1), k, dtype=fake_seg.dtype) - 1
    return soft if fake_mask == "softmax" else soft + jax.lax.stop_gradient(hard - soft)


def dm_fake_input(fake_img, fake_seg, fake_mask: str):
    """Dm's input for G's pair: (N, H, W, C + seg_dim), the image DETACHED (Dm's losses reach G
    through the mask only) and the mask as `dm_mask` gives it."""
    return jnp.concatenate([jax.lax.stop_gradient(fake_img), dm_mask(fake_seg, fake_mask)], axis=-1)


def dm_misfit(dm, dm_vars, image, seg, fake_mask: str):
    """How far a frozen Dm (variables {'params', 'spectral'}) is from taking G's mask for the
    real image's own: its hinge "real" loss on (image (N, H, W, C), G's seg logits as `dm_mask`
    gives them), 0 once every scale's map is above 1: a term of the inversion (not in the
    reference; infer.py), where the mask's gradient moves w+."""
    pair = jnp.concatenate([image, dm_mask(seg, fake_mask)], axis=-1)
    return losses.hinge_d_loss(dm.apply(dm_vars, pair, update_stats=False), True)


def mismatched_pairs(real_seg_in, image_channels: int):
    """Real (image, mask) pairs (N, H, W, C + seg_dim) with each image given the next example's
    mask (a roll by one over the batch): pairs whose parts are real but do not belong together."""
    return jnp.concatenate([real_seg_in[..., :image_channels],
                            jnp.roll(real_seg_in[..., image_channels:], 1, axis=0)], axis=-1)


def dm_loss(params, spectral, models: GANModels, fake_seg_in, real_seg_in, aug, mismatch: float = 0.0):
    """Dm's hinge loss on fake and real (image, mask) inputs (N, H, W, C + seg_dim), each through
    `aug` (see `discriminator_augmenters`): (loss, (new spectral state, real score, fake score)).
    mismatch > 0 adds that weight of the hinge "fake" loss on `mismatched_pairs` of the real batch
    (the matching-aware discriminator of GAN-CLS, Reed et al. 2016): real images and real masks
    that do not belong together, which Dm can only reject by looking at their alignment."""
    fake_pred, spectral = _dm(models, params, spectral, aug(0, fake_seg_in))
    real_pred, spectral = _dm(models, params, spectral, aug(1, real_seg_in))
    loss = losses.hinge_d_loss(fake_pred, False) + losses.hinge_d_loss(real_pred, True)
    if mismatch:
        wrong_pred, spectral = _dm(models, params, spectral,
                                   aug(5, mismatched_pairs(real_seg_in, models.g.image_channels)))
        loss = loss + mismatch * losses.hinge_d_loss(wrong_pred, False)
    return loss / 2, (spectral, _final_mean(real_pred), _final_mean(fake_pred))


def dm_r1(params, spectral, models: GANModels, real_seg_in, aug):
    """Dm's R1 penalty (summed scales' final maps) on its real input through `aug`:
    (penalty, new spectral state)."""
    def d_fn(x):
        feats, new_spectral = _dm(models, params, spectral, aug(2, x), models.d_seg_r1)
        return losses.multiscale_r1_output(feats), new_spectral
    return losses.r1_penalty(d_fn, real_seg_in, has_aux=True)


def r1_scaled(grads, r1: float, d_reg_every: int):
    """An R1 gradient weighted as the reference's lazy regulariser: r1 / 2 * d_reg_every."""
    return jax.tree.map(lambda g: g * (r1 / 2 * d_reg_every), grads)


def dm_generator_loss(d_seg, spectral, models: GANModels, fake_img, fake_seg, real_seg_in, aug, lambda_feat: float,
                      fake_mask: str = "raw"):
    """G's Dm terms: hinge on (detached image, mask) and 1/3-weighted feature matching against the
    real pairs' features: (adversarial, feature matching, new spectral state). Dm's loss reaches
    G through the mask only (`dm_fake_input`)."""
    fake_in = dm_fake_input(fake_img, fake_seg, fake_mask)
    fake_feats, spectral = _dm(models, d_seg, spectral, aug(3, fake_in))
    real_feats, spectral = _dm(models, d_seg, spectral, aug(4, real_seg_in))
    adv = losses.hinge_g_loss(fake_feats)
    return adv, losses.feature_matching_loss(fake_feats, real_feats, weight=lambda_feat), spectral


def discriminator_augmenters(hp: GANHParams, key, image_channels: int):
    """(aug_dr, aug_dm): `augment.augmenter`s of the iteration's key for Dr's and Dm's inputs
    (identities when hp's policies are empty: the reference's step, unchanged)."""
    k_dr, k_dm = (jax.random.split(jax.random.fold_in(key, 0xA06)) if hp.augment_dr or hp.augment_dm
                  else (None, None))
    return (augment.augmenter(hp.augment_dr, k_dr, image_channels),
            augment.augmenter(hp.augment_dm, k_dm, image_channels))


def _final_mean(feats):
    return sum(jnp.mean(f[-1]) for f in feats) / len(feats)


def regularize_flags(step: int, hp: GANHParams) -> tuple[bool, bool]:
    """(d_reg, g_reg) of iteration `step` (0-based): lazy R1 and path length, as the reference
    when hp.g_reg_offset is 0. path_regularize 0 never runs the path-length update (the reference
    runs it with weight 0: Adam steps on zero gradients, which only decays G's second moments)."""
    return step % hp.d_reg_every == 0, hp.path_regularize > 0 and (step - hp.g_reg_offset) % hp.g_reg_every == 0


def train_step(models: GANModels, hp: GANHParams, state: GANState, batch: dict, *, d_reg: bool, g_reg: bool,
               labels: bool = True, draws=None, pin=None):
    """One stage-1 iteration. batch: 'image' (B, H, W, C) unlabeled reals; 'seg_image'
    (B, H, W, C) and 'seg_mask' (B, H, W, seg_dim) one-hot in [-1, 1] labeled reals.
    d_reg / g_reg: run the lazy R1 / path-length updates (see `regularize_flags`).
    labels=False (`train.trainable = "image"`): StyleGAN2 on the unlabeled images alone, no Dm
    update, no R1 on Dm and no Dm term in G's loss (ToSEG gets no gradient; the labeled batch
    is unused).
    Returns (new state, metrics dict of float32 scalars).

    For tests against the official loop (tests/test_training_parity.py), None in production:
    draws: recorded random draws replacing the key's, {'d_img' | 'd_seg' | 'g' | 'path': a
    `generate` draw}, 'path' also with 'image_noise' (B/shrink, H, W, C) N(0, 1).
    pin: f(update, values) -> values, called after each update (UPDATES names, and 'EMA') with
    what it changed, e.g. (d_img, d_img_opt); what it returns continues the iteration."""
    def _pin(update, *values):
        return values if pin is None else pin(update, values)

    def _draw(phase):
        return None if draws is None else draws[phase]

    key, k_dimg, k_dseg, k_g, k_path, k_path_noise = jax.random.split(state.key, 6)
    real_img = batch["image"]
    real_seg_in = jnp.concatenate([batch["seg_image"], batch["seg_mask"]], axis=-1)
    b = hp.batch_size
    metrics = {}
    aug_dr, aug_dm = discriminator_augmenters(hp, state.key, models.g.image_channels)

    # 1. Dr
    fake_img, _ = generate(models, state.g, k_dimg, b, hp.mixing, draw=_draw("d_img"))

    def d_img_loss(p):
        fake_pred = models.d_img.apply({"params": p}, aug_dr(0, fake_img))
        real_pred = models.d_img.apply({"params": p}, aug_dr(1, real_img))
        return losses.d_logistic_loss(real_pred, fake_pred), (jnp.mean(real_pred), jnp.mean(fake_pred))

    (loss, (real_score, fake_score)), grads = jax.value_and_grad(d_img_loss, has_aux=True)(state.d_img)
    d_img, d_img_opt, ok_d_img = guard.apply_updates(models.d_img_tx, grads, state.d_img_opt, state.d_img, loss)
    d_img, d_img_opt = _pin("Dr", d_img, d_img_opt)
    metrics.update(d_img=loss, d_img_real_score=real_score, d_img_fake_score=fake_score)

    # 2. Dm
    d_seg, d_seg_opt, spectral, ok_d_seg = state.d_seg, state.d_seg_opt, state.d_seg_spectral, jnp.array(True)
    if labels:
        fake_img, fake_seg = generate(models, state.g, k_dseg, b, hp.mixing, draw=_draw("d_seg"))
        fake_seg_in = dm_fake_input(fake_img, fake_seg, hp.fake_mask)

        (loss, (spectral, real_score, fake_score)), grads = jax.value_and_grad(dm_loss, has_aux=True)(
            d_seg, spectral, models, fake_seg_in, real_seg_in, aug_dm, hp.dm_mismatch)
        d_seg, d_seg_opt, ok_d_seg = guard.apply_updates(models.d_seg_tx, grads, d_seg_opt, d_seg, loss)
        d_seg, d_seg_opt, spectral = _pin("Dm", d_seg, d_seg_opt, spectral)
        metrics.update(d_seg=loss, d_seg_real_score=real_score, d_seg_fake_score=fake_score)

    # 3. lazy R1 on both discriminators
    def d_regularize(args):
        d_img, d_img_opt, d_seg, d_seg_opt, spectral, last = args
        r1_dr, r1_dm = hp.r1_weights

        def r1_img(p):
            return losses.r1_penalty(lambda x: models.d_img_r1.apply({"params": p}, aug_dr(2, x)), real_img)

        r1_i, grads = jax.value_and_grad(r1_img)(d_img)
        if hp.r1_img_zero_grad:  # as the official loop: no R1 gradient reaches Dr, Adam steps on zeros
            grads = jax.tree.map(jnp.zeros_like, grads)
        d_img, d_img_opt, ok_i = guard.apply_updates(models.d_img_tx, r1_scaled(grads, r1_dr, hp.d_reg_every),
                                                     d_img_opt, d_img, r1_i)
        d_img, d_img_opt = _pin("Dr R1", d_img, d_img_opt)
        last, ok_s = {**last, "r1_img": r1_i}, jnp.array(True)

        if labels:
            (r1_s, spectral), grads = jax.value_and_grad(dm_r1, has_aux=True)(d_seg, spectral, models, real_seg_in,
                                                                            aug_dm)
            d_seg, d_seg_opt, ok_s = guard.apply_updates(models.d_seg_tx, r1_scaled(grads, r1_dm, hp.d_reg_every),
                                                         d_seg_opt, d_seg, r1_s)
            d_seg, d_seg_opt, spectral = _pin("Dm R1", d_seg, d_seg_opt, spectral)
            last = {**last, "r1_seg": r1_s}
        return d_img, d_img_opt, d_seg, d_seg_opt, spectral, last, ok_i, ok_s

    last_reg = state.last_reg
    ok_r1_img = ok_r1_seg = ok_path = jnp.array(True)
    if d_reg:
        d_img, d_img_opt, d_seg, d_seg_opt, spectral, last_reg, ok_r1_img, ok_r1_seg = d_regularize(
            (d_img, d_img_opt, d_seg, d_seg_opt, spectral, last_reg))

    # 4. G
    def g_loss(p, spectral):
        fake_img, fake_seg = generate(models, p, k_g, b, hp.mixing, draw=_draw("g"))
        fake_img_pred = models.d_img.apply({"params": d_img}, aug_dr(3, fake_img))
        g_img = losses.g_nonsaturating_loss(fake_img_pred)
        if not labels:
            return g_img, (spectral, {"g": g_img, "g_img": g_img})
        g_seg_adv, g_seg_feat, spectral = dm_generator_loss(d_seg, spectral, models, fake_img, fake_seg, real_seg_in,
                                                            aug_dm, hp.lambda_dseg_feat, hp.fake_mask)
        total = g_img + g_seg_adv + g_seg_feat
        return total, (spectral, {"g": total, "g_img": g_img, "g_seg_adv": g_seg_adv, "g_seg_feat": g_seg_feat})

    (loss, (spectral, g_metrics)), grads = jax.value_and_grad(g_loss, has_aux=True)(state.g, spectral)
    g, g_opt, ok_g = guard.apply_updates(models.g_tx, grads, state.g_opt, state.g, loss)
    g, g_opt, spectral = _pin("G", g, g_opt, spectral)
    metrics.update(g_metrics)

    # 5. lazy path-length regulariser
    def g_regularize(args):
        g, g_opt, mean_path_length, last = args
        path_batch = max(1, b // hp.path_batch_shrink)
        k_style, k_noise = jax.random.split(k_path)

        draw = _draw("path")

        def path_loss(p):
            z, inject = ((list(draw["z"]), draw["inject"]) if draw is not None else
                         mixing_styles(k_style, models.g, path_batch, hp.mixing))
            w_plus = models.g.apply({"params": p}, z, inject_index=inject, method=Generator.w_plus)
            noise = dict(noise=list(draw["noise"])) if draw is not None else dict(rngs={"noise": k_noise})

            def synth(w):
                return models.g_path.apply({"params": p}, w, input_is_latent=True, **noise)[0]

            penalty, new_mean, lengths = losses.path_length_penalty(
                synth, w_plus, mean_path_length, k_path_noise, noise=None if draw is None else draw["image_noise"])
            return hp.path_regularize * hp.g_reg_every * penalty, (penalty, new_mean, lengths)

        (loss, (penalty, new_mean, lengths)), grads = jax.value_and_grad(path_loss, has_aux=True)(g)
        g, g_opt, ok = guard.apply_updates(models.g_tx, grads, g_opt, g, loss)
        g, g_opt, new_mean = _pin("G path length", g, g_opt, jnp.where(ok, new_mean, mean_path_length))
        return g, g_opt, new_mean, {**last, "path": penalty,
                                                                     "path_length": lengths}, ok

    mean_path_length = state.mean_path_length
    if g_reg:
        g, g_opt, mean_path_length, last_reg, ok_path = g_regularize((g, g_opt, mean_path_length, last_reg))

    # 6. EMA (constant decay as the reference, or ramped up from a copy: train.ema_rampup)
    g_ema = ema_update(state.g_ema, g, ema_decay_at(state.step, hp.ema_decay, hp.ema_rampup))
    (g_ema,) = _pin("EMA", g_ema)

    health = guard.record(state.health, state.step, (ok_d_img, ok_d_seg, ok_r1_img, ok_r1_seg, ok_g, ok_path))
    metrics.update(last_reg)
    metrics.update(mean_path_length=mean_path_length, skipped_updates=health["skipped"])
    new_state = state.replace(step=state.step + 1, key=key, g=g, g_ema=g_ema, d_img=d_img, d_seg=d_seg,
                              d_seg_spectral=spectral, g_opt=g_opt, d_img_opt=d_img_opt, d_seg_opt=d_seg_opt,
                              mean_path_length=mean_path_length, last_reg=last_reg, health=health)
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def jit_train_step(models: GANModels, hp: GANHParams, mesh, labels: bool = True):
    """`train_step` under one jit: state replicated and donated, batch split over 'data'.

    Returns step(state, batch, d_reg, g_reg) with the two flags static."""
    from semgan_jax.parallel import batch_sharding, compiler_options, replicated

    rep, data = replicated(mesh), batch_sharding(mesh)

    def step(state, batch, d_reg, g_reg):
        return train_step(models, hp, state, batch, d_reg=d_reg, g_reg=g_reg, labels=labels)

    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=(0,),
                   static_argnums=(2, 3), compiler_options=compiler_options(mesh))


def sample(models: GANModels, g_params, g_noises, z):
    """Fixed-noise samples of a generator: z (N, style_dim) -> (image, seg logits)."""
    return models.g.apply({"params": g_params, "noises": g_noises}, z, randomize_noise=False)


# --------------------------------------------------------------------------------------------
# The loop: data, checkpoints, logs, samples
# --------------------------------------------------------------------------------------------

def check_model_against_data(model_cfg, data_cfg) -> None:
    """seg_dim must match the dataset's classes (1 channel for a binary mask); size, channels too."""
    from semgan_jax.data.datasets import get_dataset_info

    info = get_dataset_info(data_cfg.name)
    k = len(info.class_names)
    want = 1 if k == 2 and model_cfg.seg_dim == 1 else k
    if model_cfg.seg_dim != want:
        raise ValueError(f"model.seg_dim={model_cfg.seg_dim} but dataset {data_cfg.name!r} has {k} classes "
                         f"({', '.join(info.class_names)}); use seg_dim={k}" + (" or 1" if k == 2 else ""))
    if model_cfg.image_channels != info.channels:
        raise ValueError(f"model.image_channels={model_cfg.image_channels} but {data_cfg.name!r} images have "
                         f"{info.channels} channels")
    if model_cfg.size != data_cfg.resolution:
        raise ValueError(f"model.size={model_cfg.size} but data.resolution={data_cfg.resolution}")


def make_iterators(config, local_batch: int):
    """Endless unlabeled and labeled grain iterators for this process's shard."""
    from semgan_jax.data.datasets import load_split
    from semgan_jax.data.pipeline import make_labeled_iterator, make_unlabeled_iterator

    d = config.data
    common = dict(data_dir=d.data_dir or None, resolution=d.resolution)
    unlabeled = load_split(d.name, d.unlabeled_split, **common)
    labeled = load_split(d.name, d.labeled_split, num_labeled=d.num_labeled or None, label_seed=d.label_seed,
                         **common)
    opts = dict(shard_index=jax.process_index(), shard_count=jax.process_count(),
                num_workers=d.num_workers, prefetch=d.prefetch)
    it_u = make_unlabeled_iterator(unlabeled, local_batch, config.seed, **opts)
    it_l = make_labeled_iterator(labeled, local_batch, config.seed + 1, config.model.seg_dim,
                                 seg_aug=d.get("seg_aug", False), **opts)  # absent in configs written before it
    return it_u, it_l


def next_batch(it_u, it_l, mesh) -> dict:
    """One global stage-1 batch from the two iterators."""
    from semgan_jax.parallel import global_batch

    u, lab = next(it_u), next(it_l)
    return global_batch({"image": u["image"], "seg_image": lab["image"], "seg_mask": lab["mask_onehot"]}, mesh)


def train(config, workdir: str, resume: bool = True) -> GANState:
    """Run stage 1 as configured; resumable from WORKDIR/checkpoints. Returns the final state.

    Writes WORKDIR/config.json, metrics.jsonl, samples/step_XXXXXX.png (G_ema, fixed z and
    noise: each image beside its colour-coded mask) and checkpoints every log.save_every steps,
    at the end, on SIGTERM/SIGINT and after log.max_minutes.
    """
    from pathlib import Path

    import numpy as np

    from semgan_jax import viz
    from semgan_jax.checkpoint import Checkpointer
    from semgan_jax.data.datasets import get_dataset_info
    from semgan_jax.parallel import check_batch_size, make_mesh, replicated
    from semgan_jax.train import loop
    from semgan_jax.train.observe import MetricsLogger, write_config

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_model_against_data(config.model, config.data)
    mesh = make_mesh(config.train.mesh_data)
    local_batch = check_batch_size(config.train.batch_size, mesh)
    write_config(workdir, config)

    models, mode, init, sample_fn = programs(config, mesh)  # what trains: train.trainable
    state = init(jax.random.PRNGKey(config.seed))
    it_u, it_l = make_iterators(config, local_batch)
    iterators = {"unlabeled": it_u, "labeled": it_l}
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.log.keep)
    if resume:
        state = mode.restore(ckpt, state, iterators)  # a checkpoint of either mode

    palette = get_dataset_info(config.data.name).palette
    sample_z = jax.device_put(np.asarray(jax.random.normal(jax.random.PRNGKey(config.seed + 12345),
                                                (config.log.n_sample, models.g.style_dim))), replicated(mesh))

    def write_samples(state, step):  # every process computes (one program), process 0 writes
        img, seg = jax.device_get(sample_fn(state.g_ema, state.g_noises, sample_z))
        if jax.process_index() == 0:
            viz.save_samples(workdir / "samples" / f"step_{step:06d}.png", img, seg, palette)

    logger = MetricsLogger(workdir, int(state.step), config.train.iterations, config.train.batch_size,
                           show=("d_img", "d_seg", "g", "fid", "oracle_agreement_ema"))
    evaluate = evaluator(config, models, workdir, iterators)
    return loop.run(state, mode.step, lambda: next_batch(it_u, it_l, mesh),
                    total=config.train.iterations, log_cfg=config.log, ckpt=ckpt, iterators=iterators,
                    logger=logger, write_samples=write_samples, updates=mode.updates,
                    on_nonfinite=config.train.get("on_nonfinite", "stop"), flags=mode.flags,
                    evaluate=evaluate, eval_every=config.get("eval", {}).get("every", 0))


def programs(config, mesh) -> tuple:
    """(models, mode, init(key) -> state, sample(g, noises, z)) of a run: its networks and
    optimisers, the `seg_branch.Stage1Mode` that `train.trainable` names and the jitted functions.
    Made once per process for the same networks, optimisers, schedule and mesh, so a second
    `train` in one process (a resume, a sweep from a notebook) runs the programs already compiled
    instead of tracing them again and reloading them from the compilation cache."""
    return _programs(config.model.to_json(sort_keys=True), config.train.lr, config.train.get("trainable", "all"),
                     hparams_from_config(config.train), mesh)


@functools.lru_cache(maxsize=8)
def _programs(model_json: str, lr: float, trainable: str, hp: GANHParams, mesh) -> tuple:
    import ml_collections

    from semgan_jax.parallel import replicated
    from semgan_jax.train import seg_branch

    models = build_models(ml_collections.ConfigDict(json.loads(model_json)), lr, hp.d_reg_every, hp.g_reg_every)
    mode = seg_branch.stage1_mode(ml_collections.ConfigDict({"trainable": trainable, "lr": lr}), models, hp, mesh)
    init = jax.jit(mode.init, out_shardings=replicated(mesh))
    return models, mode, init, jax.jit(lambda p, n, z: sample(models, p, n, z))


def evaluator(config, models: GANModels, workdir, iterators: dict):
    """evaluate(state, step) -> metrics of the evaluations the `eval` section asks for (FID / IS
    with `eval.stats`, the oracle scores of G and G_ema with `eval.oracle`), or None for none."""
    e = config.get("eval", {})
    parts = []
    if e.get("stats"):
        parts.append(fid_evaluator(config, models, workdir, iterators))
    if e.get("oracle"):
        from semgan_jax import oracle

        parts.append(oracle.stage1_evaluator(config, models))
    if not parts:
        return None
    return lambda state, step: {k: v for part in parts for k, v in part(state, step).items()}


def fid_evaluator(config, models: GANModels, workdir, iterators: dict):
    """evaluate(state, step) -> {'fid', 'is_mean', 'is_std'} of `eval.n_samples` G_ema samples
    against the `eval.stats` file, as the reference's eval_every block; keeps the checkpoint with
    the best FID in WORKDIR/best (its FID in WORKDIR/best/fid.json, so a resumed run remembers)."""
    import json
    from pathlib import Path

    from semgan_jax.checkpoint import Checkpointer
    from semgan_jax.metrics import InceptionMetrics, generator_sample_fn, generator_sampler, load_stats

    e = config.eval
    sampler = generator_sampler(models.g)
    reference = load_stats(e.stats)
    inception = InceptionMetrics(e.inception or None, batch_size=e.batch_size)
    best_dir = Path(workdir) / "best"
    record = best_dir / "fid.json"

    def evaluate(state, step):
        sample_fn = generator_sample_fn(models.g, {"params": state.g_ema}, sampler=sampler)
        out = inception.fid_is(sample_fn, jax.random.PRNGKey(config.seed + 999), reference, e.n_samples,
                               progress=False)
        best = json.loads(record.read_text())["fid"] if record.is_file() else float("inf")
        if out["fid"] < best:  # every process saves (orbax), process 0 writes the record
            best_ckpt = Checkpointer(best_dir / "checkpoint", keep=1)
            try:
                best_ckpt.save(step, state, {name: it.get_state() for name, it in iterators.items()})
            finally:
                best_ckpt.close()
            if jax.process_index() == 0:
                record.write_text(json.dumps({"fid": out["fid"], "step": step}))
        return {"fid": out["fid"], "is_mean": out["is_mean"], "is_std": out["is_std"]}

    return evaluate
