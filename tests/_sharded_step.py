"""Run by test_gan_step with 8 fake CPU devices: one stage-1 iteration on a 1-device mesh and on
an 8-device mesh, from the same state and global batch, and print the max abs differences.

Two cases (argv: tests dir, then cases):
  "sgd_reg":   the iteration with both lazy regularisers (R1 on Dr and Dm, path length), all
               optimisers replaced by SGD with lr 1, so each param difference IS the difference of
               the gradients the two meshes computed (global-batch statistics included);
  "adam":      the real iteration (lazy Adam), without regularisers; also `stable_param_max_diff`,
               the param difference over the elements whose gradient is well above Adam's eps
               (|g| > 1e-6, read from the second moment), `eps_scale_fraction`, the share that is
               not, and `metric_diffs`, each loss's difference.
Prints one JSON object: {case: {param_max_diff, state_max_diff, metric_max_diff, ...}, devices}.
"""

import dataclasses
import json
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, sys.argv[1])
from conftest import tiny_gan_config  # noqa: E402

from semgan_jax.parallel import global_batch, make_mesh, replicated  # noqa: E402
from semgan_jax.train import gan  # noqa: E402


def max_diff(a, b) -> float:
    d = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                     if np.size(x) else 0.0, a, b)
    return max(jax.tree.leaves(d))


def run_case(case: str) -> dict:
    cfg = tiny_gan_config()
    models = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every)
    reg = case == "sgd_reg"
    if reg:
        sgd = optax.sgd(1.0)
        models = dataclasses.replace(models, g_tx=sgd, d_img_tx=sgd, d_seg_tx=sgd)
    hp = gan.hparams_from_config(cfg.train)
    rng = np.random.default_rng(0)
    b, s, k = cfg.train.batch_size, cfg.model.size, cfg.model.seg_dim
    labels = rng.integers(0, k, (b, s, s))
    batch = {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
             "seg_image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
             "seg_mask": (2.0 * np.eye(k)[labels] - 1).astype(np.float32)}
    out = {}
    for n in (1, 8):
        mesh = make_mesh(n)
        state = jax.jit(lambda key: gan.init_state(models, key), out_shardings=replicated(mesh))(
            jax.random.PRNGKey(0))
        step = gan.jit_train_step(models, hp, mesh)
        out[n] = jax.device_get(step(state, global_batch(batch, mesh), reg, reg))
    (s1, m1), (s8, m8) = out[1], out[8]
    res = {"param_max_diff": max_diff((s1.g, s1.d_img, s1.d_seg), (s8.g, s8.d_img, s8.d_seg)),
           "state_max_diff": max_diff(s1, s8), "metric_max_diff": max_diff(m1, m8)}
    if not reg:
        res.update(adam_stable_diff(s1, s8), metric_diffs=metric_diffs(m1, m8))
    return res


def adam_stable_diff(s1, s8) -> dict:
    """Adam's first update is lr·g / (|g| + eps): for |g| near eps = 1e-8 any reduction-order
    difference in g moves it by up to lr. Over the elements with |g| > 1e-6 on both meshes
    (second moment nu = (1 - b2)·g² after the first step; 1 - b2 >= 0.008 for every net here),
    the update is lr·sign(g) within 1 %, so the two meshes must agree there to float32 noise."""
    diffs, n_eps, n_all = [], 0, 0
    for net in ("g", "d_img", "d_seg"):
        nu1, nu8 = (optax.tree_utils.tree_get(getattr(s, f"{net}_opt"), "nu") for s in (s1, s8))
        p1, p8 = getattr(s1, net), getattr(s8, net)
        for a, b, v1, v8 in zip(*(jax.tree.leaves(t) for t in (p1, p8, nu1, nu8))):
            stable = np.minimum(np.asarray(v1), np.asarray(v8)) > 0.008 * 1e-12
            n_eps += int(np.size(stable) - stable.sum())
            n_all += int(np.size(stable))
            d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))[stable]
            diffs.append(float(d.max()) if d.size else 0.0)
    return {"stable_param_max_diff": max(diffs), "eps_scale_fraction": n_eps / n_all}


def metric_diffs(m1, m8) -> dict:
    return {k: abs(float(m1[k]) - float(m8[k])) for k in m1}


if __name__ == "__main__":
    print(json.dumps({"devices": jax.device_count(), **{case: run_case(case) for case in sys.argv[2:]}}))
