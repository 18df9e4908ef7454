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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="local checkout of nv-tlabs/semanticGAN_code")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from official_code import import_official

    seg, _ = import_reference(args.reference.resolve())
    tr = import_official(args.reference.resolve(), ["semanticGAN.train_seg_gan"])["semanticGAN.train_seg_gan"]
    args.out.mkdir(parents=True, exist_ok=True)
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
