"""Stage 1 on a frozen generator: train only the label branch (ToSEG) and Dm
(`train.trainable = "seg_branch"`; the joint stage 1 of train/gan.py is `"all"`, and `"image"`
is its StyleGAN2 half: G's image path and Dr on the unlabeled images, what seg_branch starts from
when no pretrained StyleGAN2 exists).

G's mapping net, synthesis convs, noise strengths and ToRGB layers stay as they are (no gradient,
no optimiser state, no path-length regulariser, no Dr update); the ToSEG layers (each a modulated
1x1 conv with its modulation affine, and a bias: G's params['synthesis']['to_seg*']) and Dm train
with the joint step's Dm losses:

  1. One G forward (fresh z, style mixing, fresh noise), linearised in the ToSEG parameters only
     (`jax.vjp`): the synthesis runs forward once and keeps just what ToSEG's backward needs.
  2. Dm update: hinge loss on (fake image, fake seg logits) vs labeled (image, mask).
  3. Every d_reg_every iterations: R1 on Dm (real image + mask), weighted r1 / 2 * d_reg_every.
  4. ToSEG update on the same fakes, scored by the updated Dm: hinge "real" loss + Dm feature
     matching (lambda_dseg_feat), the image given to Dm detached, as the joint step's G update
     without its Dr term (which does not reach ToSEG). The loss's gradient in the fake seg
     logits is pulled back through step 1's linearisation, so an iteration costs one G forward,
     ToSEG's backward and Dm's updates. (The joint step draws fresh z for G's update; one draw
     for both updates is pix2pixHD's, Dm's model, scheme: it halves the frozen G's work.)
  5. G_ema: the ToSEG params averaged with the joint mode's EMA decay; the frozen parts stay equal to G's
     (both hold one image path from entering the mode on, see below).

The ToSEG optimiser is the reference's G Adam (lr, betas (0, 0.99)) without the lazy
regularisation scaling, since no G regulariser runs. Dm's optimiser is the joint mode's.

State layout: a `GANState` whose g_opt covers the ToSEG subtree only and whose d_img_opt is None
(Dr is carried unchanged), which is how a checkpoint's layout is recognised (`saved_layout`;
'all' and 'image' share the joint layout). Resuming a checkpoint in the other layout
(`Stage1Mode.restore`) keeps every parameter, G_ema, Dm's optimiser state, the step, the key and
the data position, and starts fresh optimiser states for what trains in the new mode. Entering
seg_branch from a joint checkpoint (or a `semgan convert`ed StyleGAN2 file) freezes G_ema's image
path: G's frozen parts are set to G_ema's, ToSEG keeps G's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from semgan_jax.train import gan, guard, loop
from semgan_jax.train.state import ema_decay_at, ema_update

TRAINABLE = ("all", "seg_branch", "image")
# The optimiser updates of one seg_branch iteration, in the order of `guard.record`'s bits.
UPDATES = ("Dm", "Dm R1", "ToSEG")


def check_trainable(trainable: str) -> str:
    if trainable not in TRAINABLE:
        raise ValueError(f"train.trainable must be one of {TRAINABLE}, got {trainable!r}")
    return trainable


def layout(trainable: str) -> str:
    """The state layout of mode `trainable`: 'seg_branch', or 'all' (the joint layout, also 'image''s)."""
    return "seg_branch" if trainable == "seg_branch" else "all"


def to_seg(g_params) -> dict:
    """The ToSEG layers of G's params: {'to_seg1': ..., 'to_segs_0': ..., ...}."""
    return {k: v for k, v in g_params["synthesis"].items() if k.startswith("to_seg")}


def with_to_seg(g_params, seg) -> dict:
    """G's params with the ToSEG layers replaced by `seg` (as `to_seg` returns them)."""
    return {**g_params, "synthesis": {**g_params["synthesis"], **seg}}


def seg_optimizer(lr: float) -> optax.GradientTransformation:
    """The ToSEG optimiser (module docstring)."""
    return optax.adam(lr, b1=0.0, b2=0.99, eps=1e-8)


def build_models(models: gan.GANModels, lr: float) -> gan.GANModels:
    """The joint mode's models with g_tx the ToSEG optimiser."""
    return dataclasses.replace(models, g_tx=seg_optimizer(lr))


def from_joint(state: gan.GANState) -> gan.GANState:
    """A joint-layout state in seg_branch layout: G's frozen parts := G_ema's, fresh ToSEG
    optimiser state, no Dr optimiser state."""
    g = with_to_seg(jax.tree.map(jnp.copy, state.g_ema), to_seg(state.g))  # own buffers: the state is donated
    return state.replace(g=g, g_opt=seg_optimizer(0.0).init(to_seg(g)), d_img_opt=None)  # Adam's state has no lr


def to_joint(models: gan.GANModels, state: gan.GANState) -> gan.GANState:
    """A seg_branch-layout state in joint layout: fresh G and Dr optimiser states (models: the
    joint mode's)."""
    return state.replace(g_opt=models.g_tx.init(state.g), d_img_opt=models.d_img_tx.init(state.d_img))


def regularize_flags(step: int, hp: gan.GANHParams) -> tuple[bool]:
    """(d_reg,) of iteration `step`: lazy R1 on Dm as the joint mode."""
    return (step % hp.d_reg_every == 0,)


def train_step(models: gan.GANModels, hp: gan.GANHParams, state: gan.GANState, batch: dict, *, d_reg: bool):
    """One seg_branch iteration (module docstring); batch as `gan.train_step`'s ('image' unused).
    Returns (new state, metrics dict of float32 scalars)."""
    key, k_g = jax.random.split(state.key)
    real_seg_in = jnp.concatenate([batch["seg_image"], batch["seg_mask"]], axis=-1)
    metrics = {}

    aug_dm = gan.discriminator_augmenters(hp, state.key, models.g.image_channels)[1]

    # 1. one G forward, differentiable in ToSEG only (the frozen synthesis has no tangent)
    def draw(seg):
        return gan.generate(models, with_to_seg(state.g, seg), k_g, hp.batch_size, hp.mixing)

    seg = to_seg(state.g)
    (fake_img, fake_seg), pull_back = jax.vjp(draw, seg)

    # 2. Dm
    fake_seg_in = gan.dm_fake_input(fake_img, fake_seg, hp.fake_mask)
    (loss, (spectral, real_score, fake_score)), grads = jax.value_and_grad(gan.dm_loss, has_aux=True)(
        state.d_seg, state.d_seg_spectral, models, fake_seg_in, real_seg_in, aug_dm, hp.dm_mismatch)
    d_seg, d_seg_opt, ok_d_seg = guard.apply_updates(models.d_seg_tx, grads, state.d_seg_opt, state.d_seg, loss)
    metrics.update(d_seg=loss, d_seg_real_score=real_score, d_seg_fake_score=fake_score)

    # 3. lazy R1 on Dm
    last_reg, ok_r1 = state.last_reg, jnp.array(True)
    if d_reg:
        (r1, spectral), grads = jax.value_and_grad(gan.dm_r1, has_aux=True)(d_seg, spectral, models, real_seg_in,
                                                                            aug_dm)
        grads = gan.r1_scaled(grads, hp.r1_weights[1], hp.d_reg_every)
        d_seg, d_seg_opt, ok_r1 = guard.apply_updates(models.d_seg_tx, grads, d_seg_opt, d_seg, r1)
        last_reg = {**last_reg, "r1_seg": r1}

    # 4. ToSEG: the loss's gradient in the seg logits, pulled back to the ToSEG parameters
    def seg_loss(fake_seg, spectral):
        adv, feat, spectral = gan.dm_generator_loss(d_seg, spectral, models, fake_img, fake_seg, real_seg_in, aug_dm,
                                                    hp.lambda_dseg_feat, hp.fake_mask)
        return adv + feat, (spectral, {"g": adv + feat, "g_seg_adv": adv, "g_seg_feat": feat})

    (loss, (spectral, g_metrics)), grad_seg = jax.value_and_grad(seg_loss, has_aux=True)(fake_seg, spectral)
    (grads,) = pull_back((jnp.zeros_like(fake_img), grad_seg))
    seg, g_opt, ok_seg = guard.apply_updates(models.g_tx, grads, state.g_opt, seg, loss)
    metrics.update(g_metrics)

    # 5. G_ema: its frozen parts equal G's (`from_joint`) and stay; ToSEG averaged
    g = with_to_seg(state.g, seg)
    g_ema = with_to_seg(state.g_ema, ema_update(to_seg(state.g_ema), seg,
                                                  ema_decay_at(state.step, hp.ema_decay, hp.ema_rampup)))

    health = guard.record(state.health, state.step, (ok_d_seg, ok_r1, ok_seg))
    metrics.update(r1_seg=last_reg["r1_seg"], skipped_updates=health["skipped"])
    new_state = state.replace(step=state.step + 1, key=key, g=g, g_ema=g_ema, d_seg=d_seg, d_seg_spectral=spectral,
                              g_opt=g_opt, d_seg_opt=d_seg_opt, last_reg=last_reg, health=health)
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def jit_train_step(models: gan.GANModels, hp: gan.GANHParams, mesh):
    """`train_step` under one jit (state replicated and donated, batch split over 'data'):
    step(state, batch, d_reg) with the flag static."""
    from semgan_jax.parallel import batch_sharding, compiler_options, replicated

    rep, data = replicated(mesh), batch_sharding(mesh)

    def step(state, batch, d_reg):
        return train_step(models, hp, state, batch, d_reg=d_reg)

    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=(0,),
                   static_argnums=(2,), compiler_options=compiler_options(mesh))


# --------------------------------------------------------------------------------------------
# Checkpoints of either mode
# --------------------------------------------------------------------------------------------

def saved_layout(ckpt, step: int) -> str | None:
    """The layout ('all' or 'seg_branch') checkpoint `step` of `ckpt` (a `checkpoint.Checkpointer`)
    holds; None when its metadata does not read (a damaged checkpoint, which `Checkpointer.restore`
    reports and replaces by an older one)."""
    import orbax.checkpoint as ocp

    try:
        tree = ocp.StandardCheckpointHandler().metadata(Path(ckpt.directory) / str(step) / "state").tree
        return "seg_branch" if tree["d_img_opt"] is None else "all"
    except Exception:  # noqa: BLE001 - any unreadable metadata: leave the checkpoint to the restore's fallback
        return None


def latest_layout(directory) -> str:
    """The layout of the latest checkpoint in `directory` (a run's checkpoints/); 'all' when there
    is none or it does not read."""
    from semgan_jax.checkpoint import Checkpointer

    if not Path(directory).is_dir():  # (opening a Checkpointer would create it)
        return "all"
    ckpt = Checkpointer(directory)
    try:
        step = ckpt.latest_step()
        return (step is not None and saved_layout(ckpt, step)) or "all"
    finally:
        ckpt.close()


def init_state_as(models: gan.GANModels, key, trainable: str) -> gan.GANState:
    """A fresh state in the layout of mode `trainable` (what a checkpoint of it restores into;
    models: the joint mode's)."""
    state = gan.init_state(models, key)
    return from_joint(state) if layout(trainable) == "seg_branch" else state


@dataclasses.dataclass(frozen=True)
class Stage1Mode:
    """What `gan.train` runs for one `train.trainable` value."""
    trainable: str
    models: gan.GANModels       # the mode's networks and optimisers
    joint_models: gan.GANModels
    step: Callable               # jitted step(state, batch, *flags)
    flags: Callable[[int], tuple]
    updates: tuple[str, ...]

    def init(self, key) -> gan.GANState:
        return init_state_as(self.joint_models, key, self.trainable)

    def convert(self, state: gan.GANState) -> gan.GANState:
        """A state of the other layout in this mode's layout."""
        return from_joint(state) if layout(self.trainable) == "seg_branch" else to_joint(self.models, state)

    def restore(self, ckpt, state: gan.GANState, iterators: dict) -> gan.GANState:
        """`loop.restore_latest` for a checkpoint of either layout (one of the other layout is
        converted: module docstring)."""
        step = ckpt.latest_step()
        if step is None:
            return state
        saved = saved_layout(ckpt, step)
        if saved in (None, layout(self.trainable)):
            return loop.restore_latest(ckpt, state, iterators)
        sharding = jax.tree.leaves(state)[0].sharding
        like = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                            jax.eval_shape(lambda: init_state_as(self.joint_models, jax.random.PRNGKey(0), saved)))
        restored = loop.restore_latest(ckpt, like, iterators)
        print(f"step {step} was saved in the {saved!r} layout; continuing with train.trainable={self.trainable!r} "
              "(parameters kept, fresh optimiser state for what now trains)")
        return jax.jit(self.convert, out_shardings=sharding)(restored)


def stage1_mode(train_cfg, models: gan.GANModels, hp: gan.GANHParams, mesh) -> Stage1Mode:
    """The mode `train_cfg.trainable` names ('all' when the field is absent: runs saved before it)."""
    trainable = check_trainable(train_cfg.get("trainable", "all"))
    if trainable != "seg_branch":
        return Stage1Mode(trainable, models, models, gan.jit_train_step(models, hp, mesh, labels=trainable == "all"),
                          lambda i: gan.regularize_flags(i, hp), gan.UPDATES)
    seg_models = build_models(models, train_cfg.lr)
    return Stage1Mode(trainable, seg_models, models, jit_train_step(seg_models, hp, mesh),
                      lambda i: regularize_flags(i, hp), UPDATES)

