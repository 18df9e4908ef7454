"""Non-finite losses: every optimiser update of a train step is applied only when its loss and
all its gradients are finite, and the step records what it refused in `health`, a small pytree
inside the train state:

    {'bad_step': int32, the 0-based iteration of the first refused update (-1: none),
     'bad_updates': int32, bit k set when update k was refused in that iteration,
     'skipped': int32, refused updates so far}

The host (`check`) then either stops with an error naming the iteration and the networks
(`on_nonfinite='stop'`, the default; nothing after the last good checkpoint is saved) or lets
training go on without the refused updates (`'skip'`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

MODES = ("stop", "skip")


def init_health() -> dict:
    return {"bad_step": jnp.full((), -1, jnp.int32), "bad_updates": jnp.zeros((), jnp.int32),
            "skipped": jnp.zeros((), jnp.int32)}


def all_finite(*trees) -> jax.Array:
    """True when every leaf of every tree is finite (bool scalar)."""
    leaves = [x for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def keep_if(ok, new, old):
    """`new` if `ok`, else `old` (same pytree structure). One `lax.cond` over the whole tree,
    not a `jnp.where` per leaf: with a select per leaf XLA:CPU took 238 s instead of 107 s to
    compile the 16-px stage-2 step (benchmarks/ours.py --what encoder --width narrow)."""
    return jax.lax.cond(ok, lambda: new, lambda: old)


def apply_updates(tx: optax.GradientTransformation, grads, opt_state, params, loss):
    """One optimiser step, refused when `loss` or a gradient is non-finite:
    (params, opt_state, ok) with the old params and optimiser state when not ok."""
    updates, new_opt = tx.update(grads, opt_state, params)
    ok = all_finite(loss, grads)
    params, opt_state = keep_if(ok, (optax.apply_updates(params, updates), new_opt), (params, opt_state))
    return params, opt_state, ok


def record(health: dict, step, oks) -> dict:
    """`health` after iteration `step` whose updates succeeded as `oks` (bools, in name order)."""
    refused = sum((~ok).astype(jnp.int32) << k for k, ok in enumerate(oks))
    first = (health["bad_step"] < 0) & (refused != 0)
    return {"bad_step": jnp.where(first, step, health["bad_step"]),
            "bad_updates": jnp.where(first, refused, health["bad_updates"]),
            "skipped": health["skipped"] + sum((~ok).astype(jnp.int32) for ok in oks)}


def check(health: dict, names: tuple[str, ...], mode: str, last_checkpoint: str) -> None:
    """Host side: in 'stop' mode raise FloatingPointError for the first refused update, naming
    the iteration (1-based, as metrics.jsonl) and the networks; 'skip' mode returns."""
    if mode not in MODES:
        raise ValueError(f"on_nonfinite must be one of {MODES}, got {mode!r}")
    bad_step, refused = (int(v) for v in jax.device_get((health["bad_step"], health["bad_updates"])))
    if mode == "stop" and bad_step >= 0:
        which = ", ".join(n for k, n in enumerate(names) if refused >> k & 1)
        raise FloatingPointError(f"non-finite loss or gradient of {which} at step {bad_step + 1}; the update was "
                                 f"not applied and training stopped; last good checkpoint: {last_checkpoint} "
                                 "(set train.on_nonfinite='skip' to skip such updates instead)")
