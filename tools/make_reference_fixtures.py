"""Make the fixtures of tests/test_convert.py from a local checkout of the official SemanticGAN code.

    git clone https://github.com/nv-tlabs/semanticGAN_code /tmp/ref   # never commit it
    .venv/bin/python tools/make_reference_fixtures.py /tmp/ref [--out tests/fixtures]

For every case in CASES this builds the official modules on CPU (their CPU fallbacks; the CUDA
extensions are not compiled), fills every parameter and buffer with values drawn from NumPy
(`np.random.default_rng(seed)`, networks and keys in sorted order, the distribution of each key
recorded in the manifest; the constant FIR kernels and BatchNorm counters keep their values), runs
them in eval mode on fixed inputs and writes `<case>.npz` with
  meta     JSON: case, seed, args, manifest {network: [[key, shape, dtype, mode, a, b], ...]}
  inputs   z, w, w_plus, noise_i, image, mask (Flax layouts: NHWC, noise (N, r, r, 1))
  outputs  g_{z,w,w_plus}_{image,seg}, d_img, d_seg_{scale}_{layer}, e (NHWC)
Neither the official code nor weights are stored: `regenerate_state_dicts(meta)` rebuilds the
state dicts from the manifest and seed with NumPy alone (the tests import it). The three stage-1
fixtures predate the current nn.Conv2d rule (see fill_spec): their Dm convs were drawn He-normal,
as their manifests record; rerunning them here would give other (equally valid) fixtures.

Finally it checks the way back: semgan_jax's conversion of each state dict, exported again, loads
into the official modules with strict=True and reproduces their outputs exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

CASES = [
    # stage 1: G through z (stored noise), w and w+ (given noise); Dr logits; Dm features
    dict(name="stage1_s16_rgb_seg8_cm2", kind="stage1", size=16, image_mode="RGB", seg_dim=8, cm=2,
         g_paths=("z", "w", "w_plus"), dm_layers="all", seed=1),
    dict(name="stage1_s32_gray_seg1_cm1", kind="stage1", size=32, image_mode="L", seg_dim=1, cm=1,
         g_paths=("z", "w", "w_plus"), dm_layers="final", seed=2),
    # widths depend on channel_multiplier from 64 px on
    dict(name="stage1_s64_rgb_seg1_cm1", kind="stage1", size=64, image_mode="RGB", seg_dim=1, cm=1,
         g_paths=("z", "w_plus"), dm_layers="final", seed=3),
    # stage 2: encoder w+ (no args in these checkpoints)
    dict(name="stage2_fpn_s32_rgb_seg8", kind="stage2", backbone="fpn", size=32, image_mode="RGB", seg_dim=8,
         cm=2, seed=4),
    dict(name="stage2_res_s16_gray_seg1", kind="stage2", backbone="res", size=16, image_mode="L", seg_dim=1,
         cm=2, seed=5),
    # rosinality StyleGAN2: the generator without to_seg*, and d
    dict(name="stylegan2_s16_rgb", kind="stylegan2", size=16, image_mode="RGB", seg_dim=1, cm=2,
         g_paths=("z",), seed=6),
]
BATCH = 2


# ---- NumPy side (shared with the tests) -----------------------------------------------------

def draw(rng: np.random.Generator, shape, dtype: str, mode: str, a, b) -> np.ndarray:
    """One tensor: normal(a, b), uniform(a, b), unit (normalised normal) or const (value a)."""
    if mode == "normal":
        return (a + b * rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
    if mode == "uniform":
        return rng.uniform(a, b, shape).astype(dtype)
    if mode == "unit":
        v = rng.standard_normal(shape, dtype=np.float32)
        return (v / np.linalg.norm(v)).astype(dtype)
    if mode == "const":
        return np.asarray(a, dtype).reshape(shape)
    raise ValueError(f"unknown fill mode {mode!r}")


def regenerate_state_dicts(meta: dict) -> dict[str, dict[str, np.ndarray]]:
    """The case's state dicts {network: {key: array}}, drawn in sorted order from meta['seed']."""
    rng = np.random.default_rng(meta["seed"])
    out = {}
    for network in sorted(meta["manifest"]):
        out[network] = {key: draw(rng, tuple(shape), dtype, mode, a, b)
                        for key, shape, dtype, mode, a, b in sorted(meta["manifest"][network])}
    return out


def load_fixture(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a fixture file."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    return meta, arrays


# ---- torch side -----------------------------------------------------------------------------

def import_reference(repo: Path):
    """The official models/stylegan2_seg and models/encoder_model, imported without compiling their
    CUDA ops (benchmarks/official_code.py; CPU tensors take the native paths in models/op:
    `upfirdn2d_native` and the leaky-ReLU fallback)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from official_code import import_official

    names = ("models.stylegan2_seg", "models.encoder_model")
    modules = import_official(repo, names, device="cpu")
    return tuple(modules[n] for n in names)


def fill_spec(module, name: str, tensor) -> tuple[str, float, float]:
    """How to fill one parameter / buffer (mode, a, b), by the type of the module owning it:
    roughly the scale of the reference's own initialisation, with non-zero biases and noise
    strengths, unit spectral-norm vectors and positive running variances."""
    import torch

    kind = type(module).__name__
    if kind in ("Blur", "Upsample", "Downsample") or name == "num_batches_tracked":
        return "const", tensor.flatten().tolist(), 0.0
    if kind == "EqualLinear":
        lr_mul = module.lr_mul
        return ("normal", 0.0, 1.0 / lr_mul) if name == "weight" else ("normal", float(tensor.mean()), 0.5 / lr_mul)
    if kind in ("EqualConv2d", "ModulatedConv2d", "ConstantInput") or module.__class__ is torch.nn.Module:
        return "normal", 0.0, 1.0  # equalised-lr weights (scaled at run time); noise buffers
    if kind in ("FusedLeakyReLU", "NoiseInjection", "ToRGB", "ToSEG"):
        return "normal", 0.0, 0.5
    if kind == "Conv2d":
        # The reference keeps torch's default, uniform(+-1/sqrt(fan_in)) for weight and bias. Drawn
        # at twice that bound here: at torch's own bound the signal fades through the FPN encoder's
        # stride-2 ToStyleCode heads (its w+ barely depends on the image), at He's (sqrt(6/fan_in))
        # it grows through the 16 residual blocks of the ResNet-50 trunk (w+ up to ~80).
        if name in ("weight_u", "weight_v"):
            return "unit", 0.0, 0.0
        weight = getattr(module, "weight_orig", None)  # spectral norm keeps the raw weight there
        bound = 2.0 / math.sqrt((module.weight if weight is None else weight)[0].numel())
        return "uniform", -bound, bound
    if kind == "BatchNorm2d":
        return {"weight": ("normal", 1.0, 0.1), "bias": ("normal", 0.0, 0.1),
                "running_mean": ("normal", 0.0, 0.1), "running_var": ("uniform", 0.5, 1.5)}[name]
    raise ValueError(f"no fill rule for {kind}.{name}")


def manifest_of(net, skip=lambda key: False) -> list:
    """[[key, shape, dtype, mode, a, b], ...] for every state-dict entry of a module, sorted."""
    rows = []
    for prefix, module in net.named_modules():
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for name, tensor in tensors:
            key = f"{prefix}.{name}" if prefix else name
            if not skip(key):
                dtype = str(tensor.dtype).replace("torch.", "")
                rows.append([key, list(tensor.shape), dtype, *fill_spec(module, name, tensor)])
    assert {r[0] for r in rows} | {k for k in net.state_dict() if skip(k)} == set(net.state_dict())
    return sorted(rows)


def nchw(x: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1).astype(np.float32)


def build_networks(case: dict, seg, enc) -> dict:
    size, cm, seg_dim = case["size"], case["cm"], case["seg_dim"]
    c_img = 3 if case["image_mode"] == "RGB" else 1

    def generator():
        return seg.GeneratorSeg(size, 512, 8, seg_dim=seg_dim, image_mode=case["image_mode"], channel_multiplier=cm)

    if case["kind"] == "stage1":
        return {"g": generator(), "g_ema": generator(),
                "d_img": seg.Discriminator(size, c_img, channel_multiplier=cm),
                "d_seg": seg.MultiscaleDiscriminator(c_img + seg_dim, getIntermFeat=True)}
    if case["kind"] == "stage2":
        e = (enc.FPNEncoder(c_img, n_latent=2 * int(math.log2(size)) - 2) if case["backbone"] == "fpn" else
             enc.ResEncoder(size, c_img, 2 * int(math.log2(size)) - 2, channel_multiplier=cm))
        return {"g_ema": generator(), "e": e}
    return {"g_ema": generator(), "d": seg.Discriminator(size, 3, channel_multiplier=cm)}


def reference_args(case: dict) -> dict | None:
    """A train_seg_gan.py-like args dict (stage 1 only; stage-2 checkpoints carry none)."""
    if case["kind"] != "stage1":
        return None
    return {"size": case["size"], "latent": 512, "n_mlp": 8, "seg_dim": case["seg_dim"],
            "image_mode": case["image_mode"], "channel_multiplier": case["cm"], "lr": 0.002, "batch": 16,
            "d_reg_every": 16, "g_reg_every": 4, "seg_name": "celeba-mask", "limit_data": None}


def run_networks(case: dict, nets: dict, inputs: dict) -> dict[str, np.ndarray]:
    import torch

    out = {}
    with torch.no_grad():
        g = nets["g_ema"]
        noise = [nchw(inputs[f"noise_{i}"]) for i in range(g.num_layers)] if "noise_0" in inputs else None
        for path in case.get("g_paths", ()):
            if path == "z":
                res = g([torch.from_numpy(inputs["z"])], randomize_noise=False)
            else:
                res = g([torch.from_numpy(inputs[path])], input_is_latent=True, noise=noise)
            out[f"g_{path}_image"] = nhwc(res[0])
            if case["kind"] != "stylegan2":
                out[f"g_{path}_seg"] = nhwc(res[1])
        image = nchw(inputs["image"])
        for name in ("d_img", "d"):
            if name in nets:
                out["d_img"] = nets[name](image).numpy()
        if "d_seg" in nets:
            feats = nets["d_seg"](torch.cat([image, nchw(inputs["mask"])], 1))
            for s, layers in enumerate(feats):
                for j, f in enumerate(layers):
                    if case["dm_layers"] == "all" or j == len(layers) - 1:
                        out[f"d_seg_{s}_{j}"] = nhwc(f)
        if "e" in nets:
            out["e"] = nets["e"](image).numpy()
    return out


def make_inputs(case: dict, n_layers: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + case["seed"])
    size, c_img = case["size"], 3 if case["image_mode"] == "RGB" else 1
    n_latent = 2 * int(math.log2(size)) - 2
    x = {"image": rng.standard_normal((BATCH, size, size, c_img), dtype=np.float32)}
    if case["kind"] == "stage1":
        x["mask"] = rng.standard_normal((BATCH, size, size, case["seg_dim"]), dtype=np.float32)
    paths = case.get("g_paths", ())
    if "z" in paths:
        x["z"] = rng.standard_normal((BATCH, 512), dtype=np.float32)
    if "w" in paths:
        x["w"] = rng.standard_normal((BATCH, 512), dtype=np.float32)
    if "w_plus" in paths:
        x["w_plus"] = rng.standard_normal((BATCH, n_latent, 512), dtype=np.float32)
    if {"w", "w_plus"} & set(paths):
        for i in range(n_layers):
            r = 2 ** ((i + 5) // 2)
            x[f"noise_{i}"] = rng.standard_normal((BATCH, r, r, 1), dtype=np.float32)
    return x


def make_case(case: dict, seg, enc, out_dir: Path) -> Path:
    import torch

    nets = build_networks(case, seg, enc)
    plain = case["kind"] == "stylegan2"
    skip = (lambda key: key.startswith("to_seg")) if plain else (lambda key: False)
    manifest = {name: manifest_of(net, skip if name == "g_ema" else (lambda key: False))
                for name, net in nets.items()}
    meta = {"case": case, "seed": case["seed"], "args": reference_args(case), "manifest": manifest}
    state = regenerate_state_dicts(meta)
    for name, net in nets.items():
        sd = {k: torch.from_numpy(v) for k, v in state[name].items()}
        if plain and name == "g_ema":  # the image does not depend on the seg branch
            sd.update({k: torch.zeros_like(v) for k, v in net.state_dict().items() if skip(k)})
        net.load_state_dict(sd, strict=True)
        net.eval()
    inputs = make_inputs(case, nets["g_ema"].num_layers)
    outputs = run_networks(case, nets, inputs)
    path = out_dir / f"{case['name']}.npz"
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **inputs, **{f"out_{k}": v for k, v in outputs.items()})
    check_export(case, meta, state, seg, enc, inputs, outputs)
    return path


def check_export(case, meta, state, seg, enc, inputs, outputs):
    """semgan_jax conversion -> export -> strict load into fresh official modules -> same outputs."""
    import torch

    from semgan_jax.convert import convert_checkpoint, export_checkpoint

    ckpt = dict(state)
    if meta["args"] is not None:
        ckpt["args"] = meta["args"]
    config, variables = convert_checkpoint(ckpt, seg_dim=case["seg_dim"] if case["kind"] == "stylegan2" else None)
    exported = export_checkpoint(config, variables)
    nets = build_networks(case, seg, enc)
    for name, net in nets.items():
        key = "d_img" if name == "d" else name
        net.load_state_dict({k: torch.from_numpy(v) for k, v in exported[key].items()}, strict=True)
        net.eval()
    again = run_networks(case, nets, inputs)
    for k, v in outputs.items():
        if k.endswith("_seg") and case["kind"] == "stylegan2":
            continue
        if not np.array_equal(again[k], v):
            raise AssertionError(f"{case['name']}: {k} differs after convert + export")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="local checkout of nv-tlabs/semanticGAN_code")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args(argv)
    import torch

    torch.set_grad_enabled(False)
    seg, enc = import_reference(args.reference.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        if args.only and case["name"] not in args.only:
            continue
        path = make_case(case, seg, enc, args.out)
        print(f"{path} ({path.stat().st_size / 1024:.0f} KiB); export loads strictly and reproduces outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
