"""Official PyTorch checkpoints -> Flax (semgan_jax.convert), against numbers of the official code.

The fixtures (tests/fixtures/*.npz, made by tools/make_reference_fixtures.py from a local checkout
of the official code) hold inputs, the official modules' outputs and a key -> shape / fill
manifest; the state dicts are redrawn here from the manifest and seed with NumPy alone, so the
numerical tests need no torch. Tests that read or write .pt files skip without torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semgan_jax.convert import ConversionError, convert_checkpoint, export_checkpoint, read_workdir, write_workdir
from semgan_jax.convert import networks

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
# 64 px is where channel_multiplier changes widths; its networks take longest to compile
SLOW = {"stage1_s64_rgb_seg1_cm1"}
# the network fixtures (train_*.npz and infer_*.npz are test_training_parity.py's,
# tools/make_training_fixtures.py)
NETWORK_FIXTURES = [p for p in sorted(FIXTURES.glob("*.npz")) if not p.stem.startswith(("train_", "infer_"))]
CASES = [pytest.param(p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else []) for p in NETWORK_FIXTURES]
NAMES = [p.stem for p in NETWORK_FIXTURES]
TOL = 1e-4  # max abs difference against the official outputs (issue 7), for every output


def _tool():
    path = REPO / "tools" / "make_reference_fixtures.py"  # its NumPy half only; torch is imported lazily
    spec = importlib.util.spec_from_file_location("make_reference_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _tool()


def load_case(name: str):
    """(meta, arrays, checkpoint dict as the official script writes it, NumPy state dicts)."""
    meta, arrays = TOOL.load_fixture(FIXTURES / f"{name}.npz")
    ckpt = TOOL.regenerate_state_dicts(meta)
    if meta["args"] is not None:
        ckpt["args"] = dict(meta["args"])
    return meta, arrays, ckpt


def _close(name, got, want):
    diff = float(np.max(np.abs(np.asarray(got) - want)))
    assert diff < TOL, f"{name}: max abs diff {diff:.3g} >= {TOL:g}"
    return diff


def test_fixtures_cover_the_issue():
    cases = [TOOL.load_fixture(FIXTURES / f"{n}.npz")[0]["case"] for n in NAMES]
    assert {c["size"] for c in cases} >= {16, 32}
    assert {c["cm"] for c in cases if c["kind"] == "stage1"} == {1, 2}
    assert {c["seg_dim"] for c in cases} >= {1, 8}
    assert {c["image_mode"] for c in cases} == {"RGB", "L"}
    assert {c.get("backbone") for c in cases if c["kind"] == "stage2"} == {"fpn", "res"}
    assert any(c["kind"] == "stylegan2" for c in cases)
    assert sum(p.stat().st_size for p in NETWORK_FIXTURES) < 2 * 2**20


@pytest.mark.parametrize("case", CASES)
def test_converted_networks_match_reference(case):
    meta, x, ckpt = load_case(case)
    kind = meta["case"]["kind"]
    seg_dim = meta["case"]["seg_dim"] if kind == "stylegan2" else None
    config, variables = convert_checkpoint(ckpt, seg_dim=seg_dim)
    m, c = config["model"], meta["case"]
    channels = 3 if c["image_mode"] == "RGB" else 1
    assert (m["size"], m["seg_dim"], m["image_channels"]) == (c["size"], c["seg_dim"], channels)
    if kind == "stage1" or c["size"] >= 64:  # from args, or from the 64-px widths
        assert m["channel_multiplier"] == c["cm"]
    if kind == "stage2":  # train_enc.py writes no args: all from shapes
        assert config["encoder"]["backbone"] == c["backbone"] and config["networks"] == ["g_ema", "e"]
    worst = {}
    g = networks.build("g_ema", config)
    noise = [jnp.asarray(x[f"noise_{i}"]) for i in range(g.num_layers)] if "noise_0" in x else None
    paths = ("z", "w", "w_plus") if case == "stage1_s16_rgb_seg8_cm2" else ("z", "w_plus")  # w: one case is enough
    for path in paths:
        if f"out_g_{path}_image" not in x:
            continue
        if path == "z":
            run = jax.jit(lambda v, s: g.apply(v, s, randomize_noise=False))
            img, seg = run(variables["g_ema"], x["z"])
        else:
            run = jax.jit(lambda v, s, n: g.apply(v, s, input_is_latent=True, noise=n))
            img, seg = run(variables["g_ema"], x[path], noise)
        worst[f"G({path}) image"] = _close(f"G({path}) image", img, x[f"out_g_{path}_image"])
        if kind == "stylegan2":  # fresh seg branch: the requested classes, same in g and g_ema
            assert seg.shape[-1] == seg_dim and np.isfinite(np.asarray(seg)).all()
        else:
            worst[f"G({path}) seg"] = _close(f"G({path}) seg", seg, x[f"out_g_{path}_seg"])
    if "d_img" in variables:
        out = jax.jit(networks.build("d_img", config).apply)(variables["d_img"], x["image"])
        worst["Dr"] = _close("Dr", out, x["out_d_img"])
    if "d_seg" in variables:
        feats = jax.jit(networks.build("d_seg", config).apply)(variables["d_seg"],
                                                               np.concatenate([x["image"], x["mask"]], -1))
        for s, layers in enumerate(feats):
            for j, f in enumerate(layers):
                if f"out_d_seg_{s}_{j}" in x:
                    worst[f"Dm[{s}][{j}]"] = _close(f"Dm[{s}][{j}]", f, x[f"out_d_seg_{s}_{j}"])
    if "e" in variables:
        out = jax.jit(networks.build("e", config).apply)(variables["e"], x["image"])
        worst["E"] = _close("E w+", out, x["out_e"])
    print(case, json.dumps({k: f"{v:.2e}" for k, v in worst.items()}))

    # the way back is exact (StyleGAN2: plus the new to_seg* tensors)
    exported = export_checkpoint(config, variables)
    for name, sd in ckpt.items():
        if name == "args":
            continue
        back = exported["d_img" if name == "d" else name]
        for key, value in sd.items():
            np.testing.assert_array_equal(back[key], value, err_msg=f"{name}.{key}")
    if kind == "stylegan2":
        np.testing.assert_array_equal(exported["g_ema"]["to_seg1.bias"].shape, (1, seg_dim, 1, 1))


def test_model_config_prefers_args_over_shapes():
    from semgan_jax.convert.formats import model_config

    _, _, ckpt = load_case("stage2_res_s16_gray_seg1")
    assert model_config(ckpt["g_ema"], None)["channel_multiplier"] == 2  # < 64 px: not in the shapes
    m = model_config(ckpt["g_ema"], {"size": 16, "channel_multiplier": 1, "image_mode": "L", "seg_dim": 1})
    assert (m["size"], m["channel_multiplier"], m["image_channels"], m["seg_dim"]) == (16, 1, 1, 1)


# ---- errors ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage1():
    return load_case("stage1_s16_rgb_seg8_cm2")[2]


def test_not_a_checkpoint(stage1):
    with pytest.raises(ConversionError, match="expected a checkpoint dict"):
        convert_checkpoint([1, 2])
    with pytest.raises(ConversionError, match="not a SemanticGAN or StyleGAN2 checkpoint"):
        convert_checkpoint({"model": {}, "epoch": 3})


def test_missing_network(stage1):
    ckpt = {k: v for k, v in stage1.items() if k != "d_seg"}
    with pytest.raises(ConversionError, match="lacks network 'd_seg'"):
        convert_checkpoint(ckpt)
    with pytest.raises(ConversionError, match="lacks network 'e'|lacks network 'g_ema'"):
        convert_checkpoint({"e": stage1["d_img"]})


def test_shape_mismatch_names_key_and_shapes(stage1):
    ckpt = dict(stage1, d_img=dict(stage1["d_img"]))
    ckpt["d_img"]["final_linear.0.weight"] = np.zeros((512, 100), np.float32)
    with pytest.raises(ConversionError, match=r"d_img: torch key 'final_linear.0.weight' has shape \(512, 100\), "
                                              r"expected \(512, 8192\)"):
        convert_checkpoint(ckpt)


def test_missing_and_unexpected_keys(stage1):
    d_seg = {k: v for k, v in stage1["d_seg"].items() if k != "scale0_layer1.0.0.weight_u"}
    d_seg["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match=r"d_seg: .*missing keys: scale0_layer1.0.0.weight_u.*"
                                              r"unexpected keys: extra.weight"):
        convert_checkpoint(dict(stage1, d_seg=d_seg))


def test_foreign_blur_kernel_is_refused(stage1):
    g = dict(stage1["g"], **{"convs.0.conv.blur.kernel": np.ones((4, 4), np.float32)})
    with pytest.raises(ConversionError, match="convs.0.conv.blur.kernel"):
        convert_checkpoint(dict(stage1, g=g))


def test_export_refuses_non_reference_widths():
    config = {"networks": ["g_ema"], "model": dict(size=16, style_dim=32, n_mlp=2, seg_dim=1, image_channels=3,
                                                    channel_multiplier=2, channel_base=0, channel_max=16,
                                                    lr_mlp=0.01, dm_ndf=8, dm_n_layers=3, dm_num_d=3,
                                                    dm_max_channels=16)}
    with pytest.raises(ConversionError, match="official code cannot hold.*style_dim=32"):
        export_checkpoint(config, {})


def test_without_torch_says_how_to_install(monkeypatch, tmp_path):
    """A well-formed checkpoint (torch.save's zip layout, a plain dict) passes the pickle scan,
    then needs torch to be read: the error says how to install it."""
    import pickle
    import zipfile

    from semgan_jax.convert import load_torch_checkpoint

    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/data.pkl", pickle.dumps({"a": 1}, protocol=2))
        z.writestr("x/version", "3\n")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConversionError, match=r"pip install 'semgan_jax\[torch\]'"):
        load_torch_checkpoint(path)


# ---- run directories ------------------------------------------------------------------------

def _restore_gan_state(directory: Path):
    """As `semgan train-gan --resume` does: models from the run config, the latest checkpoint."""
    import ml_collections

    from semgan_jax.checkpoint import Checkpointer
    from semgan_jax.train import gan

    from semgan_jax.parallel import make_mesh, replicated

    run = ml_collections.ConfigDict(json.loads((directory / "config.json").read_text()))
    models = gan.build_models(run.model, run.train.lr, run.train.d_reg_every, run.train.g_reg_every)
    sharding = replicated(make_mesh(1))
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                            jax.eval_shape(lambda: gan.init_state(models, jax.random.PRNGKey(0))))
    ckpt = Checkpointer(directory / "checkpoints")
    try:
        state, data = ckpt.restore(abstract)
    finally:
        ckpt.close()
    return run, state, data


def _assert_tree_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b))


def test_stage1_run_directory_restores_into_gan_state(stage1, tmp_path):
    config, variables = convert_checkpoint(stage1, iteration=2000)
    assert config["source"] == "semanticgan-stage1" and config["iteration"] == 2000
    assert config["train"]["lr"] == 0.002 and config["train"]["batch_size"] == 16  # from args
    out = write_workdir(tmp_path / "run", config, variables)
    run, state, data = _restore_gan_state(out)
    assert int(state.step) == 2000 and run.model.size == 16 and run.model.seg_dim == 8
    for name in ("g", "g_ema", "d_img", "d_seg"):
        _assert_tree_equal(getattr(state, name), variables[name]["params"])
    _assert_tree_equal(state.d_seg_spectral, variables["d_seg"]["spectral"])
    _assert_tree_equal(state.g_noises, variables["g_ema"]["noises"])
    assert set(data) == {"unlabeled", "labeled"}
    with pytest.raises(ConversionError, match="not empty"):
        write_workdir(out, config, variables)
    # and back: the latest checkpoint of a run directory exports to the original tensors
    config2, variables2 = read_workdir(out)
    exported = export_checkpoint(config2, variables2)
    for name in ("g_ema", "d_img", "d_seg"):
        for key, value in stage1[name].items():
            np.testing.assert_array_equal(exported[name][key], value, err_msg=f"{name}.{key}")
    assert vars(exported["args"])["seg_dim"] == 8 and "g_optim" in exported


@pytest.mark.slow  # initialises the discriminators the file lacks (compiles them)
def test_stage2_run_directory_is_what_segment_reads(tmp_path):
    from semgan_jax import infer

    _, _, ckpt = load_case("stage2_res_s16_gray_seg1")
    config, variables = convert_checkpoint(ckpt, iteration=500)
    out = write_workdir(tmp_path / "enc", config, variables)
    inverter, loaded, s1 = infer.load_inverter(out, use_lpips="off")
    assert s1.model.size == 16 and inverter.e is not None
    _assert_tree_equal(loaded["g"], variables["g_ema"]["params"])
    _assert_tree_equal(loaded["e"], variables["e"])
    assert json.loads((out / "converted.json").read_text())["step"] == 500
    config2, variables2 = read_workdir(out)
    exported = export_checkpoint(config2, variables2)
    for name in ("g_ema", "e"):
        for key, value in ckpt[name].items():
            np.testing.assert_array_equal(exported[name][key], value, err_msg=f"{name}.{key}")


@pytest.mark.slow
def test_stylegan2_run_directory_starts_semanticgan(tmp_path):
    meta, _, ckpt = load_case("stylegan2_s16_rgb")
    config, variables = convert_checkpoint(ckpt, seg_dim=3, seed=1, iteration=9000)
    out = write_workdir(tmp_path / "sg2", config, variables)
    run, state, _ = _restore_gan_state(out)
    assert int(state.step) == 0 and run.model.seg_dim == 3  # SemanticGAN training starts here
    _assert_tree_equal(state.g_ema["synthesis"]["to_seg1"], state.g["synthesis"]["to_seg1"])
    _assert_tree_equal(state.d_img, variables["d_img"]["params"])


# ---- .pt files (torch) ----------------------------------------------------------------------

class _Boom:
    """Unpickling this would create `marker` (it must never happen)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _save_pt(torch, path, ckpt):
    out = {k: ({kk: torch.from_numpy(np.array(vv)) for kk, vv in v.items()} if k != "args"
               else argparse.Namespace(**v)) for k, v in ckpt.items()}
    torch.save(out, path)


def test_safe_loading(tmp_path):
    torch = pytest.importorskip("torch")
    from semgan_jax.convert import load_torch_checkpoint

    marker = tmp_path / "executed"
    torch.save({"g_ema": {"w": torch.zeros(2)}, "payload": _Boom(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="refused.*open.*Nothing from it was executed"):
        load_torch_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ConversionError, match="not a PyTorch checkpoint"):
        load_torch_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ConversionError, match="no such file"):
        load_torch_checkpoint(tmp_path / "missing.pt")
    torch.save({"args": argparse.Namespace(size=16), "t": torch.ones(3, dtype=torch.float64)}, tmp_path / "ok.pt")
    loaded = load_torch_checkpoint(tmp_path / "ok.pt")
    assert loaded["args"] == {"size": 16} and loaded["t"].dtype == np.float32


def test_cli_convert_and_export(stage1, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from semgan_jax.cli import main

    pt = tmp_path / "000123.pt"
    _save_pt(torch, pt, stage1)
    out = tmp_path / "run"
    assert main(["convert", str(pt), "--out", str(out)]) == 0
    assert "train-gan" in capsys.readouterr().out
    record = json.loads((out / "converted.json").read_text())
    assert record["source"] == "semanticgan-stage1" and record["step"] == 123
    assert (out / "checkpoints" / "123").is_dir()

    back = tmp_path / "back.pt"
    assert main(["export", str(out), "--to-torch", str(back)]) == 0
    with torch.serialization.safe_globals([argparse.Namespace]):
        exported = torch.load(back, weights_only=True)
    for name in ("g_ema", "d_img", "d_seg"):
        for key, value in stage1[name].items():
            np.testing.assert_array_equal(exported[name][key].numpy(), value, err_msg=f"{name}.{key}")
    assert exported["args"].size == 16

    assert main(["convert", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")]) == 1
    assert "no such file" in capsys.readouterr().err
