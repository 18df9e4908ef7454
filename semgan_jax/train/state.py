"""Optimisers, EMA and learning-rate schedules of SemanticGAN's stages, as optax transforms.

- Stage 1 (train_seg_gan.py): `lazy_adam` per network, `ema_update` with `EMA_DECAY`.
- Stage 2 (train_enc.py): `encoder_optimizer` = torch-style global-norm clipping + `ranger`
  (semanticGAN/ranger.py: gradient centralisation + RAdam + Lookahead) with
  `encoder_lr_schedule`.
- Inference (inference.py): `inference_optimizer` = Adam with `inference_lr_schedule`.

Parameter layout: flax puts a kernel's output features on the LAST axis ((kh, kw, in, out),
(in, out)), torch on the first; `centralize_gradients` is written for the flax layout.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# EMA decay of the generator, as `accum` in train_seg_gan.py: 0.5 ** (32 / 10000) ≈ 0.997784.
EMA_DECAY = 0.5 ** (32 / (10 * 1000))


# --------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------

def lazy_adam(lr: float, reg_every: int, beta1: float = 0.0, beta2: float = 0.99,
              eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam for lazily regularised networks, as the reference's stage-1 `optim.Adam` setup.

    With c = reg_every / (reg_every + 1): learning rate lr·c, betas (beta1**c, beta2**c); eps is
    torch's default. The reference steps the same optimiser for the main loss and, every
    reg_every iterations, once more for the regulariser, so one optax state must serve both
    updates (the bias-correction count includes regulariser steps).

    optax.adam computes torch's update, except that it evaluates the bias correction 1 − b2**t
    in float32 where torch uses Python floats (~1e-5 relative in the first steps, fading as
    1/t); left as is.
    """
    c = reg_every / (reg_every + 1)
    return optax.adam(lr * c, b1=beta1 ** c, b2=beta2 ** c, eps=eps)


def ema_update(ema_params, params, decay: float = EMA_DECAY):
    """EMA of parameters, as `accumulate(model1, model2, decay)`: ema·decay + (1 − decay)·params.

    Pytrees of the same structure; jit-friendly. The reference averages `named_parameters()`
    only (buffers are not averaged), so pass parameters, not batch statistics or noise buffers.
    `ema_update(ema, params, 0.0)` is the reference's initial copy.
    """
    return jax.tree.map(lambda e, p: e * decay + (1.0 - decay) * p, ema_params, params)


def ema_decay_at(step, decay: float = EMA_DECAY, rampup: float = 0.0):
    """EMA decay of the update made after `step` iterations (a traced int or a Python int).

    rampup = 0: the constant `decay` (the reference). rampup > 0: StyleGAN2-ADA's ramp-up,
    ``ema_nimg = min(ema_kimg * 1000, cur_nimg * rampup); beta = 0.5 ** (batch / ema_nimg)``,
    written in iterations: the half-life min(h, rampup * step) iterations, h = log(0.5) / log(decay)
    the reference's (312.5 iterations for 0.5 ** (32 / 10000)), so that the average forgets the
    random initialisation in short runs. Step 0 copies (beta = 0), as ADA's first update.
    """
    if not rampup:
        return decay  # a Python float, as before: ema_update's numbers are the reference's
    half_life = math.log(0.5) / math.log(decay)
    ramped = jnp.minimum(half_life, rampup * jnp.asarray(step, jnp.float32))
    return jnp.power(jnp.float32(0.5), 1.0 / jnp.maximum(ramped, 1e-8)).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Stage 2: Ranger and the encoder optimiser
# --------------------------------------------------------------------------------------------

def centralize_gradients() -> optax.GradientTransformation:
    """Gradient centralisation as `centralized_gradient` in ranger.py (use_gc=True,
    gc_conv_only=False): every leaf with more than one axis has its mean over all axes except
    the output-feature axis subtracted; 1-D leaves (biases, norm scales) pass unchanged.

    The reference averages over torch's axes 1.. (output first); here over axes ..-2 because
    flax kernels put the output features last. (`optax.centralize` uses torch's axes, which
    would be wrong for flax kernels.)
    """
    def centralize(g):
        if g.ndim <= 1:
            return g
        return g - jnp.mean(g, axis=tuple(range(g.ndim - 1)), keepdims=True)

    return optax.stateless(lambda updates, params: jax.tree.map(centralize, updates))


class RangerRAdamState(NamedTuple):
    """State of `scale_by_ranger_radam`: step count and the two uncorrected moments."""
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_ranger_radam(b1: float = 0.95, b2: float = 0.999, eps: float = 1e-5,
                          threshold: float = 5.0) -> optax.GradientTransformation:
    """The RAdam part of `Ranger.step` without the learning rate: returns the direction to be
    scaled by −lr (as `optax.scale_by_radam` does).

    With m, v the moments, t the step (from 1), rho_inf = 2 / (1 − b2) − 1 and
    rho_t = rho_inf − 2t·b2^t / (1 − b2^t):
      rho_t > threshold: r_t · sqrt(1 − b2^t) / (1 − b1^t) · m / (sqrt(v) + eps), with
                         r_t = sqrt((rho_t−4)(rho_t−2)·rho_inf / ((rho_inf−4)(rho_inf−2)·rho_t))
      otherwise:         m / (1 − b1^t)
    Ranger's weight decay defaults to 0 and is not used by train_enc.py, so it is left out.

    Why not `optax.scale_by_radam`: Ranger adds eps to sqrt(v) before bias correction, i.e.
    its eps is eps / sqrt(1 − b2^t) in optax's m̂ / (sqrt(v̂) + eps) form (≈13× larger at the
    first adaptive step with b2 = 0.999); it also switches on rho_t > threshold where optax
    uses >=. With eps = 0 the two coincide. The step size, a function of t only that the
    reference computes in double precision, is computed here in float32 from expm1 and a
    cancellation-free form of rho_t (relative error < 3e-7; evaluating b2 ** t with b2 rounded to
    float32, as optax does, is off by up to 0.6% at the first rectified steps).
    """
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    log_b1, c = math.log(b1), -math.log(b2)
    # rho_t = rho_inf - 2t·b2^t / (1 - b2^t) = k0 + (2 / c)·(1 - a / expm1(a)) with a = c·t and
    # k0 = rho_inf - 2 / c (≈ (1 - b2) / 6): no cancellation between two numbers near rho_inf.
    k0 = rho_inf - 2.0 / c
    rect_const = rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0))

    def rho_of(t):
        a = c * t
        small = jnp.minimum(a, 1.0)
        # h = 1 - a / expm1(a) = (expm1(a) - a) / expm1(a); for a < 1 the numerator comes from
        # its Taylor series sum_{k>=2} a^k / k! (Horner), which avoids the cancellation
        poly = 0.0
        for k in range(13, 1, -1):
            poly = poly * small + 1.0 / math.factorial(k)
        series = small * small * poly
        h = jnp.where(a < 1.0, series / jnp.expm1(small), 1.0 - a / jnp.expm1(a))
        return k0 + (2.0 / c) * h

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return RangerRAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, updates)
        count = state.count + 1
        t = count.astype(jnp.float32)
        rho = rho_of(t)
        adaptive = rho > threshold
        bc1 = -jnp.expm1(log_b1 * t)                       # 1 - b1^t
        bc2 = -jnp.expm1(-c * t)                           # 1 - b2^t
        rect = jnp.sqrt(jnp.maximum(bc2 * (rho - 4.0) * (rho - 2.0) / rho * rect_const, 0.0))
        step_size = jnp.where(adaptive, rect, 1.0) / bc1

        def direction(m, v):
            d = jnp.where(adaptive, m / (jnp.sqrt(v) + eps), m)
            return (step_size * d).astype(m.dtype)

        return jax.tree.map(direction, mu, nu), RangerRAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def ranger(learning_rate: optax.ScalarOrSchedule = 1e-3, alpha: float = 0.5, k: int = 6,
           threshold: float = 5.0, b1: float = 0.95, b2: float = 0.999, eps: float = 1e-5,
           use_gc: bool = True) -> optax.GradientTransformation:
    """Ranger (semanticGAN/ranger.py, version 2020.9.4) with its defaults: gradient
    centralisation (before the moments, gc_loc=True), RAdam (betas (0.95, 0.999), eps 1e-5,
    N_sma threshold 5) and Lookahead (every k = 6 steps slow += alpha·(fast − slow), alpha 0.5,
    then fast = slow).

    Built on `optax.lookahead`, so the params given to `update` and updated by
    `optax.apply_updates` are `optax.LookaheadParams(fast=..., slow=...)`; gradients are taken
    w.r.t. `.fast`, and `.fast` are the weights the reference uses and saves. Initialise with
    `opt.init(optax.LookaheadParams.init_synced(params))`: Ranger's slow buffer is a copy of
    the weights at that optimiser's first step.
    """
    fast = [centralize_gradients()] if use_gc else []
    fast += [scale_by_ranger_radam(b1, b2, eps, threshold),
             optax.scale_by_learning_rate(learning_rate)]
    return optax.lookahead(optax.chain(*fast), sync_period=k, slow_step_size=alpha)


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """`torch.nn.utils.clip_grad_norm_`: scale all gradients by min(1, max_norm / (‖g‖ + 1e-6)),
    ‖g‖ the global L2 norm (optax.clip_by_global_norm has no 1e-6)."""
    def clip(updates, params):
        coef = jnp.minimum(max_norm / (optax.tree.norm(updates) + 1e-6), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates)

    return optax.stateless(clip)


def encoder_lr_schedule(lr: float = 1e-3, lr_min: float = 1e-5, decay_start: int = 30000,
                        decay_end: int = 100000) -> optax.Schedule:
    """Encoder learning rate per update, as `update_learning_rate` in train_enc.py.

    The reference sets the rate AFTER the step of iteration i to
        f(i) = lr_min + (lr − lr_min)·(1 + cos(pi·(i − decay_start) / (decay_end − decay_start)))/2
    for decay_start <= i < decay_end and leaves it unchanged otherwise, so update number n
    (0-based, = iteration n from a fresh start) uses lr for n <= decay_start, f(n − 1) inside
    the window, and f(decay_end − 1) (just above lr_min, never exactly lr_min) from then on.
    Reference defaults: --lr 0.001, --lr_decay 1e-5, --lr_decay_iter_start 30000,
    --lr_decay_iter_end 100000.
    """
    span = decay_end - decay_start

    def schedule(count):
        t = jnp.clip(count - 1 - decay_start, 0, span - 1)
        return lr_min + 0.5 * (lr - lr_min) * (1.0 + jnp.cos(jnp.pi * t / span))

    return schedule


def encoder_optimizer(lr: float = 1e-3, lr_min: float = 1e-5, decay_start: int = 30000,
                      decay_end: int = 100000, grad_clip: float | None = 5.0,
                      optimizer: str = "ranger") -> optax.GradientTransformation:
    """One encoder optimiser of train_enc.py: torch-style clipping (`grad_clip`, None for
    --no_grad_clip), then Ranger (default) or torch-default Adam (--optimizer adam), both with
    `encoder_lr_schedule`.

    The reference keeps TWO such optimisers over the same encoder weights, stepped once each per
    iteration: the unlabeled update (grad_clip = --unlabel_grad_clip = 2.0) and then the labeled
    one (grad_clip = --label_grad_clip = 5.0); each has its own moments, step count, schedule
    and (Ranger) slow weights. With Ranger, keep the shared fast weights plus one slow copy per
    optimiser and call each as
        upd, st = opt.update(grads, st, LookaheadParams(fast=w, slow=slow_i))
        w, slow_i = optax.apply_updates(LookaheadParams(w, slow_i), upd)
    To match the reference exactly, slow_i starts as the weights at optimiser i's first step
    (the labeled one: the weights after the first unlabeled update). With Adam the params are
    the plain weights.
    """
    schedule = encoder_lr_schedule(lr, lr_min, decay_start, decay_end)
    if optimizer == "ranger":
        opt = ranger(schedule)
    elif optimizer == "adam":
        opt = optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
    else:
        raise ValueError(f"optimizer must be 'ranger' or 'adam', got {optimizer!r}")
    if grad_clip is None:
        return opt
    return optax.chain(clip_by_global_norm_torch(grad_clip), opt)


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------

def inference_lr_schedule(step, total: int, lr: float = 0.1, rampup: float = 0.05,
                          rampdown: float = 0.25):
    """Learning rate at optimisation step `step` of `total`, as `get_lr(step / total, lr,
    rampdown, rampup)` in inference.py: with t = step / total,
        lr · (1 − cos(pi · min(1, (1 − t) / rampdown))) / 2 · min(1, t / rampup).
    Note it is 0 at step 0 (Adam's moments still take that step's gradient). jnp-friendly.
    """
    t = step / total
    ramp = jnp.minimum(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * jnp.cos(ramp * math.pi)
    return lr * ramp * jnp.minimum(1.0, t / rampup)


def inference_optimizer(total: int, lr: float = 0.1, rampup: float = 0.05,
                        rampdown: float = 0.25) -> optax.GradientTransformation:
    """Adam (torch defaults) over the latent and noise maps with `inference_lr_schedule`, as
    inference.py's `optim.Adam` whose lr is set before each step i to get_lr(i / total).
    Params: the latent (and, unless --no_noises, the noise maps) as one pytree."""
    return optax.adam(lambda count: inference_lr_schedule(count, total, lr, rampup, rampdown),
                      b1=0.9, b2=0.999, eps=1e-8)
