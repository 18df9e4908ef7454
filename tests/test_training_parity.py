"""The stage-1 train step against the official train_seg_gan.py loop, phase by phase.

The fixtures (tools/make_training_fixtures.py; no torch needed here) hold the official loop run
in float64 on tiny networks with every random draw recorded, and its state after every optimiser
update. Each iteration here starts from the official state; `train_step` gets the recorded draws
(`draws=`) and, after every update, records what it computed and continues from the official
values (`pin=`), so each update is compared on the official inputs: gradients (Adam's first
moment: beta1 = 0), second moments, Adam's step count, parameter updates, Dm's spectral-norm
vectors, the path-length mean, G_ema and every logged loss.

The official loop computes R1 on Dr while Dr's requires_grad is still off from the Dm step, so no R1
gradient reaches Dr and its Adam steps on zeros; `train.r1_img_zero_grad=True` reproduces that and
the step is compared with it on; the default (R1 reaching Dr) is compared with the gradient the
official R1 gives Dr with requires_grad on, which the fixture records beside it.

Tolerances: max |ours - official| / max |official| per network <= 1e-3 (losses 1e-5 relative).
A parameter update is Adam's lr·m / (sqrt(v) + eps), which for gradients near zero turns float32
rounding of the gradient into a different update (at Adam's first step lr·sign(g)); the official
code itself, run in float32 and pinned the same way, differs from its float64 run by the `f32_gap`
the fixture records (up to ~1e-2, 0.6 at a first step). Updates are therefore compared where the
official gradient is at least 1e-3 of the network's largest (those below are held through their
gradients) and held to max(1e-3, that gap); the all-parameter figure is printed beside it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from semgan_jax import losses
from semgan_jax.convert import networks
from semgan_jax.convert.mapping import assemble, import_state_dict
from semgan_jax.train import gan, guard

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("train_stage1_*.npz"))
PHASE = {"Dr": "d_img", "Dm": "d_seg", "Dr R1": "r1_img", "Dm R1": "r1_seg", "G": "g", "G path length": "path"}
NET = {"d_img": "d_img", "r1_img": "d_img", "d_seg": "d_seg", "r1_seg": "d_seg", "g": "g", "path": "g"}
OPT = {"d_img": "d_img_opt", "d_seg": "d_seg_opt", "g": "g_opt"}
TOL, LOSS_TOL = 1e-3, 1e-5


def load(path):
    with np.load(path) as data:
        return json.loads(str(data["meta"])), {k: data[k] for k in data.files if k != "meta"}


def model_config(case: dict) -> dict:
    """Our `model` section for a fixture's official modules (GeneratorSeg / Discriminator capped at
    `cap` channels, Dm with `ndf`)."""
    return {"model": dict(size=case["size"], style_dim=case["style_dim"], n_mlp=case["n_mlp"],
                          seg_dim=case["seg_dim"], image_channels=3 if case["image_mode"] == "RGB" else 1,
                          channel_multiplier=2, channel_base=0, channel_max=case["cap"], lr_mlp=0.01,
                          modconv_impl="input_scaling", dm_ndf=case["ndf"], dm_n_layers=3, dm_num_d=3,
                          dm_max_channels=512, dtype="float32", reg_conv_form="auto")}


class Fixture:
    """A fixture's arrays as torch-keyed dicts and as our Flax variables."""

    def __init__(self, path):
        self.meta, self.arrays = load(path)
        self.case = self.meta["case"]
        self.config = model_config(self.case)
        self.init = {net: self.unpack(self.arrays[f"init/{net}"], net) for net in self.meta["layout"]}

    def unpack(self, vector, net, keys=None) -> dict:
        """A flat vector -> {torch key: array}, for `keys` (default all) of `net` in sorted order."""
        shapes = dict((k, tuple(s)) for k, s in self.meta["layout"][net])
        keys = sorted(shapes) if keys is None else sorted(keys)
        sizes = [int(np.prod(shapes[k])) for k in keys]
        parts = np.split(vector, np.cumsum(sizes)[:-1])
        assert sum(sizes) == vector.size, (net, sum(sizes), vector.size)
        return {k: p.reshape(shapes[k]) for k, p in zip(keys, parts)}

    @functools.cache
    def template_and_table(self, name: str):
        template = networks.template(name, self.config)
        return template, networks.table(name, self.config, template)

    def flax(self, net: str, values: dict) -> dict:
        """Torch-keyed values (a subset) over the initial state dict -> our variables of `net`."""
        template, table = self.template_and_table("g" if net == "g_ema" else net)
        flat = import_state_dict({**self.init[net], **values}, table, template, net)
        return jax.tree.map(jnp.asarray, assemble(flat, template, net))

    def params(self, net: str, vector) -> dict:
        return self.flax(net, self.unpack(vector, net, self.meta["params"][net]))["params"]

    def spectral(self, vector) -> dict:
        keys = [k for k, _ in self.meta["layout"]["d_seg"] if k.endswith(("weight_u", "weight_v"))]
        return self.flax("d_seg", self.unpack(vector, "d_seg", keys))["spectral"]

    def draws(self, it: int, phases) -> dict:
        out = {}
        for phase in ("d_img", "d_seg", "g", "path"):
            if phase not in phases:
                continue
            pre = f"it{it}/draw/{phase}/"
            n = sum(k.startswith(pre + "noise_") for k in self.arrays)
            out[phase] = {"z": self.arrays[pre + "z"], "inject": self.arrays[pre + "inject"],
                          "noise": [self.arrays[f"{pre}noise_{i}"] for i in range(n)]}
            if phase == "path":
                out[phase]["image_noise"] = self.arrays[pre + "image_noise"]
        return out


def adam_state(tx, params, mu, nu, count):
    """An optax lazy-Adam state with the given moments and step count."""
    state = tx.init(params)
    return (state[0]._replace(count=jnp.asarray(count, jnp.int32), mu=mu, nu=nu),) + tuple(state[1:])


def rel(ours, official) -> float:
    """max |ours - official| / max |official| over the leaves of two pytrees."""
    a, b = jax.tree.leaves(ours), jax.tree.leaves(official)
    assert len(a) == len(b)
    num = max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)))) for x, y in zip(a, b))
    den = max(float(jnp.max(jnp.abs(jnp.asarray(y, jnp.float32)))) for y in b)
    return num / den if den else num


def tree_sub(a, b):
    return jax.tree.map(lambda x, y: x - y, a, b)


def rel_where_grad(ours, official, grad, floor: float = 1e-3) -> float:
    """`rel` over the elements whose |grad| >= floor * max |grad| (all leaves of one network)."""
    top = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad))
    keep = jax.tree.map(lambda g: jnp.abs(g) >= floor * top, grad)
    def masked(tree):
        return jax.tree.map(lambda k, x: jnp.where(k, x, 0.0), keep, tree)

    return rel(masked(ours), masked(official))


class Official:
    """The official run's state, advanced phase by phase from the fixture."""

    def __init__(self, fx: Fixture, models):
        self.fx, self.models = fx, models
        self.params = {net: fx.flax(net, {})["params"] for net in ("g", "d_img", "d_seg")}
        self.g_ema = fx.flax("g_ema", {})["params"]
        self.noises = fx.flax("g", {})["noises"]
        self.spectral = fx.flax("d_seg", {})["spectral"]
        zeros = {net: jax.tree.map(jnp.zeros_like, p) for net, p in self.params.items()}
        self.opt = {net: (zeros[net], zeros[net], 0) for net in self.params}
        self.mean_path_length = 0.0

    def state(self, step: int) -> gan.GANState:
        m, z = self.models, jnp.zeros((), jnp.float32)
        txs = {"g": m.g_tx, "d_img": m.d_img_tx, "d_seg": m.d_seg_tx}
        opts = {net: adam_state(txs[net], self.params[net], *self.opt[net]) for net in self.params}
        return gan.GANState(
            step=jnp.asarray(step, jnp.int32), key=jax.random.PRNGKey(0), g=self.params["g"], g_ema=self.g_ema,
            g_noises=self.noises, d_img=self.params["d_img"], d_seg=self.params["d_seg"],
            d_seg_spectral=self.spectral, g_opt=opts["g"], d_img_opt=opts["d_img"], d_seg_opt=opts["d_seg"],
            mean_path_length=jnp.asarray(self.mean_path_length, jnp.float32),
            last_reg={"r1_img": z, "r1_seg": z, "path": z, "path_length": z}, health=guard.init_health())

    def advance(self, it: int, phase: str) -> dict:
        """Apply the fixture's snapshot after (it, phase); returns the phase's official values."""
        fx, a, net = self.fx, self.fx.arrays, NET[phase]
        pre = f"it{it}/{phase}/"
        before = self.params[net]
        self.params[net] = fx.params(net, a[pre + "param"])
        self.opt[net] = (fx.params(net, a[pre + "exp_avg"]), fx.params(net, a[pre + "exp_avg_sq"]),
                         int(a[pre + "step"]))
        if pre + "spectral" in a:
            self.spectral = fx.spectral(a[pre + "spectral"])
        if pre + "mean_path_length" in a:
            self.mean_path_length = float(a[pre + "mean_path_length"][0])
        return {"before": before, "param": self.params[net], "mu": self.opt[net][0], "nu": self.opt[net][1],
                "count": self.opt[net][2], "spectral": self.spectral, "mean_path_length": self.mean_path_length}

    def pinned(self, phase: str, official: dict):
        """The values `train_step`'s pin continues from after `phase` (as the tuple it passes)."""
        net = NET[phase]
        opt = adam_state({"g": self.models.g_tx, "d_img": self.models.d_img_tx, "d_seg": self.models.d_seg_tx}[net],
                         official["param"], official["mu"], official["nu"], official["count"])
        if phase in ("d_img", "r1_img"):
            return (official["param"], opt)
        if phase == "path":
            return (official["param"], opt, jnp.asarray(official["mean_path_length"], jnp.float32))
        return (official["param"], opt, official["spectral"])


@functools.cache
def r1_img_gradient(models, weight: float):
    """Our weighted R1 gradient of Dr, as train_step's R1 update computes it: (params, images) -> grads."""
    def r1(p, images):
        return weight * losses.r1_penalty(lambda x: models.d_img_r1.apply({"params": p}, x), images)

    return jax.jit(jax.grad(r1))


@functools.cache
def pinned_step(models, hp, d_reg: bool, g_reg: bool):
    """jit of train_step with recorded draws and official values pinned after every update:
    (state, batch, draws, pins) -> (metrics, {update: what ours computed})."""
    def run(state, batch, draws, pins):
        captured = {}

        def pin(update, values):
            captured[update] = values
            return pins[update]

        _, metrics = gan.train_step(models, hp, state, batch, d_reg=d_reg, g_reg=g_reg, draws=draws, pin=pin)
        return metrics, captured

    return jax.jit(run)


def compare_iteration(fx: Fixture, official: Official, models, hp, it: int):
    """Run iteration `it` pinned to the official state; returns rows (what, ours vs official, tol, gap)."""
    phases = fx.meta["phases"][it]
    d_reg, g_reg = "r1_img" in phases, "path" in phases
    step = fx.case["start_iter"] + it
    assert gan.regularize_flags(step, hp) == (d_reg, g_reg)
    b = {k: jnp.asarray(fx.arrays[f"it{it}/batch/{k}"]) for k in ("image", "seg_image", "seg_mask")}
    state = official.state(step)
    expected = {phase: official.advance(it, phase) for phase in phases}
    pins = {name: official.pinned(phase, expected[phase]) for name, phase in PHASE.items() if phase in phases}
    ema = official.fx.params("g", fx.arrays[f"it{it}/ema/param"])
    official.g_ema = ema
    pins["EMA"] = (ema,)

    metrics, ours = pinned_step(models, hp, d_reg, g_reg)(state, b, fx.draws(it, phases), pins)
    gaps = fx.meta["f32_gap"]
    rows = []
    for name, phase in PHASE.items():
        if phase not in phases:
            continue
        off, mine, gap = expected[phase], ours[name], gaps[f"it{it}/{phase}"]
        adam = mine[1][0]
        rows += [(f"it{it} {name} gradient", rel(adam.mu, off["mu"]), TOL, gap["exp_avg"]),
                 (f"it{it} {name} second moment", rel(adam.nu, off["nu"]), TOL, gap["exp_avg_sq"]),
                 (f"it{it} {name} Adam step", abs(int(adam.count) - off["count"]), 0, 0.0),
                 (f"it{it} {name} parameter update", rel_where_grad(tree_sub(mine[0], off["before"]),
                                                                   tree_sub(off["param"], off["before"]), off["mu"]),
                  max(TOL, gap["update"]), gap["update"]),
                 (f"it{it} {name} parameter update, all", rel(tree_sub(mine[0], off["before"]),
                                                             tree_sub(off["param"], off["before"])),
                  None, gap["update"])]
        if phase in ("d_seg", "r1_seg", "g"):
            rows.append((f"it{it} {name} Dm spectral u, v", rel(mine[2], off["spectral"]), TOL, 0.0))
        if phase == "path":
            rows.append((f"it{it} {name} mean path length", rel(mine[2], off["mean_path_length"]), LOSS_TOL, 0.0))
    if d_reg:
        intended = fx.params("d_img", fx.arrays[f"it{it}/r1_img/intended_gradient"])
        ours_r1 = r1_img_gradient(models, hp.r1 / 2 * hp.d_reg_every)(expected["d_img"]["param"], b["image"])
        rows.append((f"it{it} Dr R1 gradient (requires_grad on)", rel(ours_r1, intended), TOL, 0.0))
    rows.append((f"it{it} updates refused as non-finite", int(metrics["skipped_updates"]), 0, 0.0))
    rows.append((f"it{it} EMA G_ema", rel(ours["EMA"][0], ema), TOL, gaps[f"it{it}/ema"]["param"]))
    logged = ["d_img", "d_img_real_score", "d_img_fake_score", "d_seg", "d_seg_real_score", "d_seg_fake_score",
              "g", "g_img", "g_seg_adv", "g_seg_feat"]
    logged += ["r1_img", "r1_seg"] * d_reg + ["path", "path_length"] * g_reg
    for k in logged:
        ref = fx.meta["losses"][it][k]
        rows.append((f"it{it} loss {k}", abs(float(metrics[k]) - ref) / max(abs(ref), 1e-12), LOSS_TOL,
                     fx.meta["f32_losses_gap"][it][k]))
    return rows


@pytest.mark.skipif(not FIXTURES, reason="no training fixtures (tools/make_training_fixtures.py)")
@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_stage1_step_matches_official_loop(path):
    fx = Fixture(path)
    c = fx.case
    models = gan.build_models(ml_collections.ConfigDict(fx.config["model"]), 0.002, c["d_reg_every"],
                              c["g_reg_every"])
    hp = gan.GANHParams(batch_size=c["batch"], r1=10.0, path_regularize=2.0, path_batch_shrink=2,
                        d_reg_every=c["d_reg_every"], g_reg_every=c["g_reg_every"], mixing=0.9,
                        lambda_dseg_feat=2.0, ema_decay=gan.default_config().train.ema_decay, r1_img_zero_grad=True)
    official = Official(fx, models)
    rows = [r for it in range(c["iterations"]) for r in compare_iteration(fx, official, models, hp, it)]
    print(f"\n{path.stem}: {'what':<40} {'ours vs official':>16} {'tolerance':>10} {'official f32 gap':>16}")
    for what, err, tol, gap in rows:  # tolerance None: shown, not held (ill-conditioned, see the docstring)
        print(f"  {what:<40} {err:16.2e} {'-' if tol is None else f'{tol:.1e}':>10} {gap:16.2e}")
    bad = [f"{what}: {err:.2e} > {tol:.1e} (official float32 gap {gap:.2e})" for what, err, tol, gap in rows
           if tol is not None and not err <= tol]
    assert not bad, "\n".join(bad)
