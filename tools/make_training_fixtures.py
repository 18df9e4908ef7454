"""Make the fixtures of tests/test_training_parity.py by running the official training code.

    git clone https://github.com/nv-tlabs/semanticGAN_code /tmp/ref   # never commit it
    .venv/bin/python tools/make_training_fixtures.py /tmp/ref [--out tests/fixtures] [--only NAME]

For every case in CASES this runs the official `train()` of semanticGAN/train_seg_gan.py itself
(imported from the checkout, CUDA ops replaced by their CPU paths as in
tools/make_reference_fixtures.py) for a few iterations, on the CPU, with torch's default dtype
float64, on tiny networks: the official modules with their own arguments (style_dim, n_mlp, Dm's
ndf) and the 512-channel tables of GeneratorSeg / Discriminator capped at `cap` channels (the
module's `channels` attribute is capped as __init__ assigns it; the key layout is unchanged).
Initial weights are drawn as in make_reference_fixtures.fill_spec (non-zero biases and noise
strengths). What the official loop draws at random (the mixing coin, z, the inject index, G's
noise maps, the path-length noise) is recorded as it is drawn (`Draws`), and what it computes is
snapshotted at every optimiser step (`Recorder`): the updated network's parameters, Adam's
exp_avg (= the gradient: beta1 = 0 ** c = 0) and exp_avg_sq, Dm's spectral-norm vectors, the
path-length mean, G_ema after the EMA, and every logged loss.

The same loop is then run again in float32 with the recorded draws replayed and every network,
optimiser and the path-length mean reset to the float64 values after each phase ("pinned"); its
distance from the float64 run, per phase, is stored as the official float32-vs-float64 gap.

`<case>.npz` holds (NHWC, Flax noise layout (N, r, r, 1); torch layouts for weights)
  meta                  JSON: case, phases per iteration, the float32 gap per phase, losses
  init/{net}            the initial state dicts (g, g_ema, d_img, d_seg)
  it{k}/batch/{image,seg_image,seg_mask}
  it{k}/draw/{phase}/{z,inject,noise_i[,image_noise]}   z (2, B, D): a second z of zeros and
                        inject = n_latent where the coin said no mixing (the official draws one z)
  it{k}/{phase}/{param,exp_avg,exp_avg_sq,spectral,mean_path_length}, it{k}/{phase}/step
  it{k}/ema/param       G_ema's parameters after the iteration
  it{k}/r1_img/intended_gradient   the weighted R1 gradient of Dr had Dr's requires_grad been on
                        (the official loop leaves it off for its R1 on Dr, which therefore never
                        reaches Dr: Adam steps on zero gradients; see docs/architecture.md)
Phases: d_img, d_seg, r1_img, r1_seg, g, path (gan.UPDATES order). Every group of tensors is one
flat float32 vector, its keys in sorted order (meta['layout'] names them with their shapes).
zero_grad() zeroes gradients as in the torch versions the official code was written for (< 2.0;
since 2.0 it sets them to None and Adam skips such parameters instead of stepping on zeros).

Stage 2 (STAGE2_CASES, `train_stage2_*.npz`): train_enc.py's `train()` itself, 7 iterations from a
fresh start with its own Ranger optimisers, clipping and lr window, G_ema capped as above, the
official FPNEncoder narrowed (`build_fpn`), LPIPS = the official PerceptualLoss with its own v0.1
VGG head file from the checkout and a VGG16 backbone drawn from a fill manifest (meta['lpips'];
the tests regenerate it with NumPy). Its sample / validation passes are not run, but their effect
on training is: they start with encoder.eval() (so from iteration 1 on the encoder's BatchNorm is
in eval mode, as in every official run; meta['train_mode']). Stored for the compared iterations:
the batches, G's noise maps per update ('unlabel', 'label'), and after each update the encoder's
parameters, BatchNorm statistics, the clipped gradient and the optimiser's exp_avg, exp_avg_sq,
slow_buffer and step; for the iteration before a compared one the state only; meta['steps'] has
each update's lr and gradient norm before clipping.

Inference (INFER_CASES, `infer_*.npz`): inference.py's __main__ block run on one image (the script
read with its `device = 'cuda'` line as 'cpu'; its GeneratorSeg / FPNEncoder / PerceptualLoss
replaced by the case's tiny modules, torchvision's three transforms by small stand-ins), for
`--step` steps with `--w_plus`; stored: the target, make_noise's maps and per Adam step the
gradients, the parameters before and after it, exp_avg and exp_avg_sq (w+ and the noise maps
packed as {'noise_i', 'w'}), the lr and the loss; 'final': w+ and the renormalised noise maps.
The official float32 run, pinned the same way, gives the float32 gap of each quantity.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_reference_fixtures import import_reference, manifest_of, regenerate_state_dicts  # noqa: E402

CASES = [
    # both regularisers due in each of three consecutive iterations (d_reg_every = g_reg_every = 1)
    dict(name="train_stage1_s16_gray_seg1", size=16, image_mode="L", seg_dim=1, cap=4, style_dim=16, n_mlp=2,
         ndf=2, batch=4, d_reg_every=1, g_reg_every=1, start_iter=1, iterations=3, seed=11),
    # the reference's intervals 16 / 4: iteration 15 regularises nothing, 16 both, 17 nothing
    dict(name="train_stage1_s16_rgb_seg3", size=16, image_mode="RGB", seg_dim=3, cap=4, style_dim=16, n_mlp=2,
         ndf=2, batch=4, d_reg_every=16, g_reg_every=4, start_iter=15, iterations=3, seed=12),
]
# train_seg_gan.py argparse defaults (loss weights and schedules)
STAGE1_ARGS = dict(lr=0.002, r1=10.0, path_regularize=2.0, path_batch_shrink=2, mixing=0.9, lambda_dseg_feat=2.0)
PHASE_OF_STEP = {("d_img", 0): "d_img", ("d_seg", 0): "d_seg", ("d_img", 1): "r1_img", ("d_seg", 1): "r1_seg",
                 ("g", 0): "g", ("g", 1): "path"}
NETWORK_OF_PHASE = {"d_img": "d_img", "r1_img": "d_img", "d_seg": "d_seg", "r1_seg": "d_seg", "g": "g",
                    "path": "g"}


def nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def nchw(x: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(torch.get_default_dtype())


class Draws:
    """Records every random draw of the official loop (mode 'record') or replays a recording
    (mode 'replay', cast to the requested dtype), by patching random.random / random.randint,
    torch.randn / torch.randn_like and Tensor.normal_ inside the `with` block. Each draw is
    appended to `pending` as (kind, value); the Recorder files them under the next phase."""

    def __init__(self, mode: str, recording: list | None = None):
        self.mode, self.pending, self.all = mode, [], []
        self.replay = list(recording or [])

    def _take(self, kind, shape=None):
        got_kind, value = self.replay.pop(0)
        if got_kind != kind or (shape is not None and tuple(np.shape(value)) != tuple(shape)):
            raise RuntimeError(f"replay out of step: wanted {kind} {shape}, recorded {got_kind} {np.shape(value)}")
        return value

    def _note(self, kind, value):
        self.pending.append((kind, value))
        self.all.append((kind, value))

    def __enter__(self):
        import torch

        self.saved = (random.random, random.randint, torch.randn, torch.randn_like, torch.Tensor.normal_)
        rand, randint, randn, randn_like, normal_ = self.saved
        replay = self.mode == "replay"

        def p_random():
            v = self._take("coin") if replay else rand()
            self._note("coin", v)
            return v

        def p_randint(a, b):
            v = self._take("inject") if replay else randint(a, b)
            self._note("inject", v)
            return v

        def p_randn(*size, **kw):
            shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
            if replay:
                out = torch.from_numpy(self._take("z", shape)).to(kw.get("dtype") or torch.get_default_dtype())
            else:
                out = randn(*size, **kw)
            self._note("z", out.detach().double().numpy().copy())
            return out

        def p_randn_like(t, **kw):
            out = torch.from_numpy(self._take("image_noise", t.shape)).to(t.dtype) if replay else randn_like(t, **kw)
            self._note("image_noise", out.detach().double().numpy().copy())
            return out

        def p_normal_(t, *args, **kw):
            if replay:
                t.copy_(torch.from_numpy(self._take("noise", t.shape)))
            else:
                normal_(t, *args, **kw)
            self._note("noise", t.detach().double().numpy().copy())
            return t

        random.random, random.randint, torch.randn, torch.randn_like = p_random, p_randint, p_randn, p_randn_like
        torch.Tensor.normal_ = p_normal_
        return self

    def __exit__(self, *exc):
        import torch

        random.random, random.randint, torch.randn, torch.randn_like, torch.Tensor.normal_ = self.saved
        return False


def parse_generator_draws(draws: list, batch: int, style_dim: int, n_latent: int, num_layers: int) -> tuple:
    """One `generator(mixing_noise(...))` call's draws -> ({z, inject, noise_i}, rest)."""
    draws = list(draws)
    kind, coin = draws.pop(0)
    assert kind == "coin", kind
    kind, z = draws.pop(0)
    assert kind == "z", kind
    if z.ndim == 3:  # mixing: two z, then the generator's inject index
        kind, inject = draws.pop(0)
        assert kind == "inject", kind
    else:
        z, inject = np.stack([z, np.zeros_like(z)]), n_latent
    out = {"z": z, "inject": np.int32(inject), "coin": np.float64(coin)}
    for i in range(num_layers):
        kind, noise = draws.pop(0)
        assert kind == "noise" and noise.shape[0] == z.shape[1], (kind, noise.shape)
        out[f"noise_{i}"] = noise.transpose(0, 2, 3, 1)
    assert out["z"].shape == (2, batch, style_dim), out["z"].shape
    return out, draws


def cap_channels(cls, cap: int):
    """`cls` with its `channels` table capped at `cap` as __init__ assigns it (same keys and
    layout as the official module, narrower tensors)."""
    def __setattr__(self, name, value):
        if name == "channels":
            value = {res: min(c, cap) for res, c in value.items()}
        cls.__setattr__(self, name, value)

    return type(cls.__name__, (cls,), {"__setattr__": __setattr__})


def build_stage1(seg, case: dict) -> dict:
    """The official stage-1 networks of a case (tiny), in train_seg_gan.py's modes."""
    c_img = 3 if case["image_mode"] == "RGB" else 1
    Gen, Dr = cap_channels(seg.GeneratorSeg, case["cap"]), cap_channels(seg.Discriminator, case["cap"])

    def generator():
        return Gen(case["size"], case["style_dim"], case["n_mlp"], seg_dim=case["seg_dim"],
                   image_mode=case["image_mode"], channel_multiplier=2)

    nets = {"g": generator(), "g_ema": generator(), "d_img": Dr(case["size"], input_dim=c_img, channel_multiplier=2),
            "d_seg": seg.MultiscaleDiscriminator(input_nc=c_img + case["seg_dim"], ndf=case["ndf"],
                                                 getIntermFeat=True)}
    nets["g_ema"].eval()
    return nets


def make_batches(case: dict) -> list[dict]:
    """Real batches (NHWC): images uniform in [-1, 1], masks one-hot in [-1, 1] (seg_dim 1: binary)."""
    rng = np.random.default_rng(1000 + case["seed"])
    s, b, k = case["size"], case["batch"], case["seg_dim"]
    c_img = 3 if case["image_mode"] == "RGB" else 1
    out = []
    for _ in range(case["iterations"]):
        labels = rng.integers(0, max(k, 2), (b, s, s))
        onehot = np.eye(max(k, 2))[labels][..., -k:]
        out.append({"image": rng.uniform(-1, 1, (b, s, s, c_img)), "seg_image": rng.uniform(-1, 1, (b, s, s, c_img)),
                    "seg_mask": onehot * 2.0 - 1.0})
    return out


class Recorder:
    """Hooks on the official loop: snapshots after every optimiser step, the EMA and the losses.

    With `pin` (the float64 run's snapshots) it measures this run's distance from them per phase
    and then loads them, so every phase starts from the float64 state."""

    def __init__(self, nets, optims, pin=None):
        self.nets, self.optims, self.pin = nets, optims, pin
        self.it, self.count, self.snap, self.losses, self.gap = -1, {}, {}, [], {}
        self.draws, self.phase_draws, self.phases = None, {}, []
        self.path_means, self.intended_r1_img = {}, {}

    def start_iteration(self):
        self.it += 1
        self.count = {name: 0 for name in self.optims}
        self.phases.append([])

    def params(self, net):
        return {k: p.detach().double().numpy().copy() for k, p in net.named_parameters()}

    def spectral(self):
        return {k: b.detach().double().numpy().copy() for k, b in self.nets["d_seg"].named_buffers()
                if k.endswith(("weight_u", "weight_v"))}

    def after_step(self, opt_name):
        phase = PHASE_OF_STEP[(opt_name, self.count[opt_name])]
        self.count[opt_name] += 1
        self.phases[-1].append(phase)
        self.phase_draws[(self.it, phase)] = self.draws.pending
        self.draws.pending = []
        net, opt = self.nets[NETWORK_OF_PHASE[phase]], self.optims[opt_name]
        names = {id(p): k for k, p in net.named_parameters()}
        snap = {"param": self.params(net), "exp_avg": {}, "exp_avg_sq": {}}
        for p, st in opt.state.items():
            snap["exp_avg"][names[id(p)]] = st["exp_avg"].detach().double().numpy().copy()
            snap["exp_avg_sq"][names[id(p)]] = st["exp_avg_sq"].detach().double().numpy().copy()
            snap["step"] = float(st["step"])
        if net is self.nets["d_seg"] or phase == "g":
            snap["spectral"] = self.spectral()
        if phase == "path":
            snap["mean_path_length"] = {"": np.float64(self.path_means[self.it])}
        key = (self.it, phase)
        self.snap[key] = snap
        if self.pin is not None:
            self.measure_and_pin(key, net, opt, names)

    def measure_and_pin(self, key, net, opt, names):
        import torch

        ref, mine = self.pin.snap[key], self.snap[key]
        self.gap[key] = {what: rel_gap(mine[what], ref[what]) for what in ("exp_avg", "exp_avg_sq")}
        before = self.pin.before(key)
        self.gap[key]["update"] = rel_gap({k: mine["param"][k] - before[k] for k in ref["param"]},
                                          {k: ref["param"][k] - before[k] for k in ref["param"]})
        with torch.no_grad():
            for k, p in net.named_parameters():
                p.copy_(torch.from_numpy(ref["param"][k]))
            for p, st in opt.state.items():
                st["exp_avg"].copy_(torch.from_numpy(ref["exp_avg"][names[id(p)]]))
                st["exp_avg_sq"].copy_(torch.from_numpy(ref["exp_avg_sq"][names[id(p)]]))
            buffers = dict(self.nets["d_seg"].named_buffers())
            for k, v in ref.get("spectral", {}).items():
                buffers[k].copy_(torch.from_numpy(v))

    def before(self, key) -> dict:
        """The float64 run's parameters of the network a phase updates, before that phase."""
        it, phase = key
        net = NETWORK_OF_PHASE[phase]
        order = [(i, p) for i, ps in enumerate(self.phases) for p in ps]
        for k in reversed(order[:order.index(key)]):
            if NETWORK_OF_PHASE[k[1]] == net:
                return self.snap[k]["param"]
        return self.init_params[net]

    def after_ema(self, g_ema):
        import torch

        self.snap[(self.it, "ema")] = {"param": self.params(g_ema)}
        if self.pin is not None:
            ref = self.pin.snap[(self.it, "ema")]["param"]
            self.gap[(self.it, "ema")] = {"param": rel_gap(self.snap[(self.it, "ema")]["param"], ref)}
            with torch.no_grad():
                for k, p in g_ema.named_parameters():
                    p.copy_(torch.from_numpy(ref[k]))


def pack(d: dict) -> np.ndarray:
    """The arrays of a dict, flattened and concatenated in sorted key order (float32)."""
    return np.concatenate([np.ravel(v) for _, v in sorted(d.items())]).astype(np.float32)


def rel_gap(a: dict, b: dict) -> float:
    """max |a - b| / max |b| over all arrays of two dicts with the same keys."""
    num = max(float(np.max(np.abs(a[k] - b[k]))) for k in b)
    den = max(float(np.max(np.abs(b[k]))) for k in b)
    return num / den if den else num


def run_stage1(tr, seg, case: dict, state: dict, batches: list, dtype, pin: Recorder | None = None) -> Recorder:
    """The official train() for case['iterations'] iterations from `state`, in `dtype`."""
    import torch
    from torch import optim

    torch.set_default_dtype(dtype)
    nets = {name: net.to(dtype) for name, net in build_stage1(seg, case).items()}  # FIR kernels are float32
    for name, net in nets.items():
        net.load_state_dict({k: torch.from_numpy(v).to(dtype) for k, v in state[name].items()}, strict=True)
    args = argparse.Namespace(
        **STAGE1_ARGS, batch=case["batch"], latent=case["style_dim"], n_mlp=case["n_mlp"], size=case["size"],
        d_reg_every=case["d_reg_every"], g_reg_every=case["g_reg_every"], start_iter=case["start_iter"],
        iter=case["start_iter"] + case["iterations"] - 1, n_sample=3, distributed=False, inception=None,
        viz_every=10**9, eval_every=10**9, save_every=10**9, seg_name="celeba-mask")
    g_ratio = args.g_reg_every / (args.g_reg_every + 1)
    d_ratio = args.d_reg_every / (args.d_reg_every + 1)
    optims = {"g": optim.Adam(nets["g"].parameters(), lr=args.lr * g_ratio, betas=(0 ** g_ratio, 0.99 ** g_ratio)),
              "d_img": optim.Adam(nets["d_img"].parameters(), lr=args.lr * d_ratio,
                                  betas=(0 ** d_ratio, 0.99 ** d_ratio)),
              "d_seg": optim.Adam(nets["d_seg"].parameters(), lr=args.lr * d_ratio,
                                  betas=(0 ** d_ratio, 0.99 ** d_ratio))}
    rec = Recorder(nets, optims, pin)
    torch.manual_seed(case["seed"])
    random.seed(case["seed"])
    rec.init_params = {name: rec.params(net) for name, net in nets.items()}
    for name, opt in optims.items():
        step = opt.step
        opt.step = lambda step=step, name=name: (step(), rec.after_step(name))[0]

    def images():  # train() reads the image loader first in every iteration
        for b in batches:
            rec.start_iteration()
            yield {"image": nchw(b["image"])}

    labeled = [{"image": nchw(b["seg_image"]), "mask": nchw(b["seg_mask"])} for b in batches]
    saved = {k: getattr(tr, k) for k in ("accumulate", "reduce_loss_dict", "g_path_regularize", "GANLoss",
                                         "prepare_inception_metrics", "d_r1_loss")}

    def d_r1_loss(real_pred, real_input):
        """The official R1, plus (for Dr, whose requires_grad the loop leaves off here, so that no R1
        gradient reaches it) the gradient it was meant to give Dr, computed aside on the same input."""
        if real_pred.dim() == 2:  # Dr (N, 1); Dm passes the sum of its scales' means
            d_img = nets["d_img"]
            flags = [p.requires_grad for p in d_img.parameters()]
            d_img.requires_grad_(True)
            x = real_input.detach().requires_grad_(True)
            weighted = args.r1 / 2 * saved["d_r1_loss"](d_img(x), x) * args.d_reg_every
            grads = torch.autograd.grad(weighted, list(d_img.parameters()), allow_unused=True)
            for p, flag in zip(d_img.parameters(), flags):
                p.requires_grad_(flag)
            rec.intended_r1_img[rec.it] = {  # the last bias does not reach the penalty: zero
                k: (torch.zeros_like(p) if g is None else g).detach().double().numpy().copy()
                for (k, p), g in zip(d_img.named_parameters(), grads)}
        return saved["d_r1_loss"](real_pred, real_input)

    def accumulate(model1, model2, decay=0.999):
        saved["accumulate"](model1, model2, decay)
        rec.after_ema(model1)

    def reduce_loss_dict(loss_dict):
        rec.losses.append({k: float(v) for k, v in loss_dict.items()})
        return saved["reduce_loss_dict"](loss_dict)

    def g_path_regularize(fake_img, latents, mean_path_length, decay=0.01):
        if pin is not None:  # pinned: the float64 run's running mean before this iteration
            earlier = [m for it, m in sorted(pin.path_means.items()) if it < rec.it]
            mean_path_length = torch.tensor(earlier[-1]) if earlier else 0
        penalty, path_mean, lengths = saved["g_path_regularize"](fake_img, latents, mean_path_length, decay)
        rec.path_means[rec.it] = float(path_mean)
        return penalty, path_mean, lengths

    tr.accumulate, tr.reduce_loss_dict, tr.g_path_regularize = accumulate, reduce_loss_dict, g_path_regularize
    tr.d_r1_loss = d_r1_loss
    # zero_grad() as in the torch the official code was written for (README: PyTorch 1.4+; before 2.0
    # it zeroed gradients, since 2.0 it sets them to None, and Adam then skips the parameters a loss
    # does not reach: G's to_seg* layers in the path-length update)
    zero_grad = torch.nn.Module.zero_grad
    torch.nn.Module.zero_grad = lambda self, set_to_none=False: zero_grad(self, set_to_none=set_to_none)
    tr.GANLoss = lambda gan_mode, tensor: saved["GANLoss"](gan_mode, tensor=lambda n: torch.zeros(n))
    tr.prepare_inception_metrics = lambda *a, **k: None
    writer = types.SimpleNamespace(add_scalar=lambda *a, **k: None, add_scalars=lambda *a, **k: None)
    try:
        with Draws("replay" if pin is not None else "record", pin.draws.all if pin is not None else None) as draws:
            rec.draws = draws
            tr.train(args, "/nonexistent", images(), labeled, None, nets["g"], nets["d_img"], nets["d_seg"],
                     optims["g"], optims["d_img"], optims["d_seg"], nets["g_ema"], "cpu", writer)
    finally:
        torch.nn.Module.zero_grad = zero_grad
        for k, v in saved.items():
            setattr(tr, k, v)
    assert rec.it == case["iterations"] - 1 and len(rec.losses) == case["iterations"], (rec.it, len(rec.losses))
    return rec


def make_case(case: dict, tr, seg, out_dir: Path) -> Path:
    import torch

    torch.set_default_dtype(torch.float64)
    nets = build_stage1(seg, case)
    meta = {"case": case, "seed": case["seed"], "manifest": {name: manifest_of(net) for name, net in nets.items()}}
    state = {k: {kk: vv.astype(np.float64) for kk, vv in v.items()} for k, v in regenerate_state_dicts(meta).items()}
    for k in state["g"]:  # G_ema starts as a copy of G's parameters (accumulate(g_ema, g, 0)); own noise buffers
        if not k.startswith("noises."):
            state["g_ema"][k] = state["g"][k].copy()
    batches = make_batches(case)
    ref = run_stage1(tr, seg, case, state, batches, torch.float64)
    f32 = run_stage1(tr, seg, case, state, batches, torch.float32, pin=ref)
    torch.set_default_dtype(torch.float32)

    # every group of tensors is stored as one flat vector, in the sorted key order meta['layout'] gives
    meta["layout"] = {name: [[k, list(v.shape)] for k, v in sorted(sd.items())] for name, sd in state.items()}
    meta["params"] = {name: sorted(k for k, _ in net.named_parameters()) for name, net in nets.items()}
    arrays = {f"init/{name}": pack(sd) for name, sd in state.items()}
    probe = nets["g"]
    for k, b in enumerate(batches):
        arrays.update({f"it{k}/batch/{n}": v.astype(np.float32) for n, v in b.items()})
    phase_draws = dict(ref.phase_draws)
    # the path-length noise is drawn after the path phase's generator call, before its step
    for (it, phase), draws in phase_draws.items():
        if phase not in ("d_img", "d_seg", "g", "path"):
            assert not draws, (it, phase, [d[0] for d in draws])
            continue
        if it == 0 and phase == "d_img":  # train() draws sample_z first
            assert draws[0][0] == "z" and draws[0][1].shape == (3, case["style_dim"])
            draws = draws[1:]
        b = case["batch"] if phase != "path" else max(1, case["batch"] // STAGE1_ARGS["path_batch_shrink"])
        parsed, rest = parse_generator_draws(draws, b, case["style_dim"], probe.n_latent, probe.num_layers)
        if phase == "path":
            kind, noise = rest.pop(0)
            assert kind == "image_noise", kind
            parsed["image_noise"] = noise.transpose(0, 2, 3, 1)
        assert not rest, (it, phase, [d[0] for d in rest])
        arrays.update({f"it{it}/draw/{phase}/{n}": (v.astype(np.float32) if v.dtype == np.float64 else v)
                       for n, v in parsed.items()})
    for (it, phase), snap in ref.snap.items():
        for what, d in snap.items():
            arrays[f"it{it}/{phase}/{what}"] = np.float32(d) if what == "step" else pack(d)
    for it, grads in ref.intended_r1_img.items():
        arrays[f"it{it}/r1_img/intended_gradient"] = pack(grads)
    meta["phases"] = ref.phases
    meta["losses"] = ref.losses
    meta["f32_gap"] = {f"it{it}/{phase}": g for (it, phase), g in f32.gap.items()}
    meta["f32_losses_gap"] = [{k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-30) for k in b}
                              for a, b in zip(f32.losses, ref.losses)]
    del meta["manifest"]
    path = out_dir / f"{case['name']}.npz"
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


# ---- stage 2: train_enc.py ---------------------------------------------------------------------

STAGE2_CASES = [
    # 7 iterations from a fresh start; compared: 0 (train-mode BatchNorm, Ranger's first steps, the
    # labeled optimiser's slow buffer created, both gradients clipped), 5 (step 6: RAdam's first
    # adaptive step and the Lookahead sync, lr inside the cosine window) and 6; the state after 4
    # is stored as the start of 5
    dict(name="train_stage2_s32_rgb_seg3", size=32, image_mode="RGB", seg_dim=3, cap=4, style_dim=4, n_mlp=2,
         fpn_div=64, batch=4, iterations=7, compare=[0, 5, 6], seed=21, lpips_seed=22,
         lr_decay_iter_start=3, lr_decay_iter_end=9),
    # grey images, one binary label channel (sigmoid BCE + the dice with the background included;
    # LPIPS broadcasting the one channel over VGG's three) and --no_grad_clip: 2 iterations
    dict(name="train_stage2_s32_gray_seg1_noclip", size=32, image_mode="L", seg_dim=1, cap=4, style_dim=4, n_mlp=2,
         fpn_div=64, batch=4, iterations=2, compare=[0, 1], seed=23, lpips_seed=24,
         lr_decay_iter_start=3, lr_decay_iter_end=9, no_grad_clip=True),
    # --enc_backbone res (the StyleGAN2 discriminator trunk, channels capped, its final linear layer
    # narrowed to n_latent x style_dim) and --optimizer adam (torch Adam, the synthetic configs'
    # choice): 2 iterations
    dict(name="train_stage2_s32_rgb_seg3_res_adam", size=32, image_mode="RGB", seg_dim=3, cap=4, style_dim=4,
         n_mlp=2, fpn_div=64, batch=4, iterations=2, compare=[0, 1], seed=25, lpips_seed=26,
         lr_decay_iter_start=3, lr_decay_iter_end=9, backbone="res", optimizer="adam"),
]
# train_enc.py argparse defaults (loss weights, clipping, lr)
STAGE2_ARGS = dict(lr=0.001, lr_decay=0.00001, lambda_unlabel_mse=1.0, lambda_unlabel_lpips=10.0,
                   lambda_label_mse=1.0, lambda_label_lpips=10.0, lambda_label_ce=1.0, lambda_label_dice=1.0,
                   unlabel_grad_clip=2.0, label_grad_clip=5.0)
STAGE2_LOSSES = ("e_unlabel_mse", "e_unlabel_lpips", "e_unlabel_loss", "e_label_mse", "e_label_lpips",
                 "e_label_ce", "e_label_dice", "e_label_loss")


def build_fpn(enc, case: dict, c_img: int, n_latent: int, cls=None):
    """The official FPNEncoder, narrow: its module code run with a torch.nn whose Conv2d and
    BatchNorm2d divide channel counts >= 64 by case['fpn_div'] (the ResNet-50 trunk's 64..2048;
    the image's 1 or 3 channels stay), the pyramid's feature_dim and ToStyleCode's default widths
    (512 each) set to case['style_dim']. Same keys and structure as the official module."""
    import torch

    div = case["fpn_div"]

    def scaled(c):
        return c // div if c >= 64 else c

    class Conv2d(torch.nn.Conv2d):
        def __init__(self, in_channels, out_channels, *args, **kwargs):
            super().__init__(scaled(in_channels), scaled(out_channels), *args, **kwargs)

    class BatchNorm2d(torch.nn.BatchNorm2d):
        def __init__(self, num_features, *args, **kwargs):
            super().__init__(scaled(num_features), *args, **kwargs)

    narrow = types.ModuleType("torch.nn")
    narrow.__dict__.update({k: v for k, v in vars(torch.nn).items() if not k.startswith("__")})
    narrow.Conv2d, narrow.BatchNorm2d = Conv2d, BatchNorm2d

    def __setattr__(self, name, value):  # the pyramid's feature_dim (512) = the style width
        torch.nn.Module.__setattr__(self, name, case["style_dim"] if name == "feature_dim" else value)

    saved = enc.nn, enc.ToStyleCode.__init__.__defaults__
    enc.nn, enc.FPN.__setattr__ = narrow, __setattr__  # FPN's own super(FPN, self) needs the class itself
    enc.ToStyleCode.__init__.__defaults__ = (case["style_dim"], case["style_dim"])
    try:
        return (cls or enc.FPNEncoder)(c_img, n_latent=n_latent)
    finally:
        enc.nn, enc.ToStyleCode.__init__.__defaults__ = saved
        del enc.FPN.__setattr__


def lpips_manifest(percept) -> list:
    """Fill rules of the LPIPS VGG16 backbone (keys of the official PNetLin state dict, net.sliceK.i):
    uniform(+-2/sqrt(fan_in)) as make_reference_fixtures.fill_spec draws nn.Conv2d."""
    rows = []
    for key, t in percept.model.net.state_dict().items():
        if key.startswith("net."):
            fan_in = int(np.prod(t.shape[1:])) if t.dim() > 1 else None
            rows.append([key, list(t.shape), "float32", "uniform", 0.0, 0.0, fan_in])
    weights = {k[:-len(".weight")]: fan for k, _, _, _, _, _, fan in rows if k.endswith(".weight")}
    out = []
    for key, shape, dtype, mode, _, _, _ in rows:
        bound = 2.0 / math.sqrt(weights[key.rsplit(".", 1)[0]])
        out.append([key, shape, dtype, mode, -bound, bound])
    return sorted(out)


def build_stage2(seg, enc, lpips_mod, case: dict) -> dict:
    """The official stage-2 modules of a case: G_ema (eval), the narrow FPN encoder, LPIPS."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from official_code import perceptual_loss

    c_img = 3 if case["image_mode"] == "RGB" else 1
    Gen = cap_channels(seg.GeneratorSeg, case["cap"])
    g = Gen(case["size"], case["style_dim"], case["n_mlp"], seg_dim=case["seg_dim"], image_mode=case["image_mode"],
            channel_multiplier=2)
    g.eval()
    if case.get("backbone", "fpn") == "res":
        e = cap_channels(enc.ResEncoder, case["cap"])(case["size"], c_img, g.n_latent, channel_multiplier=2)
        # its final linear layer is built for style width 512 (forward views it as (n_latent, -1)):
        # the same layer for the case's width
        e.final_linear = enc.EqualLinear(e.final_linear.weight.shape[1], g.n_latent * case["style_dim"])
    else:
        e = build_fpn(enc, case, c_img, g.n_latent)
    percept = perceptual_loss(lpips_mod, "cpu", use_gpu=False)  # heads: the checkout's weights/v0.1/vgg.pth
    return {"g_ema": g, "e": e, "percept": percept}


def bn_buffers(e) -> dict:
    return {k: b.detach().double().numpy().copy() for k, b in e.named_buffers()
            if k.endswith(("running_mean", "running_var"))}


class Stage2Recorder:
    """Hooks on train_enc.py's loop: per optimiser step the clipped gradient, the lr, the
    pre-clipping norm and, after the step, the encoder's parameters and BatchNorm statistics and
    the optimiser's Ranger state. With `pin` (the float64 run) it measures the distance and loads
    the float64 state after every step."""

    def __init__(self, e, optims, pin=None):
        self.e, self.optims, self.pin = e, optims, pin
        self.it, self.snap, self.losses, self.gap, self.modes = -1, {}, [], {}, []
        self.draws, self.phase_draws, self.clip_norm = None, {}, None

    def start_iteration(self):
        self.it += 1
        self.modes.append(bool(self.e.training))

    def params(self):
        return {k: p.detach().double().numpy().copy() for k, p in self.e.named_parameters()}

    def before_step(self, name):
        opt = self.optims[name]
        grad = {k: p.grad.detach().double().numpy().copy() for k, p in self.e.named_parameters()}
        # --no_grad_clip: no clip_grad_norm_ call; the norm is recorded all the same
        norm = self.clip_norm if self.clip_norm is not None else math.sqrt(sum(float(np.sum(g * g))
                                                                               for g in grad.values()))
        self.pending = {"grad": grad, "lr": float(opt.param_groups[0]["lr"]), "clip_norm": float(norm)}
        self.before_params = self.params()

    def after_step(self, name):
        import torch

        key = (self.it, name)
        self.phase_draws[key] = self.draws.pending
        self.draws.pending = []
        opt = self.optims[name]
        names = {id(p): k for k, p in self.e.named_parameters()}
        snap = dict(self.pending, param=self.params(), buffer=bn_buffers(self.e), exp_avg={}, exp_avg_sq={},
                    slow_buffer={})
        for p, st in opt.state.items():
            for what in ("exp_avg", "exp_avg_sq", "slow_buffer"):
                if what in st:  # Adam has no Lookahead slow buffer
                    snap[what][names[id(p)]] = st[what].detach().double().numpy().copy()
            snap["step"] = int(st["step"])
        self.snap[key] = snap
        if self.pin is None:
            return
        ref = self.pin.snap[key]
        self.gap[key] = {what: rel_gap(snap[what], ref[what]) if ref[what] else 0.0
                         for what in ("grad", "exp_avg", "exp_avg_sq", "slow_buffer", "buffer")}
        self.gap[key]["clip_norm"] = abs(snap["clip_norm"] - ref["clip_norm"]) / ref["clip_norm"]
        before = self.before_params
        self.gap[key]["update"] = rel_gap({k: snap["param"][k] - before[k] for k in before},
                                          {k: ref["param"][k] - before[k] for k in before})
        with torch.no_grad():
            for k, p in self.e.named_parameters():
                p.copy_(torch.from_numpy(ref["param"][k]))
            buffers = dict(self.e.named_buffers())
            for k, v in ref["buffer"].items():
                buffers[k].copy_(torch.from_numpy(v))
            for p, st in opt.state.items():
                for what in ("exp_avg", "exp_avg_sq", "slow_buffer"):
                    if what in st:
                        st[what].copy_(torch.from_numpy(ref[what][names[id(p)]]))


def run_stage2(tr, seg, enc, case: dict, state: dict, lpips_state: dict, batches: list, dtype,
               pin: Stage2Recorder | None = None) -> Stage2Recorder:
    """train_enc.py's train() for case['iterations'] iterations from `state`, in `dtype`."""
    import tempfile

    import torch

    torch.set_default_dtype(dtype)
    nets = build_stage2(seg, enc, tr.lpips, case)
    g, e, percept = nets["g_ema"].to(dtype), nets["e"].to(dtype), nets["percept"].to(dtype)
    g.load_state_dict({k: torch.from_numpy(v).to(dtype) for k, v in state["g_ema"].items()}, strict=True)
    e.load_state_dict({k: torch.from_numpy(v).to(dtype) if v.dtype == np.float64 else torch.from_numpy(v)
                       for k, v in state["e"].items()}, strict=True)
    missing, unexpected = percept.model.net.load_state_dict(
        {k: torch.from_numpy(v).to(dtype) for k, v in lpips_state.items()}, strict=False)
    assert not unexpected and all(k.startswith(("lin", "scaling_layer")) for k in missing), (missing, unexpected)
    args = argparse.Namespace(
        **STAGE2_ARGS, seg_dim=case["seg_dim"], iter=case["iterations"], start_iter=0, seg_name="celeba-mask",
        distributed=False, profile_grad_norm=False, no_grad_clip=case.get("no_grad_clip", False),
        viz_every=10**9, eval_every=10**9,
        save_every=10**9, n_sample=2, lr_decay_iter_start=case["lr_decay_iter_start"],
        lr_decay_iter_end=case["lr_decay_iter_end"])
    opt_cls = torch.optim.Adam if case.get("optimizer") == "adam" else tr.Ranger  # train_enc.py's two choices
    optims = {"unlabel": opt_cls(e.parameters(), lr=args.lr), "label": opt_cls(e.parameters(), lr=args.lr)}
    rec = Stage2Recorder(e, optims, pin)
    for name, opt in optims.items():
        step = opt.step
        opt.step = lambda step=step, name=name: (rec.before_step(name), step(), rec.after_step(name))[1]

    def images():  # train() reads the unlabeled batch first in every iteration
        for b in batches:
            rec.start_iteration()
            yield {"image": nchw(b["image"])}

    labeled = [{"image": nchw(b["seg_image"]), "mask": nchw(b["seg_mask"])} for b in batches]
    names = ("clip_grad_norm_", "reduce_loss_dict", "sample_val_viz_imgs", "sample_unlabel_viz_imgs", "validate",
             "utils")
    saved = {k: getattr(tr, k) for k in names}

    def clip_grad_norm_(parameters, max_norm):
        rec.clip_norm = saved["clip_grad_norm_"](parameters, max_norm)
        return rec.clip_norm

    def reduce_loss_dict(loss_dict):
        rec.losses.append({k: float(v) for k, v in loss_dict.items()})
        return saved["reduce_loss_dict"](loss_dict)

    def eval_modes(args, *nets_and_more):  # what the sample / validation passes do to the modules
        for m in nets_and_more:
            if isinstance(m, torch.nn.Module):
                m.eval()
        return None, None, None

    tr.clip_grad_norm_, tr.reduce_loss_dict = clip_grad_norm_, reduce_loss_dict
    # sample_val_viz_imgs(args, loader, encoder, generator), sample_unlabel_viz_imgs(args, n, loader,
    # encoder, generator) and validate(args, encoder, generator, ...) start with encoder.eval() and
    # generator.eval() (under no_grad; nothing else they do reaches training); the images are not made
    tr.sample_val_viz_imgs = tr.sample_unlabel_viz_imgs = tr.validate = eval_modes
    tr.utils = types.SimpleNamespace(save_image=lambda *a, **k: None)
    torch_save = torch.save
    torch.save = lambda *a, **k: None
    writer = types.SimpleNamespace(add_scalar=lambda *a, **k: None, add_scalars=lambda *a, **k: None)
    try:
        with tempfile.TemporaryDirectory() as ckpt_dir, \
                Draws("replay" if pin is not None else "record", pin.draws.all if pin is not None else None) as draws:
            rec.draws = draws
            tr.train(args, ckpt_dir, images(), labeled, [], g, percept, e, optims["label"], optims["unlabel"],
                     "cpu", writer)
    finally:
        torch.save = torch_save
        for k, v in saved.items():
            setattr(tr, k, v)
    assert rec.it == case["iterations"] - 1 and len(rec.losses) == case["iterations"], (rec.it, len(rec.losses))
    return rec


def make_stage2_case(case: dict, tr, seg, enc, out_dir: Path) -> Path:
    import torch

    torch.manual_seed(case["seed"])  # G's noise maps: the same file every time
    torch.set_default_dtype(torch.float64)
    nets = build_stage2(seg, enc, tr.lpips, case)
    meta = {"case": case, "seed": case["seed"], "manifest": {n: manifest_of(nets[n]) for n in ("g_ema", "e")}}
    state = {k: {kk: vv.astype(np.float64) for kk, vv in v.items()} for k, v in regenerate_state_dicts(meta).items()}
    lp_meta = {"seed": case["lpips_seed"], "manifest": {"lpips": lpips_manifest(nets["percept"])}}
    lpips_state = regenerate_state_dicts(lp_meta)["lpips"]
    heads = {k: v.detach().double().numpy() for k, v in nets["percept"].model.net.state_dict().items()
             if k.startswith("lin") and not k.startswith("lins.")}  # lins.j: the same tensors again
    batches = make_batches(case)
    ref = run_stage2(tr, seg, enc, case, state, lpips_state, batches, torch.float64)
    f32 = run_stage2(tr, seg, enc, case, state, lpips_state, batches, torch.float32, pin=ref)
    torch.set_default_dtype(torch.float32)

    meta["layout"] = {name: [[k, list(v.shape)] for k, v in sorted(sd.items())] for name, sd in state.items()}
    meta["layout"]["lpips_heads"] = [[k, list(v.shape)] for k, v in sorted(heads.items())]
    meta["params"] = {"e": sorted(k for k, _ in nets["e"].named_parameters())}
    meta["buffers"] = {"e": sorted(bn_buffers(nets["e"]))}
    meta["lpips"] = lp_meta
    arrays = {f"init/{name}": pack(sd) for name, sd in state.items()}
    arrays["lpips/heads"] = pack(heads)
    num_layers = nets["g_ema"].num_layers
    compare = case["compare"]
    stored = sorted(set(compare) | {k - 1 for k in compare if k > 0})
    for it in compare:
        arrays.update({f"it{it}/batch/{n}": v.astype(np.float32) for n, v in batches[it].items()})
        for phase in ("unlabel", "label"):
            draws = ref.phase_draws[(it, phase)]
            assert [d[0] for d in draws] == ["noise"] * num_layers, [d[0] for d in draws]
            for i, (_, noise) in enumerate(draws):
                arrays[f"it{it}/draw/{phase}/noise_{i}"] = noise.transpose(0, 2, 3, 1).astype(np.float32)
    for it in stored:
        for phase in ("unlabel", "label"):
            snap = ref.snap[(it, phase)]
            whats = ["exp_avg", "exp_avg_sq", "slow_buffer"]
            if it in compare:
                whats += ["param", "buffer", "grad"]
            elif phase == "label":  # the state after the iteration
                whats += ["param", "buffer"]
            for what in whats:
                if snap[what]:  # no slow buffer with Adam, no BatchNorm in the Res encoder
                    arrays[f"it{it}/{phase}/{what}"] = pack(snap[what])
            arrays[f"it{it}/{phase}/step"] = np.int32(snap["step"])
    meta["steps"] = {f"it{it}/{phase}": {k: ref.snap[(it, phase)][k] for k in ("lr", "clip_norm", "step")}
                     for it in range(case["iterations"]) for phase in ("unlabel", "label")}
    meta["train_mode"] = ref.modes
    meta["losses"] = ref.losses
    meta["f32_gap"] = {f"it{it}/{phase}": g for (it, phase), g in f32.gap.items()}
    meta["f32_losses_gap"] = [{k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-30) for k in b}
                              for a, b in zip(f32.losses, ref.losses)]
    del meta["manifest"]
    path = out_dir / f"{case['name']}.npz"
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


# ---- inference.py ------------------------------------------------------------------------------

INFER_CASES = [
    # the first 10 optimisation steps of w+ and the noise maps (--step 10: the lr ramps up at step 0
    # and down over steps 8 and 9), encoder initialisation and consistency term, LPIPS, MSE
    dict(name="infer_s32_rgb_seg3", size=32, image_mode="RGB", seg_dim=3, cap=4, style_dim=4, n_mlp=2, fpn_div=64,
         steps=10, seed=31, lpips_seed=32),
    # --mean_init (w+ from G's mean w over 10,000 z, the λ_mean term instead of the encoder's) and
    # --no_noises (Adam over w+ only, fresh noise maps in every G call), grey, one label channel
    dict(name="infer_s32_gray_seg1_mean_nonoise", size=32, image_mode="L", seg_dim=1, cap=4, style_dim=4, n_mlp=2,
         fpn_div=64, steps=10, seed=33, lpips_seed=34, flags=["--mean_init", "--no_noises"]),
]


class InferRecorder:
    """Hooks on inference.py's loop: per Adam step the gradients, the lr and the parameters before
    it (the noise maps renormalised after the previous step), and after it Adam's moments and the
    parameters; the loss given to backward(). With `pin` (the float64 run) it measures the
    distance and loads the float64 values after every step."""

    def __init__(self, pin=None):
        self.pin, self.steps, self.losses, self.gap, self.mse_calls = pin, [], [], [], []

    def before(self, opt):
        ps = opt.param_groups[0]["params"]
        self.pending = {"lr": float(opt.param_groups[0]["lr"]),
                        "grad": {f"p{i}": p.grad.detach().double().numpy().copy() for i, p in enumerate(ps)},
                        "before": {f"p{i}": p.detach().double().numpy().copy() for i, p in enumerate(ps)}}

    def after(self, opt):
        import torch

        ps = opt.param_groups[0]["params"]
        snap = dict(self.pending, param={f"p{i}": p.detach().double().numpy().copy() for i, p in enumerate(ps)},
                    exp_avg={}, exp_avg_sq={})
        for i, p in enumerate(ps):
            snap["exp_avg"][f"p{i}"] = opt.state[p]["exp_avg"].detach().double().numpy().copy()
            snap["exp_avg_sq"][f"p{i}"] = opt.state[p]["exp_avg_sq"].detach().double().numpy().copy()
            snap["step"] = float(opt.state[p]["step"])
        k = len(self.steps)
        self.steps.append(snap)
        if self.pin is None:
            return
        ref = self.pin.steps[k]
        self.gap.append({what: rel_gap(snap[what], ref[what]) for what in ("grad", "exp_avg", "exp_avg_sq", "before")})
        self.gap[-1]["update"] = rel_gap({n: snap["param"][n] - snap["before"][n] for n in ref["param"]},
                                         {n: ref["param"][n] - ref["before"][n] for n in ref["param"]})
        with torch.no_grad():
            for i, p in enumerate(ps):
                p.copy_(torch.from_numpy(ref["param"][f"p{i}"]))
                opt.state[p]["exp_avg"].copy_(torch.from_numpy(ref["exp_avg"][f"p{i}"]))
                opt.state[p]["exp_avg_sq"].copy_(torch.from_numpy(ref["exp_avg_sq"][f"p{i}"]))


class _Transforms:
    """The three torchvision transforms inference.py's get_transformation uses (torchvision is not
    needed here): Compose, ToTensor (uint8 HWC -> CHW in [0, 1], default dtype) and Normalize."""

    class Compose:
        def __init__(self, ts):
            self.ts = ts

        def __call__(self, x):
            for t in self.ts:
                x = t(x)
            return x

    class ToTensor:
        def __call__(self, pic):
            import torch

            a = np.asarray(pic, dtype=np.float64)
            a = a[..., None] if a.ndim == 2 else a
            return torch.from_numpy(a.transpose(2, 0, 1) / 255.0).to(torch.get_default_dtype())

    class Normalize:
        def __init__(self, mean, std, inplace=False):
            self.mean, self.std = mean, std

        def __call__(self, t):
            import torch

            # a grey image gets the first mean / std: inference.py's default ('celeba-mask') transform
            # normalises with three (torchvision's in-place Normalize rejects a one-channel tensor)
            # and its 'cxr' one names classes the script does not import, so the published script
            # cannot invert grey images; (0.5,) / (0.5,) is what the cxr branch means
            m = torch.tensor(self.mean[:t.shape[0]], dtype=t.dtype)[:, None, None]
            s = torch.tensor(self.std[:t.shape[0]], dtype=t.dtype)[:, None, None]
            return (t - m) / s


def run_inference(repo: Path, seg, enc, lpips_mod, case: dict, state: dict, lpips_state: dict, image: np.ndarray,
                  dtype, pin: InferRecorder | None = None) -> tuple[InferRecorder, dict]:
    """inference.py's __main__ (CPU: its `device = 'cuda'` line read as 'cpu') on one image, with
    the case's tiny G_ema and encoder in a checkpoint file and this LPIPS; returns the recorder
    and the script's globals at the end (latent_in, noises, target_img_tensor)."""
    import runpy
    import tempfile

    import torch
    from PIL import Image

    torch.set_default_dtype(dtype)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from official_code import perceptual_loss

    rec = InferRecorder(pin)
    Gen = cap_channels(seg.GeneratorSeg, case["cap"])
    c_img = 3 if case["image_mode"] == "RGB" else 1
    fpn_cls = enc.FPNEncoder

    # the modules' own super(Class, self) calls read their module's name: the originals are put
    # back while one is built
    def generator(size, latent, n_mlp, **kw):  # inference.py fixes latent 512 and n_mlp 8
        seg.GeneratorSeg = saved[0]
        try:
            return Gen(size, case["style_dim"], case["n_mlp"], **kw).to(dtype)  # FIR kernels are float32
        finally:
            seg.GeneratorSeg = generator

    def fpn_encoder(input_dim, n_latent):
        enc.FPNEncoder = fpn_cls
        try:
            return build_fpn(enc, case, input_dim, n_latent)
        finally:
            enc.FPNEncoder = fpn_encoder

    def percept_factory(**kw):
        lpips_mod.PerceptualLoss = saved[2]
        try:
            percept = perceptual_loss(lpips_mod, "cpu", use_gpu=False).to(dtype)
        finally:
            lpips_mod.PerceptualLoss = percept_factory
        percept.model.net.load_state_dict({k: torch.from_numpy(v).to(dtype) for k, v in lpips_state.items()},
                                          strict=False)
        return percept

    class Adam(torch.optim.Adam):
        def step(self, closure=None):
            rec.before(self)
            out = super().step(closure)
            rec.after(self)
            return out

    backward = torch.Tensor.backward

    def record_backward(self, *a, **k):
        rec.losses.append(float(self))
        return backward(self, *a, **k)

    source = (Path(repo) / "semanticGAN" / "inference.py").read_text()
    assert source.count("device = 'cuda'") == 1
    saved = (seg.GeneratorSeg, enc.FPNEncoder, lpips_mod.PerceptualLoss, torch.optim.Adam, sys.argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = {"g_ema": {k: torch.from_numpy(v).to(dtype) for k, v in state["g_ema"].items()},
                "e": {k: torch.from_numpy(v).to(dtype) if v.dtype == np.float64 else torch.from_numpy(v)
                      for k, v in state["e"].items()}}
        torch.save(ckpt, tmp / "ckpt.pt")
        (tmp / "img").mkdir()
        Image.fromarray(image.squeeze(-1) if c_img == 1 else image).save(tmp / "img" / "target.png")
        script = tmp / "inference.py"
        source = source.replace("device = 'cuda'", "device = 'cpu'")
        if "--mean_init" in case.get("flags", []):  # its z width is the fixed 512 of args.latent
            assert source.count("torch.randn(n_mean_latent, 512") == 1
            source = source.replace("torch.randn(n_mean_latent, 512", f"torch.randn(n_mean_latent, {case['style_dim']}")
        script.write_text(source)
        sys.argv = ["inference.py", "--ckpt", str(tmp / "ckpt.pt"), "--img_dir", str(tmp / "img"), "--outdir",
                    str(tmp / "out"), "--size", str(case["size"]), "--seg_dim", str(case["seg_dim"]),
                    "--image_mode", case["image_mode"], "--step", str(case["steps"]), "--w_plus",
                    *case.get("flags", [])]
        seg.GeneratorSeg, enc.FPNEncoder, lpips_mod.PerceptualLoss = generator, fpn_encoder, percept_factory
        torch.optim.Adam, torch.Tensor.backward = Adam, record_backward
        stub_tv = types.ModuleType("torchvision")
        stub_tv.transforms = _Transforms
        try:
            with Draws("replay" if pin is not None else "record", pin.draws.all if pin is not None else None) as draws:
                rec.draws = draws
                with _patched_modules({"torchvision": stub_tv, "torchvision.transforms": _Transforms}):
                    scope = runpy.run_path(str(script), run_name="__main__")
        finally:
            seg.GeneratorSeg, enc.FPNEncoder, lpips_mod.PerceptualLoss, torch.optim.Adam, sys.argv = saved
            torch.Tensor.backward = backward
    assert len(rec.steps) == case["steps"], len(rec.steps)
    return rec, scope


def _patched_modules(replacements):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from official_code import patched_modules

    return patched_modules(replacements)


def make_infer_case(case: dict, repo: Path, seg, enc, lpips_mod, out_dir: Path) -> Path:
    import torch

    torch.manual_seed(case["seed"])  # the script's own draws (noise maps, mean z): the same file every time
    torch.set_default_dtype(torch.float64)
    nets = build_stage2(seg, enc, lpips_mod, case)
    for net in (nets["g_ema"], nets["e"]):
        net.eval()
    meta = {"case": case, "seed": case["seed"], "manifest": {n: manifest_of(nets[n]) for n in ("g_ema", "e")}}
    state = {k: {kk: vv.astype(np.float64) for kk, vv in v.items()} for k, v in regenerate_state_dicts(meta).items()}
    lp_meta = {"seed": case["lpips_seed"], "manifest": {"lpips": lpips_manifest(nets["percept"])}}
    lpips_state = regenerate_state_dicts(lp_meta)["lpips"]
    heads = {k: v.detach().double().numpy() for k, v in nets["percept"].model.net.state_dict().items()
             if k.startswith("lin") and not k.startswith("lins.")}
    c_img = 3 if case["image_mode"] == "RGB" else 1
    image = np.random.default_rng(1000 + case["seed"]).integers(0, 256, (case["size"], case["size"], c_img),
                                                                 dtype=np.uint8)
    ref, scope = run_inference(repo, seg, enc, lpips_mod, case, state, lpips_state, image, torch.float64)
    f32, _ = run_inference(repo, seg, enc, lpips_mod, case, state, lpips_state, image, torch.float32, pin=ref)
    torch.set_default_dtype(torch.float32)

    # the script's draws: the modules' initial weights (torch.randn, then replaced by the checkpoint's),
    # g_ema.make_noise()'s maps; with --mean_init the 10,000 z of the mean latent; with --no_noises
    # the maps of every G call (each step's, then the final image's)
    n_noise = len(scope["noises"])
    shapes = [("z", tuple(n.shape)) for n in scope["noises"]]
    everything = ref.draws.all
    start = max(j for j in range(len(everything) - n_noise + 1)
                if [(k, v.shape) for k, v in everything[j:j + n_noise]] == shapes)
    draws, rest = everything[start:start + n_noise], everything[start + n_noise:]
    if case.get("flags") and "--mean_init" in case["flags"]:
        kind, z = rest.pop(0)
        assert kind == "z" and z.shape == (10000, case["style_dim"]), (kind, z.shape)
    if case.get("flags") and "--no_noises" in case["flags"]:
        assert [k for k, _ in rest] == ["noise"] * n_noise * (case["steps"] + 1), [k for k, _ in rest]
    else:
        assert not rest, [k for k, _ in rest]
    meta["layout"] = {name: [[k, list(v.shape)] for k, v in sorted(sd.items())] for name, sd in state.items()}
    meta["layout"]["lpips_heads"] = [[k, list(v.shape)] for k, v in sorted(heads.items())]
    meta["lpips"] = lp_meta
    arrays = {f"init/{name}": pack(sd) for name, sd in state.items()}
    arrays["lpips/heads"] = pack(heads)
    arrays["target"] = nhwc(scope["target_img_tensor"]).astype(np.float32)
    arrays["target_png"] = image
    for i, (_, noise) in enumerate(draws):
        arrays[f"draw/noise_{i}"] = noise.transpose(0, 2, 3, 1).astype(np.float32)
    if case.get("flags") and "--mean_init" in case["flags"]:
        arrays["draw/mean_z"] = z.astype(np.float32)
    if rest:  # (steps + 1) x n_noise maps -> per layer (steps, 1, r, r, 1); the final image's left out
        for i in range(n_noise):
            arrays[f"draw/step_noise_{i}"] = np.stack([rest[k * n_noise + i][1].transpose(0, 2, 3, 1)
                                                       for k in range(case["steps"])]).astype(np.float32)

    def layout(d):  # p0 = w+ (1, n_latent, style_dim), p1.. = noise_0.. in NHWC (the ones optimised)
        return {"w": d["p0"], **{f"noise_{i}": d[f"p{i + 1}"].transpose(0, 2, 3, 1) for i in range(len(d) - 1)}}

    for what in ("grad", "before", "param", "exp_avg", "exp_avg_sq"):
        arrays[f"steps/{what}"] = np.stack([pack(layout(s[what])) for s in ref.steps])
    optimised = scope["noises"] if len(ref.steps[0]["param"]) > 1 else []
    arrays["final"] = pack(layout({"p0": scope["latent_in"].detach().double().numpy(),
                                   **{f"p{i + 1}": n.detach().double().numpy() for i, n in enumerate(optimised)}}))
    meta["param_layout"] = [[k, list(v.shape)] for k, v in sorted(layout(ref.steps[0]["param"]).items())]
    meta["lr"] = [s["lr"] for s in ref.steps]
    meta["adam_step"] = [s["step"] for s in ref.steps]
    meta["losses"] = ref.losses
    meta["f32_gap"] = f32.gap
    meta["f32_losses_gap"] = [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(f32.losses, ref.losses)]
    del meta["manifest"]
    path = out_dir / f"{case['name']}.npz"
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="local checkout of nv-tlabs/semanticGAN_code")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from official_code import import_official

    seg, enc = import_reference(args.reference.resolve())
    official = import_official(args.reference.resolve(), ["semanticGAN.train_seg_gan", "semanticGAN.train_enc"])
    tr = official["semanticGAN.train_seg_gan"]
    args.out.mkdir(parents=True, exist_ok=True)
    for case in INFER_CASES:
        if args.only and case["name"] not in args.only:
            continue
        tr_enc = official["semanticGAN.train_enc"]
        path = make_infer_case(case, args.reference.resolve(), seg, enc, tr_enc.lpips, args.out)
        meta = json.loads(str(np.load(path)["meta"]))
        worst = max(v for g in meta["f32_gap"] for v in g.values())
        print(f"{path} ({path.stat().st_size / 1024:.0f} KiB); lr per step {meta['lr']}; "
              f"official float32 vs float64, pinned, worst step quantity: {worst:.2e}")
    for case in STAGE2_CASES:
        if args.only and case["name"] not in args.only:
            continue
        path = make_stage2_case(case, official["semanticGAN.train_enc"], seg, enc, args.out)
        meta = json.loads(str(np.load(path)["meta"]))
        worst = max(v for g in meta["f32_gap"].values() for v in g.values())
        print(f"{path} ({path.stat().st_size / 1024:.0f} KiB); train mode per iteration {meta['train_mode']}; "
              f"official float32 vs float64, pinned, worst step quantity: {worst:.2e}")
    for case in CASES:
        if args.only and case["name"] not in args.only:
            continue
        path = make_case(case, tr, seg, args.out)
        meta = json.loads(str(np.load(path)["meta"]))
        worst = max(v for g in meta["f32_gap"].values() for v in g.values())
        print(f"{path} ({path.stat().st_size / 1024:.0f} KiB); phases {meta['phases']}; "
              f"official float32 vs float64, pinned, worst phase quantity: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
