"""The stage-1 train step, the stage-2 step and the first inference steps against the official
train_seg_gan.py / train_enc.py loops and inference.py, phase by phase (stage 2 and inference at
the end of this file; docs/architecture.md).

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
the fixture records (up to ~1e-2, 0.6 at a first step). Most of that gap is a measuring artefact:
an update is read as the difference of float32 parameters, so it is known only to one float32
step (ulp) of the parameter it is added to, and the mapping network's weights are stored as
N(0, 1) / lr_mul (hundreds), where an update of 2e-3 spans ~100 such steps. Updates are therefore
compared where the official gradient is at least 1e-3 of the network's largest (those below are
held through their gradients), with differences within one ulp of the parameter counted as none
(`rel_where_grad(..., resolution=)`), and held to 1e-3 like everything else; the all-parameter,
ulp-blind figure is printed beside it. (The RGB stage-1 fixture's G update at iteration 16 reads
1.35e-2 ulp-blind, one ulp, 3.05e-5, of a weight of 292.7, and 2.1e-6 at the parameters' resolution.)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from semgan_jax import losses
from semgan_jax.convert import networks
from semgan_jax.convert.mapping import assemble, import_state_dict
from semgan_jax.train import gan, guard

# the grey case runs in `make test`; the others (a second compile of the stage-1 step, ~1 min
# cold) are `slow`, in `make test-all` and CI
FIXTURES = [p if "gray" in p.stem else pytest.param(p, marks=pytest.mark.slow)
            for p in sorted((Path(__file__).parent / "fixtures").glob("train_stage1_*.npz"))]
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


def rel_where_grad(ours, official, grad, floor: float = 1e-3, resolution=None) -> float:
    """`rel` over the elements whose |grad| >= floor * max |grad| (all leaves of one network).
    `resolution`: parameters whose float32 step (ulp) is how well ours and official are known;
    a difference up to one ulp of that parameter counts as none (see the module docstring)."""
    top = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad))
    keep = jax.tree.map(lambda g: jnp.abs(g) >= floor * top, grad)
    def masked(tree):
        return jax.tree.map(lambda k, x: jnp.where(k, x, 0.0), keep, tree)

    if resolution is None:
        return rel(masked(ours), masked(official))
    ulp = jax.tree.map(lambda p: jnp.asarray(np.spacing(np.abs(np.asarray(p, np.float32)))), resolution)
    excess = jax.tree.map(lambda a, b, u: jnp.maximum(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))
                                                      - u, 0.0), ours, official, ulp)
    den = max(float(jnp.max(jnp.abs(jnp.asarray(b, jnp.float32)))) for b in jax.tree.leaves(masked(official)))
    num = max(float(jnp.max(x)) for x in jax.tree.leaves(masked(excess)))
    return num / den if den else num


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
                                                                   tree_sub(off["param"], off["before"]), off["mu"],
                                                                   resolution=off["param"]),
                  TOL, gap["update"]),
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


# ---- stage 2: train_enc.py -------------------------------------------------------------------

STAGE2_FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("train_stage2_*.npz"))
STAGE2_UPDATES = {"unlabel": "E (unlabeled)", "label": "E (labeled)"}


def _reference_tool():
    """tools/make_reference_fixtures.py's NumPy half (regenerate_state_dicts; torch is not imported)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "make_reference_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_reference_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Stage2Fixture(Fixture):
    """A stage-2 fixture: G_ema, the narrow FPN encoder (official module, widths / fpn_div) and the
    LPIPS heads; the LPIPS backbone is regenerated from its fill manifest."""

    def __init__(self, path):
        self.meta, self.arrays = load(path)
        self.case = c = self.meta["case"]
        self.config = model_config({**c, "ndf": 2})
        self.config["encoder"] = dict(backbone=c.get("backbone", "fpn"), base_width=64 // c["fpn_div"],
                                      feature_dim=c["style_dim"], channel_max=512 if c.get("backbone") != "res" else c["cap"])
        self.init = {net: self.unpack(self.arrays[f"init/{net}"], net) for net in ("g_ema", "e")}

    def e(self, params_vector=None, buffer_vector=None) -> dict:
        values = {}
        if params_vector is not None:
            values.update(self.unpack(params_vector, "e", self.meta["params"]["e"]))
        if buffer_vector is not None:
            values.update(self.unpack(buffer_vector, "e", self.meta["buffers"]["e"]))
        return self.flax("e", values)

    def e_params(self, vector) -> dict:
        return self.e(params_vector=vector)["params"]

    def lpips_params(self) -> dict:
        from semgan_jax.perceptual.convert import lpips_variables

        backbone = _reference_tool().regenerate_state_dicts(self.meta["lpips"])["lpips"]
        heads = self.unpack(self.arrays["lpips/heads"], "lpips_heads")
        return lpips_variables("vgg", backbone, heads)["params"]

    def draws(self, it: int) -> dict:
        out = {}
        for phase in ("unlabel", "label"):
            pre = f"it{it}/draw/{phase}/"
            n = sum(k.startswith(pre + "noise_") for k in self.arrays)
            out[phase] = {"noise": [self.arrays[f"{pre}noise_{i}"] for i in range(n)]}
        return out


def stage2_setup(fx: Stage2Fixture):
    """(models, hp, frozen) of the fixture's run: train_enc.py's defaults, the fixture's lr window,
    the reference's eval-mode BatchNorm after iteration 0 (bn_eval_after_first)."""
    from semgan_jax.perceptual.lpips import LPIPS
    from semgan_jax.train import encoder as stage2

    c = fx.case
    cfg = stage2.default_config()
    cfg.encoder.update(fx.config["encoder"])
    cfg.train.update(lr_decay_start=c["lr_decay_iter_start"], lr_decay_end=c["lr_decay_iter_end"],
                     bn_eval_after_first=True)
    if c.get("no_grad_clip"):  # --no_grad_clip
        cfg.train.update(unlabel_grad_clip=0.0, label_grad_clip=0.0)
    cfg.train.optimizer = c.get("optimizer", "ranger")
    models = stage2.build_models(ml_collections.ConfigDict(fx.config["model"]), cfg, LPIPS("vgg"))
    hp = stage2.hparams_from_config(cfg.train)
    frozen = {"g": fx.flax("g_ema", {})["params"], "lpips": fx.lpips_params()}
    return models, hp, frozen, cfg


def adam_state(tx, params, mu, nu, count):
    """encoder_optimizer(optimizer='adam')'s state (clipped or not) with these moments and step count."""
    count = jnp.asarray(count, jnp.int32)

    def fix(s):
        if isinstance(s, optax.ScaleByAdamState):
            return s._replace(count=count, mu=mu, nu=nu)
        return s._replace(count=count) if isinstance(s, optax.ScaleByScheduleState) else s

    return jax.tree.map(fix, tx.init(params),
                        is_leaf=lambda s: isinstance(s, (optax.ScaleByAdamState, optax.ScaleByScheduleState)))


def adaptive_moments(opt_state):
    """The state holding mu / nu / count: Adam's, or RAdam's inside Ranger's Lookahead."""
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "mu") and hasattr(s, "nu"))
    return next(s for s in leaves if hasattr(s, "mu") and hasattr(s, "nu"))


def ranger_state(tx, params, slow, mu, nu, count):
    """encoder_optimizer's state (torch clipping, Ranger) with the given moments and step count."""
    import optax

    state = tx.init(optax.LookaheadParams(fast=params, slow=slow))
    clipped = isinstance(state, tuple) and not isinstance(state, optax.LookaheadState)  # chain(clip, ranger)
    look = state[1] if clipped else state
    empty, radam, sched = look.fast_state
    count = jnp.asarray(count, jnp.int32)
    radam = radam._replace(count=count, mu=mu, nu=nu)
    look = look._replace(fast_state=(empty, radam, sched._replace(count=count)), steps_since_sync=count % 6)
    return (state[0], look) if clipped else look


@functools.cache
def pinned_encoder_step(models, hp):
    """jit of encoder.train_step with recorded draws and official values pinned after each update:
    (state, frozen, batch, draws, pins) -> (metrics, {update: what ours computed})."""
    from semgan_jax.train import encoder as stage2

    def run(state, frozen, batch, draws, pins):
        captured = {}

        def pin(update, values):
            captured[update] = values
            return pins[update] + (values[4],)

        _, metrics = stage2.train_step(models, hp, state, frozen, batch, draws=draws, pin=pin)
        return metrics, captured

    return jax.jit(run)


def compare_stage2_iteration(fx: Stage2Fixture, models, hp, frozen, cfg, it: int):
    """Iteration `it` from the official state before it, pinned after each update; returns rows
    (what, ours vs official, tolerance, official float32 gap)."""
    from semgan_jax.train import encoder as stage2
    from semgan_jax.train.state import clip_by_global_norm_torch

    a, meta = fx.arrays, fx.meta
    ranger = models.ranger  # else torch Adam: no Lookahead slow weights
    bn = bool(meta["buffers"]["e"])  # the FPN's BatchNorm; the Res encoder has none

    def opt_state(tx, params, slow, mu, nu, count):
        return ranger_state(tx, params, slow, mu, nu, count) if ranger else adam_state(tx, params, mu, nu, count)

    def slow_of(key):
        return fx.e_params(a[key]) if ranger else None

    init = fx.e()
    if it == 0:
        params, stats = init["params"], init.get("batch_stats", {})
        zeros = jax.tree.map(jnp.zeros_like, params)
        opt = {ph: (params if ranger else None, zeros, zeros, 0) for ph in ("unlabel", "label")}
    else:
        prev = fx.e(a[f"it{it - 1}/label/param"], a[f"it{it - 1}/label/buffer"] if bn else None)
        params, stats = prev["params"], prev.get("batch_stats", {})
        opt = {ph: (slow_of(f"it{it - 1}/{ph}/slow_buffer"), fx.e_params(a[f"it{it - 1}/{ph}/exp_avg"]),
                    fx.e_params(a[f"it{it - 1}/{ph}/exp_avg_sq"]), int(a[f"it{it - 1}/{ph}/step"]))
               for ph in ("unlabel", "label")}
    txs = {"unlabel": models.tx_unlabel, "label": models.tx_label}
    state = stage2.EncoderState(
        step=jnp.asarray(it, jnp.int32), key=jax.random.PRNGKey(0), params=params, batch_stats=stats,
        slow_unlabel=opt["unlabel"][0], slow_label=opt["label"][0],
        opt_unlabel=opt_state(txs["unlabel"], params, *opt["unlabel"]),
        opt_label=opt_state(txs["label"], params, *opt["label"]), health=guard.init_health())
    expected, pins, before = {}, {}, params
    for ph in ("unlabel", "label"):
        pre = f"it{it}/{ph}/"
        after = fx.e(a[pre + "param"], a[pre + "buffer"] if bn else None)
        off = {"before": before, "param": after["params"], "stats": after.get("batch_stats", {}),
               "slow": slow_of(pre + "slow_buffer"), "mu": fx.e_params(a[pre + "exp_avg"]),
               "nu": fx.e_params(a[pre + "exp_avg_sq"]), "grad": fx.e_params(a[pre + "grad"]),
               "count": int(a[pre + "step"])}
        expected[ph] = off
        pins[STAGE2_UPDATES[ph]] = (off["param"], off["stats"], off["slow"],
                                    opt_state(txs[ph], off["param"], off["slow"], off["mu"], off["nu"], off["count"]))
        before = off["param"]
    batch = {k: jnp.asarray(a[f"it{it}/batch/{k}"]) for k in ("image", "seg_image", "seg_mask")}
    metrics, ours = pinned_encoder_step(models, hp)(state, frozen, batch, fx.draws(it), pins)

    rows, train_mode = [], meta["train_mode"][it]
    for ph, clip in (("unlabel", cfg.train.unlabel_grad_clip), ("label", cfg.train.label_grad_clip)):
        off, (p, st, slow, opt_state, raw) = expected[ph], ours[STAGE2_UPDATES[ph]]
        gap, steps = meta["f32_gap"][f"it{it}/{ph}"], meta["steps"][f"it{it}/{ph}"]
        moments = adaptive_moments(opt_state)
        norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(raw))))
        clipped = clip_by_global_norm_torch(clip).update(raw, None)[0] if clip else raw  # 0: --no_grad_clip
        name = f"it{it} E {ph}"
        rows += [(f"{name} gradient norm (before clipping)", abs(norm - steps["clip_norm"]) / steps["clip_norm"],
                  max(TOL, gap["clip_norm"]), gap["clip_norm"]),
                 (f"{name} clipped gradient", rel(clipped, off["grad"]), TOL, gap["grad"]),
                 (f"{name} first moment", rel(moments.mu, off["mu"]), TOL, gap["exp_avg"]),
                 (f"{name} second moment", rel(moments.nu, off["nu"]), TOL, gap["exp_avg_sq"]),
                 (f"{name} {'Ranger' if ranger else 'Adam'} step", abs(int(moments.count) - off["count"]), 0, 0.0)]
        if ranger:
            rows.append((f"{name} Lookahead slow weights", rel(slow, off["slow"]), TOL, gap["slow_buffer"]))
        update = tree_sub(p, off["before"]), tree_sub(off["param"], off["before"])
        # as in stage 1: held where the official first moment is >= 1e-3 of its largest
        # (the adaptive step lr·m / (sqrt(v) + eps) amplifies rounding where v is tiny)
        rows += [(f"{name} parameter update", rel_where_grad(*update, off["mu"], resolution=off["param"]),
                  TOL, gap["update"]),
                 (f"{name} parameter update, all", rel(*update), None, gap["update"])]
        if bn:
            def field(tree, k):
                return jax.tree.map(lambda s: s[k], tree, is_leaf=_is_bn)

            # train mode: flax averages the biased batch variance, torch the unbiased one
            # (docs/architecture.md); shown, held only where BatchNorm is in eval mode
            rows += [(f"{name} BatchNorm running mean", rel(field(st, "mean"), field(off["stats"], "mean")), TOL,
                      gap["buffer"]),
                     (f"{name} BatchNorm running var", rel(field(st, "var"), field(off["stats"], "var")),
                      None if train_mode else TOL, gap["buffer"])]
    rows.append((f"it{it} updates refused as non-finite", int(metrics["skipped_updates"]), 0, 0.0))
    # a loss is held to 1e-5 or, where the official float32 run is further than that from its
    # float64 one (the rgb fixture's train-mode reconstruction: 2.5e-5), to that gap
    for k, ref in meta["losses"][it].items():
        gap = meta["f32_losses_gap"][it][k]
        rows.append((f"it{it} loss {k}", abs(float(metrics[k]) - ref) / max(abs(ref), 1e-12), max(LOSS_TOL, gap),
                     gap))
    return rows


def _is_bn(x):
    return isinstance(x, dict) and set(x) == {"mean", "var"}


# slow: one XLA program holding the FPN encoder (train- and eval-mode BatchNorm), G and VGG16
# forward and backward twice; minutes to compile on a 2-core machine without a warm cache
@pytest.mark.slow
@pytest.mark.skipif(not STAGE2_FIXTURES, reason="no stage-2 training fixtures (tools/make_training_fixtures.py)")
@pytest.mark.parametrize("path", STAGE2_FIXTURES, ids=lambda p: p.stem)
def test_stage2_step_matches_official_loop(path):
    """encoder.train_step against train_enc.py's loop: Ranger (gradient centralisation, RAdam,
    Lookahead), torch-style clipping, the lr window, LPIPS with the official v0.1 heads, BatchNorm
    in train mode at iteration 0 and in eval mode after it (bn_eval_after_first, as the official
    run), pinned after each update."""
    fx = Stage2Fixture(path)
    models, hp, frozen, cfg = stage2_setup(fx)
    rows = [r for it in fx.case["compare"] for r in compare_stage2_iteration(fx, models, hp, frozen, cfg, it)]
    print(f"\n{path.stem}: {'what':<44} {'ours vs official':>16} {'tolerance':>10} {'official f32 gap':>16}")
    for what, err, tol, gap in rows:
        print(f"  {what:<44} {err:16.2e} {'-' if tol is None else f'{tol:.1e}':>10} {gap:16.2e}")
    bad = [f"{what}: {err:.2e} > {tol:.1e} (official float32 gap {gap:.2e})" for what, err, tol, gap in rows
           if tol is not None and not err <= tol]
    assert not bad, "\n".join(bad)


# ---- inference: inference.py -----------------------------------------------------------------

INFER_FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("infer_*.npz"))


class InferFixture(Stage2Fixture):
    """An inference fixture: G_ema, the narrow FPN encoder (eval mode), LPIPS, the target, the
    initial noise maps and Adam's first steps over w+ and the noise maps."""

    def __init__(self, path):
        super().__init__(path)
        self.shapes = [(k, tuple(s)) for k, s in self.meta["param_layout"]]

    def opt_params(self, vector) -> dict:
        """A packed {'noise_i', 'w'} vector -> {'w': (1, n_latent, D), 'noises': [(1, r, r, 1)]}."""
        sizes = [int(np.prod(s)) for _, s in self.shapes]
        parts = dict(zip([k for k, _ in self.shapes], np.split(np.asarray(vector), np.cumsum(sizes)[:-1])))
        d = {k: parts[k].reshape(s) for k, s in self.shapes}
        n = sum(k.startswith("noise_") for k in d)
        return {"w": jnp.asarray(d["w"]), "noises": [jnp.asarray(d[f"noise_{i}"]) for i in range(n)]}

    def stacked(self, what):
        """steps/{what} (steps, P) -> the pytree of opt_params with a leading step axis."""
        per_step = [self.opt_params(v) for v in self.arrays[f"steps/{what}"]]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)


@pytest.mark.slow  # the scan over FPN, G and VGG16 forward and backward: ~1.5 min to compile on 2 cores
@pytest.mark.skipif(not INFER_FIXTURES, reason="no inference fixtures (tools/make_training_fixtures.py)")
@pytest.mark.parametrize("path", INFER_FIXTURES, ids=lambda p: p.stem)
def test_inference_steps_match_official(path):
    """infer.invert_one against inference.py's loop (--w_plus): Adam over w+ and the noise maps
    with the lr ramp, LPIPS + noise regulariser + MSE + encoder-consistency loss from E(x), the
    noise renormalisation; or, with --mean_init --no_noises, from G's mean w with the λ_mean term,
    Adam over w+ alone and fresh noise maps in every G call. Pinned to the official values after
    every step."""
    from semgan_jax import infer
    from semgan_jax.perceptual.lpips import LPIPS
    from semgan_jax.train import encoder as stage2
    from semgan_jax.train.state import inference_lr_schedule

    fx = InferFixture(path)
    c, meta, a = fx.case, fx.meta, fx.arrays
    flags = c.get("flags", [])
    g = gan.build_models(ml_collections.ConfigDict(fx.config["model"]), 0.0, 1, 1).g
    e = stage2.build_encoder(ml_collections.ConfigDict(fx.config["model"]), ml_collections.ConfigDict(fx.config["encoder"]))
    inv = infer.Inverter(g=g, e=e, lpips=LPIPS("vgg"))
    variables = {"g": fx.flax("g_ema", {})["params"], "e": fx.e(), "lpips": fx.lpips_params()}
    cfg = infer.InvertConfig(step=c["steps"], mean_init="--mean_init" in flags, optimize_noise="--no_noises" not in flags)
    n_noise = sum(k.startswith("draw/noise_") for k in a)
    noise0 = [jnp.asarray(a[f"draw/noise_{i}"]) for i in range(n_noise)]
    draws = {"noise": noise0}
    if not cfg.optimize_noise:
        draws["step_noise"] = [jnp.asarray(a[f"draw/step_noise_{i}"]) for i in range(n_noise)]
    w_mean = None
    if cfg.mean_init:  # the official mean of 10,000 mapped z, from its own z
        w_mean = jnp.mean(g.apply({"params": variables["g"]}, jnp.asarray(a["draw/mean_z"]),
                                  method=type(g).get_latent), axis=0)
    off = {what: fx.stacked(what) for what in ("grad", "before", "param", "exp_avg", "exp_avg_sq")}
    noises_optimised = bool(off["param"]["noises"])

    def official_part(ours, at):  # the official values where it has them (w+ alone without noise maps)
        return at if noises_optimised else {**ours, "w": at["w"]}

    def pin(i, values):
        p, opt_state, _ = values
        adam, sched = opt_state
        at = jax.tree.map(lambda x: x[i], off)
        return official_part(p, at["param"]), (adam._replace(mu=official_part(adam.mu, at["exp_avg"]),
                                                             nu=official_part(adam.nu, at["exp_avg_sq"])), sched)

    run = jax.jit(lambda v, t, wm: infer.invert_one(inv, v, cfg, t, jax.random.PRNGKey(0), w_mean=wm, draws=draws,
                                                    pin=pin))
    out = run(variables, jnp.asarray(a["target"][0]), w_mean)
    p_after, opt_state, grads = out["trace"]
    adam = opt_state[0]

    def compared(tree):  # what the official run optimised
        return tree if noises_optimised else {"w": tree["w"], "noises": []}

    # without optimised noise maps ours leaves out the official loss's constant noise regulariser of the
    # unused maps (docs/architecture.md): added back here, for the maps as the official run holds them
    # (the draws at step 0, renormalised after every step)
    constant = [0.0] * c["steps"]
    if not cfg.optimize_noise:
        normalised = losses.noise_normalize(noise0)
        constant = [cfg.noise_regularize * float(losses.noise_regularize(noise0 if i == 0 else normalised))
                    for i in range(c["steps"])]
    rows = []
    for i in range(c["steps"]):
        at = jax.tree.map(lambda x: x[i], off)
        ours = jax.tree.map(lambda x: x[i], (p_after, adam.mu, adam.nu, grads))
        ours = tuple(compared(t) for t in ours)
        gap = meta["f32_gap"][i]
        loss = float(out["loss"][i]) + constant[i]
        rows += [(f"step {i} lr", abs(float(inference_lr_schedule(i, c["steps"])) - meta["lr"][i]) / 0.1, LOSS_TOL, 0.0),
                 (f"step {i} loss", abs(loss - meta["losses"][i]) / abs(meta["losses"][i]), LOSS_TOL,
                  meta["f32_losses_gap"][i]),
                 (f"step {i} w+ gradient", rel(ours[3]["w"], at["grad"]["w"]), TOL, gap["grad"])]
        if noises_optimised:
            rows.append((f"step {i} noise gradient", rel(ours[3]["noises"], at["grad"]["noises"]), TOL, gap["grad"]))
        rows += [(f"step {i} first moment", rel(ours[1], at["exp_avg"]), TOL, gap["exp_avg"]),
                 (f"step {i} second moment", rel(ours[2], at["exp_avg_sq"]), TOL, gap["exp_avg_sq"]),
                 (f"step {i} Adam step", abs(int(adam.count[i]) - meta["adam_step"][i]), 0, 0.0),
                 (f"step {i} update", rel(tree_sub(ours[0], at["before"]), tree_sub(at["param"], at["before"])),
                  max(TOL, gap["update"]), gap["update"])]
    final = fx.opt_params(a["final"])  # the last step's maps renormalised, w+ as stepped
    rows.append(("final w+", rel(out["w_plus"][None], final["w"]), TOL, 0.0))
    if noises_optimised:
        rows.append(("final noise maps (renormalised)", rel([n[None] for n in out["noises"]], final["noises"]), TOL, 0.0))
    print(f"\n{path.stem}: {'what':<40} {'ours vs official':>16} {'tolerance':>10} {'official f32 gap':>16}")
    for what, err, tol, gap in rows:
        print(f"  {what:<40} {err:16.2e} {tol:10.1e} {gap:16.2e}")
    bad = [f"{what}: {err:.2e} > {tol:.1e} (official float32 gap {gap:.2e})" for what, err, tol, gap in rows
           if not err <= tol]
    assert not bad, "\n".join(bad)
