"""Optimisers, EMA and schedules of semgan_jax.train.state against hand-rolled NumPy versions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from semgan_jax.train import state as S


def _run(opt, params, grad_fn, steps, wrap=lambda p: p, unwrap=lambda p: p):
    """Steps `opt` under jit; returns the (unwrapped) params after every step."""
    p = wrap(params)
    st = opt.init(p)

    @jax.jit
    def step(p, st):
        upd, st = opt.update(grad_fn(unwrap(p)), st, p)
        return optax.apply_updates(p, upd), st

    out = []
    for _ in range(steps):
        p, st = step(p, st)
        out.append(jax.tree.map(np.asarray, unwrap(p)))
    return out


# ------------------------------------------------------------------ stage 1

def _torch_adam(p, grads, lr, b1, b2, eps=1e-8):
    """torch.optim.Adam, written out."""
    p, m, v, out = np.array(p, np.float64), 0.0, 0.0, []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
        p = p - lr / (1 - b1 ** t) * m / denom
        out.append(p)
    return out


@pytest.mark.parametrize("reg_every", [4, 16])
def test_lazy_adam_matches_torch_adam_with_c_correction(reg_every):
    c = reg_every / (reg_every + 1)
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=3) * 10 ** rng.uniform(-3, 0) for _ in range(6)]
    it = iter(grads)
    opt = S.lazy_adam(0.002, reg_every)
    st = opt.init(jnp.zeros(3))
    p = jnp.zeros(3)
    expected = _torch_adam(np.zeros(3), grads, 0.002 * c, 0.0, 0.99 ** c)
    for want in expected:
        upd, st = opt.update(jnp.asarray(next(it), jnp.float32), st, p)
        p = optax.apply_updates(p, upd)
        np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-8)


def test_ema_arithmetic():
    ema = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(4.0)}
    params = {"a": jnp.array([3.0, 2.0]), "b": jnp.array(0.0)}
    out = jax.jit(S.ema_update)(ema, params, 0.75)
    np.testing.assert_allclose(out["a"], [1.5, -1.0])
    np.testing.assert_allclose(out["b"], 3.0)
    copy = S.ema_update(ema, params, 0.0)
    np.testing.assert_allclose(copy["a"], params["a"])
    assert S.EMA_DECAY == pytest.approx(0.9977843871238888, rel=1e-15)


# ------------------------------------------------------------------ gradient centralisation

def test_centralize_gradients_flax_layout():
    grads = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0]]),        # (in, out): column means 2, 4
             "k": jnp.arange(24.0).reshape(2, 2, 3, 2),       # (kh, kw, in, out)
             "b": jnp.array([1.0, 5.0])}
    out, _ = S.centralize_gradients().update(grads, optax.EmptyState())
    np.testing.assert_allclose(out["w"], [[-1.0, -2.0], [1.0, 2.0]])
    np.testing.assert_allclose(out["k"].mean(axis=(0, 1, 2)), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(out["k"] - grads["k"], jnp.broadcast_to(
        -grads["k"].mean(axis=(0, 1, 2)), (2, 2, 3, 2)))
    np.testing.assert_allclose(out["b"], grads["b"])


# ------------------------------------------------------------------ Ranger

def numpy_ranger(params, grad_fn, lrs, clip=None, alpha=0.5, k=6, thr=5.0, b1=0.95, b2=0.999,
                 eps=1e-5):
    """semanticGAN/ranger.py's step loop (GC on, weight decay 0) in NumPy float64, flax layout;
    optional torch clip_grad_norm_ before it. lrs[i] is the rate of step i."""
    params = {n: np.array(p, np.float64) for n, p in params.items()}
    state = {n: dict(step=0, m=np.zeros_like(p), v=np.zeros_like(p), slow=p.copy())
             for n, p in params.items()}
    n_sma_max = 2 / (1 - b2) - 1
    out = []
    for lr in lrs:
        grads = grad_fn(params)
        if clip is not None:
            total = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads.values()))
            coef = min(clip / (total + 1e-6), 1.0)
            grads = {n: g * coef for n, g in grads.items()}
        for n, p in params.items():
            g, st = grads[n], state[n]
            if g.ndim > 1:
                g = g - g.mean(axis=tuple(range(g.ndim - 1)), keepdims=True)
            st["step"] += 1
            t = st["step"]
            st["v"] = b2 * st["v"] + (1 - b2) * g * g
            st["m"] = b1 * st["m"] + (1 - b1) * g
            b2t = b2 ** t
            n_sma = n_sma_max - 2 * t * b2t / (1 - b2t)
            if n_sma > thr:
                step_size = math.sqrt((1 - b2t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2)
                                      / n_sma * n_sma_max / (n_sma_max - 2)) / (1 - b1 ** t)
                update = st["m"] / (np.sqrt(st["v"]) + eps)
            else:
                step_size = 1.0 / (1 - b1 ** t)
                update = st["m"]
            p -= step_size * lr * update
            if t % k == 0:
                st["slow"] += alpha * (p - st["slow"])
                p[...] = st["slow"]
        out.append({n: p.copy() for n, p in params.items()})
    return out


RNG = np.random.default_rng(0)
P0 = {"w": RNG.normal(size=(3, 2)), "b": RNG.normal(size=(2,))}
TARGET = {"w": RNG.normal(size=(3, 2)), "b": RNG.normal(size=(2,))}
SCALE = {"w": np.array([[1.0, 30.0]] * 3), "b": np.array([0.1, 3.0])}


def quad_loss(p):
    return sum(0.5 * (SCALE[n] * (p[n] - TARGET[n]) ** 2).sum() for n in p)


def quad_grad(p):
    return {n: SCALE[n] * (p[n] - TARGET[n]) for n in p}


def _lookahead_run(opt, steps):
    p0 = {n: jnp.asarray(v, jnp.float32) for n, v in P0.items()}
    return _run(opt, p0, quad_grad, steps, wrap=optax.LookaheadParams.init_synced,
                unwrap=lambda lp: lp.fast)


def test_ranger_matches_numpy_reference_and_descends():
    steps = 14       # steps 1-5 un-rectified (N_sma <= 5), then adaptive; lookahead at 6, 12
    got = _lookahead_run(S.ranger(0.05), steps)
    want = numpy_ranger(P0, quad_grad, [0.05] * steps)
    for g, w in zip(got, want):
        for n in P0:
            np.testing.assert_allclose(g[n], w[n], rtol=2e-5, atol=2e-6)
    losses = [quad_loss(P0)] + [quad_loss(g) for g in got]
    assert losses[-1] < 0.8 * losses[0]


def test_ranger_radam_equals_optax_radam_without_eps():
    """Only eps placement (and > vs >=) separate Ranger's RAdam from optax's. optax is run in
    float64 because in float32 its b2 ** t is off by up to 0.6% at the first rectified steps."""
    grads = [RNG.normal(size=4) for _ in range(10)]
    ours = S.scale_by_ranger_radam(eps=0.0)
    s1 = ours.init(jnp.zeros(4, jnp.float32))
    with jax.enable_x64(True):
        theirs = optax.scale_by_radam(0.95, 0.999, eps=0.0)
        s2 = theirs.init(jnp.zeros(4, jnp.float64))
        want = []
        for g in grads:
            u2, s2 = theirs.update(jnp.asarray(g, jnp.float64), s2)
            want.append(np.asarray(u2))
    for g, w in zip(grads, want):
        u1, s1 = ours.update(jnp.asarray(g, jnp.float32), s1)
        np.testing.assert_allclose(u1, w, rtol=1e-5)


# ------------------------------------------------------------------ encoder optimiser

def reference_lrs(n_steps, lr, lr_min, start, end):
    """Rate used by each step when `update_learning_rate` runs after every step."""
    cur, out = lr, []
    for i in range(n_steps):
        out.append(cur)
        if start <= i < end:
            cur = lr_min + 0.5 * (lr - lr_min) * (1 + math.cos((i - start) / (end - start) * math.pi))
    return out


def test_encoder_lr_schedule_matches_reference_loop():
    sched = S.encoder_lr_schedule(1e-3, 1e-5, 3, 8)
    np.testing.assert_allclose([float(sched(n)) for n in range(14)],
                               reference_lrs(14, 1e-3, 1e-5, 3, 8), rtol=1e-6)


def test_encoder_lr_schedule_defaults_known_values():
    sched = S.encoder_lr_schedule()
    np.testing.assert_allclose(float(sched(0)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(sched(30001)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(sched(30001 + 35000)), (1e-3 + 1e-5) / 2, rtol=1e-5)
    last = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(69999 / 70000 * math.pi))
    np.testing.assert_allclose([float(sched(100000)), float(sched(500000))], [last, last],
                               rtol=1e-4)


def test_torch_clip():
    tiny = {"a": jnp.array([0.6e-6, 0.0]), "b": jnp.array([0.8e-6])}       # norm 1e-6
    out, _ = S.clip_by_global_norm_torch(1e-7).update(tiny, optax.EmptyState())
    # coef = 1e-7 / (1e-6 + 1e-6) = 0.05 (optax.clip_by_global_norm would give 0.1)
    np.testing.assert_allclose(out["b"], [0.04e-6], rtol=1e-5)
    small = {"a": jnp.array([0.6, 0.0]), "b": jnp.array([0.8])}
    out, _ = S.clip_by_global_norm_torch(5.0).update(small, optax.EmptyState())
    np.testing.assert_allclose(out["a"], small["a"])


def test_encoder_optimizer_matches_numpy_reference():
    """Clip 2.0 + Ranger + schedule (window compressed to steps 3-8) for 14 steps."""
    steps, start, end = 14, 3, 8
    opt = S.encoder_optimizer(lr=0.05, lr_min=0.001, decay_start=start, decay_end=end,
                              grad_clip=2.0)
    got = _lookahead_run(opt, steps)
    want = numpy_ranger(P0, quad_grad, reference_lrs(steps, 0.05, 0.001, start, end), clip=2.0)
    for g, w in zip(got, want):
        for n in P0:
            np.testing.assert_allclose(g[n], w[n], rtol=2e-5, atol=2e-6)


def test_encoder_optimizer_adam_option():
    p0 = {n: jnp.asarray(v, jnp.float32) for n, v in P0.items()}
    got = _run(S.encoder_optimizer(grad_clip=None, optimizer="adam"), p0, quad_grad, 1)[0]
    # first Adam step moves every coordinate by lr against the sign of its gradient
    for n in P0:
        np.testing.assert_allclose(got[n], P0[n] - 1e-3 * np.sign(quad_grad(P0)[n]), rtol=1e-5)
    with pytest.raises(ValueError):
        S.encoder_optimizer(optimizer="sgd")


# ------------------------------------------------------------------ inference

def test_inference_lr_schedule_known_steps():
    # t = step / 100; rampup 0.05, rampdown 0.25
    steps = jnp.array([0, 1, 5, 50, 80, 100])
    expected = [0.0, 0.1 * 0.2, 0.1, 0.1, 0.1 * (0.5 + 0.5 * math.cos(0.2 * math.pi)), 0.0]
    np.testing.assert_allclose(S.inference_lr_schedule(steps, 100, 0.1), expected, rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(S.inference_lr_schedule(80, 100, 0.1), expected[4], rtol=1e-6)


def test_inference_optimizer_steps():
    g = jnp.array([0.5, -2.0])
    p = _run(S.inference_optimizer(100), jnp.zeros(2), lambda p: g, 2)
    np.testing.assert_allclose(p[0], [0.0, 0.0])                  # lr 0 at step 0
    # Adam moves by ±lr(1) = ±0.02; optax's float32 1 - b2**2 costs ~1e-5 relative here
    np.testing.assert_allclose(p[1], [-0.02, 0.02], rtol=5e-5)
