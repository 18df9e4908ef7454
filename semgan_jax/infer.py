"""Inference: segment an image by inverting the generator, as the official `inference.py`.

For each image x* (N, H, W, C) in [-1, 1]:
  w+ <- E(x*) (or the mean latent with `mean_init`), noise maps <- N(0, 1);
  `step` Adam steps (lr `lr` with the reference's ramp-up / ramp-down) on
      LPIPS(G(w+), x*) + noise_regularize · R_noise + λ_mse · MSE(G(w+), x*)
      + λ_encoder · MSE(w+, sg[E(G(w+))]) + λ_encoder_init · MSE(w+, w+_0)
      + λ_dm · hinge_real(Dm(x*, G's mask)) (optional, not in the reference: the stage-1 Dm
        judging whether G's mask belongs to the input image itself)
  (with mean_init: + λ_mean · MSE(w+, w_mean) instead of the two encoder terms), the noise maps
  renormalised after every step (unless `optimize_noise` is off);
  label map = argmax of G's seg logits (sigmoid > 0.5 for one channel).
The whole optimisation of one image is one `lax.scan`; `invert` vmaps it over the batch, so
each image keeps its own latent, noise and Adam state (the reference's batch size is 1), and N
images cost one batched run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from semgan_jax import losses
from semgan_jax.train.gan import dm_misfit
from semgan_jax.train.state import inference_optimizer


@dataclasses.dataclass(frozen=True)
class InvertConfig:
    """The reference's inference.py defaults."""
    step: int = 100
    lr: float = 0.1
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    noise_regularize: float = 1e2
    lambda_mse: float = 0.1
    lambda_mean: float = 0.01
    lambda_encoder: float = 1e-3
    lambda_encoder_init: float = 0.0
    mean_init: bool = False
    lambda_dm: float = 0.0          # not in the reference: the stage-1 Dm's verdict on (x*, G's mask)
    dm_mask: str = "raw"            # how that Dm saw G's masks in stage 1 (train.fake_mask)
    optimize_noise: bool = True     # False = --no_noises (fresh noise each step, not optimised)
    n_mean_latent: int = 10000


# lambda_encoder when the perceptual term is missing (no LPIPS weight files): the reference's 1e-3
# balances ||E(G(w+)) - w+||^2 against LPIPS + 0.1 MSE; with 0.1 MSE alone it leaves w+ free to
# leave the region where G draws faces and masks (docs/learning.md measures the choice).
LAMBDA_ENCODER_WITHOUT_LPIPS = 10.0


# lambda_dm when the stage-1 Dm learnt to reject mismatched real pairs (train.dm_mismatch > 0): only
# such a Dm judges whether a mask belongs to its image (a Dm trained as the reference's lowers the
# scores); 0.3 measured best of 0.1 / 0.3 / 1 / 3 / 10 on two runs (docs/learning.md). 0 for other runs.
LAMBDA_DM_ALIGNED = 0.3


def dm_weight(lambda_dm: float | None, stage1_train) -> float:
    """lambda_dm as given, or by default LAMBDA_DM_ALIGNED for a stage-1 run trained with
    train.dm_mismatch > 0 and 0 otherwise."""
    if lambda_dm is not None:
        return lambda_dm
    return LAMBDA_DM_ALIGNED if stage1_train.get("dm_mismatch", 0.0) > 0 else 0.0


def encoder_weight(lambda_encoder: float | None, has_lpips: bool) -> float:
    """lambda_encoder as given, or by default the reference's 1e-3 with LPIPS and
    LAMBDA_ENCODER_WITHOUT_LPIPS without it."""
    if lambda_encoder is not None:
        return lambda_encoder
    return InvertConfig.lambda_encoder if has_lpips else LAMBDA_ENCODER_WITHOUT_LPIPS


@dataclasses.dataclass(frozen=True)
class Inverter:
    """Frozen networks of inference: G, E (None with mean_init only), LPIPS (None = off) and the
    stage-1 Dm (None unless lambda_dm)."""
    g: Any
    e: Any = None
    lpips: Any = None
    dm: Any = None


def _mse(a, b):
    return jnp.mean(jnp.square(a - b))


def _downsample_to_256(x):
    """The reference compares at <= 256 px: average-pool larger outputs by their factor."""
    n, h, w, c = x.shape
    if h <= 256:
        return x
    f = h // 256
    return x.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))


def invert_one(inv: Inverter, variables: dict, cfg: InvertConfig, target, key, w_mean=None, draws=None, pin=None):
    """Optimise one image. target (H, W, C). variables: {'g': G params, 'e': {'params',
    'batch_stats'?} or None, 'lpips': LPIPS params or None, 'dm' (with lambda_dm): {'params',
    'spectral'} of the stage-1 Dm}. Returns dict with w_plus
    (n_latent, D), noises (list of (r, r, 1)), image (H, W, C), seg (H, W, K) and the loss
    history (step,).

    For tests against the reference (tests/test_training_parity.py; None in production, where
    the program is the same as without them):
    draws: recorded random draws replacing the key's, {'noise': the initial noise maps (1, r, r, 1)}
        and, with `optimize_noise` off, 'step_noise': the maps each step draws, (step, 1, r, r, 1) per layer;
    pin: f(i, values) -> values, called after Adam step i (0-based, traced) with (params
        {'w', 'noises'} before the noise renormalisation, Adam's state, the gradients); the
        optimisation continues from the (params, state) it returns, and the result gets 'trace':
        the values passed, stacked over the steps."""
    x = target[None]
    k_noise, k_step = jax.random.split(key)

    def encode(img):
        return inv.e.apply(variables["e"], img, train=False)

    if cfg.mean_init:
        w0 = jnp.broadcast_to(w_mean.reshape(1, 1, -1), (1, inv.g.n_latent, w_mean.shape[-1]))
    else:
        w0 = encode(x)
    params = {"w": w0, "noises": inv.g.make_noise(k_noise, 1) if draws is None else list(draws["noise"])}
    tx = inference_optimizer(cfg.step, cfg.lr, cfg.lr_rampup, cfg.lr_rampdown)

    def generate(p, key, step_noise=None):
        noise = (p["noises"] if cfg.optimize_noise else inv.g.make_noise(key, 1) if step_noise is None
                 else step_noise)
        return inv.g.apply({"params": variables["g"]}, p["w"], input_is_latent=True, noise=noise)

    ref = _downsample_to_256(x)  # the target at the compared size, once, not every step

    def loss_fn(p, key, step_noise):
        img, seg = generate(p, key, step_noise)
        img = _downsample_to_256(img)
        p_loss = (jnp.mean(inv.lpips.apply({"params": variables["lpips"]}, img, ref)) if inv.lpips is not None
                  else jnp.zeros((), jnp.float32))
        loss = (p_loss + cfg.lambda_mse * _mse(img, ref)
                + (cfg.noise_regularize * losses.noise_regularize(p["noises"]) if cfg.optimize_noise else 0.0))
        if cfg.mean_init:
            loss = loss + cfg.lambda_mean * _mse(p["w"], w0)
        else:
            # E's input, not only its output, held constant: the same gradient, and no
            # linearisation of E traced and dropped in every step
            loss = (loss + cfg.lambda_encoder * _mse(p["w"], encode(jax.lax.stop_gradient(img)))
                    + cfg.lambda_encoder_init * _mse(p["w"], w0))
        if cfg.lambda_dm:
            loss = loss + cfg.lambda_dm * dm_misfit(inv.dm, variables["dm"], x, seg, cfg.dm_mask)
        return loss

    def body(carry, xs):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, xs["key"], xs.get("noise"))
        if not cfg.optimize_noise:
            grads = {**grads, "noises": jax.tree.map(jnp.zeros_like, grads["noises"])}
        updates, opt_state = tx.update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
        seen = None
        if pin is not None:
            seen = (p, opt_state, grads)
            p, opt_state = pin(xs["i"], seen)[:2]
        if cfg.optimize_noise:
            p = {**p, "noises": losses.noise_normalize(p["noises"])}
        return (p, opt_state), (loss, seen)

    steps = {"key": jax.random.split(k_step, cfg.step)}
    if pin is not None:
        steps["i"] = jnp.arange(cfg.step)
    if draws is not None and "step_noise" in draws:
        steps["noise"] = list(draws["step_noise"])
    (p, _), (history, trace) = jax.lax.scan(body, (params, tx.init(params)), steps)
    image, seg = generate(p, k_step)
    out = {"w_plus": p["w"][0], "noises": [n[0] for n in p["noises"]], "image": image[0], "seg": seg[0],
           "loss": history}
    return out if pin is None else {**out, "trace": trace}


def invert(inv: Inverter, variables: dict, cfg: InvertConfig, targets, key):
    """`invert_one` vmapped over targets (N, H, W, C): same results as one image at a time."""
    w_mean = None
    if cfg.mean_init:
        w_mean = inv.g.apply({"params": variables["g"]}, jax.random.fold_in(key, 1), cfg.n_mean_latent,
                             method=type(inv.g).mean_latent)[0]
    keys = jax.random.split(key, targets.shape[0])
    return jax.vmap(lambda t, k: invert_one(inv, variables, cfg, t, k, w_mean))(targets, keys)


def jit_invert(inv: Inverter, cfg: InvertConfig):
    """`invert` under jit: f(variables, targets, key), compiled for the default backend."""
    from semgan_jax.xla_cpu import compiler_options

    return jax.jit(lambda v, xs, k: invert(inv, v, cfg, xs, k), compiler_options=compiler_options(jax.default_backend()))


def _run_dirs(workdir):
    """(workdir, its config, its stage-1 workdir) of a train-encoder (or train-gan) workdir."""
    import json
    from pathlib import Path

    import ml_collections

    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --checkpoint must be a train-encoder (or train-gan) workdir")
    cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
    return workdir, cfg, (cfg.stage1 if "stage1" in cfg else workdir)


def stage1_config(workdir):
    """The stage-1 run's config of a train-encoder (or train-gan) workdir."""
    from semgan_jax.train.encoder import load_stage1_config

    return load_stage1_config(_run_dirs(workdir)[2])


def load_inverter(workdir, use_lpips: str = "auto", perceptual_net: str | None = None, with_dm: bool = False):
    """(Inverter, variables, stage-1 config) from a stage-2 workdir (E + its stage-1 G), or from a
    stage-1 workdir (G only: for `mean_init`). The perceptual term is the stage-2 config's
    `lpips.net` unless `perceptual_net` names another (LPIPS 'vgg' / 'alex', or 'dr': the stage-1
    Dr, which needs no files). use_lpips: 'on' (missing weights are an error), 'off', or 'auto'
    (on when the weight files are found). with_dm: also the stage-1 Dm (`Inverter.dm`, variables
    'dm'), for `InvertConfig.lambda_dm`."""
    import ml_collections

    from semgan_jax.checkpoint import restore_latest
    from semgan_jax.parallel import make_mesh, replicated
    from semgan_jax.train import encoder as stage2

    workdir, cfg, stage1_dir = _run_dirs(workdir)
    s1, gm, s1_state = stage2.load_stage1(stage1_dir)
    if "stage1" in cfg:
        models = stage2.build_models(s1.model, cfg)
        state, _ = restore_latest(workdir / "checkpoints", lambda: stage2.init_state(models, jax.random.PRNGKey(0)),
                                  replicated(make_mesh(1)), "stage-2 checkpoint")
        e_vars = stage2.encoder_variables(state.params, state.batch_stats)
        e, lpips_cfg = models.e, cfg.lpips
    else:
        e, e_vars, lpips_cfg = None, None, stage2.default_config().lpips
    if perceptual_net:
        lpips_cfg = ml_collections.ConfigDict({**lpips_cfg.to_dict(), "net": perceptual_net})
    g, g_ema = gm.g, s1_state.g_ema
    lpips_module, lpips_params = None, None
    if use_lpips != "off":
        from semgan_jax.perceptual.convert import WeightsNotFoundError

        try:
            lpips_module, lpips_params = stage2.load_perceptual(lpips_cfg, gm, s1_state)
        except (WeightsNotFoundError, ImportError):
            if use_lpips == "on":
                raise
            print("LPIPS weights not found: optimising without the perceptual term (see docs/metrics.md)")
    variables = {"g": g_ema, "e": e_vars, "lpips": lpips_params}
    if with_dm:
        variables["dm"] = {"params": s1_state.d_seg, "spectral": s1_state.d_seg_spectral}
    return Inverter(g=g, e=e, lpips=lpips_module, dm=gm.d_seg if with_dm else None), variables, s1

