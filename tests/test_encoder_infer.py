"""Stage 2 (encoder training) and inference (batched latent optimisation), on a tiny 16-px
stage-1 run made once for the module."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_batch, tiny_gan_config
from semgan_jax import cli, infer
from semgan_jax.train import encoder as stage2


def tiny_encoder_config(stage1_dir, **overrides):
    c = stage2.default_config()
    c.stage1 = str(stage1_dir)
    c.data.update(unlabeled_split="train", num_labeled=16, num_workers=0, prefetch=2)
    # one bottleneck per FPN stage instead of ResNet-50's (3, 4, 6, 3): the stage-2 step compiles
    # in half the time; the full depth is tested in test_networks, test_convert and the parity tests
    c.encoder.update(base_width=4, feature_dim=8, num_blocks=(1, 1, 1, 1))
    c.train.update(iterations=2, batch_size=8, lr_decay_start=100, lr_decay_end=200, lambda_unlabel_lpips=0.0,
                   lambda_label_lpips=0.0)
    c.log.update(log_every=1, viz_every=2, n_sample=4, save_every=1000)
    for k, v in overrides.items():
        section, field = k.split(".")
        c[section][field] = v
    return c


def write_stage1_run(workdir, config):
    """A stage-1 run directory (config.json + a step-0 checkpoint of a fresh state), as train-gan
    writes it, without training: the encoder tests need a generator, not a trained one."""
    from semgan_jax.checkpoint import Checkpointer
    from semgan_jax.train.gan import build_models, init_state, make_iterators

    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    models = build_models(config.model, config.train.lr, config.train.d_reg_every, config.train.g_reg_every)
    state = jax.jit(lambda k: init_state(models, k))(jax.random.PRNGKey(0))
    it_u, it_l = make_iterators(config, config.train.batch_size)
    ckpt = Checkpointer(workdir / "checkpoints")
    ckpt.save(0, state, {"unlabeled": it_u.get_state(), "labeled": it_l.get_state()})
    ckpt.close()


# The perceptual term on, with the stage-1 run's Dr as its feature net (no weight files)
PERCEPTUAL = {"train.lambda_unlabel_lpips": 10.0, "train.lambda_label_lpips": 10.0, "lpips.net": "dr"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A stage-1 run directory and a 2-iteration stage-2 run on it (perceptual term: Dr's)."""
    root = tmp_path_factory.mktemp("runs")
    write_stage1_run(root / "stage1", tiny_gan_config())
    stage2.train(tiny_encoder_config(root / "stage1", **PERCEPTUAL), root / "stage2")
    return root


def fixed_batch():
    """conftest's random stage-2 batch at the tiny config's 16 px and 6 classes, as jax arrays."""
    return jax.tree.map(jnp.asarray, random_batch(16, 6))


def test_stage2_run_writes_samples_metrics_and_checkpoint(runs):
    rows = [json.loads(r) for r in (runs / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"e_unlabel_mse", "e_label_ce", "e_label_dice", "e_label_loss"} <= set(rows[0])
    assert all(r["e_unlabel_lpips"] > 0 and r["e_label_lpips"] > 0 for r in rows)  # Dr's distance
    assert (runs / "stage2" / "samples" / "step_000002.png").is_file()
    assert (runs / "stage2" / "checkpoints" / "2").is_dir()


def test_wrong_stage_is_named(runs):
    with pytest.raises(ValueError, match="not a stage-1"):
        stage2.load_stage1_config(runs / "stage2")
    with pytest.raises(FileNotFoundError, match="must name a stage-1 workdir"):
        stage2.load_stage1_config(runs / "nowhere")


def test_encoder_step_lowers_both_losses_on_a_fixed_batch(runs):
    """With the perceptual term on (Dr's), 12 iterations of the reference's two updates on one
    batch lower the unlabeled and the labeled loss; the labeled optimiser's Lookahead copy starts
    from the weights at its first step. The step is the loop's program: the `runs` fixture ran it,
    and stage2.programs gives this process's compiled program back (fed as the loop feeds it)."""
    from semgan_jax.parallel import global_batch, make_mesh, replicated

    mesh = make_mesh(1)
    s1, gm, s1_state = stage2.load_stage1(runs / "stage1", mesh)
    cfg = tiny_encoder_config(runs / "stage1", **PERCEPTUAL)
    lp, lp_params = stage2.load_perceptual(cfg.lpips, gm, s1_state)
    models, init, loop_step = stage2.programs(s1.model, cfg, lp, mesh)
    frozen = jax.device_put({"g": s1_state.g_ema, "lpips": lp_params}, replicated(mesh))
    state = init(jax.random.PRNGKey(0), frozen["g"])
    step = lambda s, b: loop_step(s, b, frozen)  # noqa: E731
    batch = global_batch(jax.device_get(fixed_batch()), mesh)
    p0 = jax.tree.map(np.array, state.params)
    history = []
    for i in range(12):
        state, m = step(state, batch)
        history.append(jax.device_get(m))
        if i == 0:
            # Ranger slow copies: the unlabeled one holds the initial weights, the labeled one the
            # weights at its first step (after the first unlabeled update)
            for a, b in zip(jax.tree.leaves(state.slow_unlabel), jax.tree.leaves(p0)):
                np.testing.assert_array_equal(a, b)
            assert max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(state.slow_label),
                                                                     jax.tree.leaves(p0))) > 0
    assert history[0]["e_unlabel_lpips"] > 0
    for key in ("e_unlabel_loss", "e_label_loss"):
        first, last = history[0][key], np.mean([h[key] for h in history[-3:]])
        assert last < first, (key, [h[key] for h in history])
    assert int(state.step) == 12


def test_start_from_latent_avg_adds_g_mean_w_that_no_update_moves(runs):
    """encoder.start_from_latent_avg (pSp): E(x) = E's heads + latent_avg, set at initialisation
    to G_ema's mean w; its gradient is zero, so both optimisers leave it where it is."""
    s1, _, s1_state = stage2.load_stage1(runs / "stage1")
    on = stage2.build_models(s1.model, tiny_encoder_config(runs / "stage1", **{"encoder.start_from_latent_avg": True}))
    off = stage2.build_models(s1.model, tiny_encoder_config(runs / "stage1"))
    # every computation jitted: run op by op, this test compiled ~1,400 programs (70 s cold)
    state = jax.jit(lambda k, g: stage2.init_state(on, k, g))(jax.random.PRNGKey(0), s1_state.g_ema)
    avg = np.asarray(state.params["latent_avg"])
    # an independent estimate of G's mean w, from other z: equal within sampling error
    z = jax.random.normal(jax.random.PRNGKey(7), (20_000, s1.model.style_dim))
    w = np.asarray(jax.jit(lambda z: on.g.apply({"params": s1_state.g_ema}, z, method=type(on.g).get_latent))(z))
    assert avg.shape == (s1.model.style_dim,) and np.abs(avg).max() > 0.1
    np.testing.assert_allclose(avg, w.mean(0), atol=5 * float(w.std(0).max()) / np.sqrt(10_000))
    template = jax.jit(lambda k: stage2.init_state(on, k))(jax.random.PRNGKey(0))
    assert np.all(np.asarray(template.params["latent_avg"]) == 0)

    x = fixed_batch()["image"]
    rest = {k: v for k, v in state.params.items() if k != "latent_avg"}
    w_on = jax.jit(lambda p: on.e.apply(stage2.encoder_variables(p, state.batch_stats), x))(state.params)
    w_off = jax.jit(lambda p: off.e.apply(stage2.encoder_variables(p, state.batch_stats), x))(rest)
    np.testing.assert_allclose(w_on, w_off + avg, rtol=1e-6, atol=1e-6)

    loss = lambda p: jnp.sum(on.e.apply(stage2.encoder_variables(p, state.batch_stats), x) ** 2)  # noqa: E731
    grads = jax.jit(jax.grad(loss))(state.params)
    assert np.all(np.asarray(grads["latent_avg"]) == 0) and float(jnp.abs(grads["fpn"]["conv1"]["weight"]).max()) > 0
    for tx, opt, slow in ((on.tx_unlabel, state.opt_unlabel, state.slow_unlabel),
                          (on.tx_label, state.opt_label, state.slow_label)):
        updates, _ = jax.jit(lambda g, o, p: tx.update(g, o, p))(grads, opt, stage2._opt_params(on, state.params, slow))
        fast = updates.fast if on.ranger else updates
        assert np.all(np.asarray(fast["latent_avg"]) == 0)


@pytest.fixture(scope="module")
def inverter(runs):
    return infer.load_inverter(runs / "stage2", use_lpips="off")


def test_inversion_lowers_reconstruction_error(inverter):
    inv, variables, _ = inverter
    target = fixed_batch()["image"][:1]
    def run(steps):
        cfg = infer.InvertConfig(step=steps, lr=0.1)
        return jax.jit(lambda x: infer.invert(inv, variables, cfg, x, jax.random.PRNGKey(0)))(target)

    start, res = run(0), run(15)  # 0 steps: G(E(x)) with the same initial noise maps
    np.testing.assert_allclose(start["w_plus"], inv.e.apply(variables["e"], target, train=False), atol=1e-6)
    mse_end = float(jnp.mean((res["image"] - target) ** 2))
    mse_start = float(jnp.mean((start["image"] - target) ** 2))
    assert mse_end < mse_start
    assert res["loss"].shape == (1, 15) and float(res["loss"][0, -1]) < float(res["loss"][0, 0])
    assert res["seg"].shape == (1, 16, 16, 6) and res["w_plus"].shape == (1, inv.g.n_latent, inv.g.style_dim)


def test_inversion_with_the_stage1_dr_as_perceptual_net(runs):
    """The stage-2 config names lpips.net = 'dr': the inverter then needs no weight files and its
    perceptual term is DrDistance over the stage-1 run's Dr (a positive part of the loss)."""
    from semgan_jax.perceptual.dr_distance import DrDistance

    inv, variables, _ = infer.load_inverter(runs / "stage2")  # 'auto'
    assert isinstance(inv.lpips, DrDistance)
    _, _, s1_state = stage2.load_stage1(runs / "stage1")
    jax.tree.map(np.testing.assert_array_equal, variables["lpips"], {"dr": {"trunk": s1_state.d_img["trunk"]}})
    off, _, _ = infer.load_inverter(runs / "stage2", use_lpips="off")
    target = fixed_batch()["image"][:2]
    cfg = infer.InvertConfig(step=2)
    with_dr = jax.jit(lambda x: infer.invert(inv, variables, cfg, x, jax.random.PRNGKey(0)))(target)
    without = jax.jit(lambda x: infer.invert(off, {**variables, "lpips": None}, cfg, x, jax.random.PRNGKey(0)))(target)
    assert np.all(with_dr["loss"][:, 0] > without["loss"][:, 0])  # the same first step plus Dr's distance


def test_inversion_with_the_stage1_dm_verdict(runs):
    """--lambda-dm: the stage-1 Dm's hinge "real" loss of (input image, G's mask) joins the loss:
    the first step's loss is the plain one plus lambda_dm times that misfit, computed here
    directly from Dm at the initial latent and noise."""
    inv, variables, _ = infer.load_inverter(runs / "stage2", use_lpips="off", with_dm=True)
    _, gm, s1_state = stage2.load_stage1(runs / "stage1")
    jax.tree.map(np.testing.assert_array_equal, variables["dm"], {"params": s1_state.d_seg,
                                                                  "spectral": s1_state.d_seg_spectral})
    targets = fixed_batch()["image"][:2]
    key = jax.random.PRNGKey(3)

    def run(**kw):
        cfg = infer.InvertConfig(**kw)
        return jax.jit(lambda x: infer.invert(inv, variables, cfg, x, key))(targets)

    plain, judged = run(step=1), run(step=1, lambda_dm=2.0)

    @jax.jit
    def first_pair(x, k):  # the pair Dm judges at step 0: G's mask at w+ = E(x), invert_one's noise maps
        noise = inv.g.make_noise(jax.random.split(k)[0], 1)
        _, seg = inv.g.apply({"params": variables["g"]}, inv.e.apply(variables["e"], x[None], train=False),
                             input_is_latent=True, noise=noise)
        return jnp.concatenate([x[None], seg], axis=-1)

    for i, k in enumerate(jax.random.split(key, 2)):
        preds = gm.d_seg.apply(variables["dm"], first_pair(targets[i], k), update_stats=False)
        misfit = np.mean([np.mean(np.maximum(1 - np.asarray(p[-1]), 0)) for p in preds])
        assert misfit > 0
        np.testing.assert_allclose(judged["loss"][i, 0], plain["loss"][i, 0] + 2.0 * misfit, rtol=1e-5)


def test_batched_inversion_equals_one_image_at_a_time(inverter):
    inv, variables, _ = inverter
    targets = fixed_batch()["image"][:3]
    cfg = infer.InvertConfig(step=4)
    key = jax.random.PRNGKey(5)
    batched = jax.jit(lambda x: infer.invert(inv, variables, cfg, x, key))(targets)
    keys = jax.random.split(key, 3)
    one = jax.jit(lambda x, k: infer.invert_one(inv, variables, cfg, x, k))
    for i in range(3):
        single = one(targets[i], keys[i])
        # float32 summation order differs between the batched and single programs; Adam's
        # normalised steps carry that through 4 steps to a few 1e-5 where a gradient is ~0
        for name in ("w_plus", "image", "seg", "loss"):
            np.testing.assert_allclose(batched[name][i], single[name], atol=1e-4, rtol=1e-5)


def test_mean_init_inversion_runs_from_a_stage1_run(runs):
    inv, variables, _ = infer.load_inverter(runs / "stage1", use_lpips="off")
    assert inv.e is None
    cfg = infer.InvertConfig(step=3, mean_init=True, n_mean_latent=64)
    res = jax.jit(lambda x: infer.invert(inv, variables, cfg, x, jax.random.PRNGKey(0)))(fixed_batch()["image"][:2])
    assert np.all(np.isfinite(res["loss"]))


def test_segment_and_evaluate_commands(runs, tmp_path):
    from PIL import Image

    from semgan_jax.data import synthetic

    src = synthetic.synthetic_split("test", 16)
    images = tmp_path / "images"
    masks = tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(3):
        Image.fromarray(src[i]["image"]).save(images / f"f{i}.png")
        Image.fromarray(src[i]["mask"]).save(masks / f"f{i}.png")
    Image.fromarray(src[3]["image"]).convert("RGBA").resize((24, 24)).save(images / "rgba24.png")
    Image.fromarray(src[3]["mask"]).resize((24, 24), Image.NEAREST).save(masks / "rgba24.png")
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    common = ["--checkpoint", str(runs / "stage2"), "--step", "3", "--batch", "4", "--lpips", "off"]
    with pytest.warns(UserWarning, match="rgba24.png: 24x24 resized"):
        assert cli.main(["segment", str(images), "--out", str(out), "--save-latent", *common]) == 0
    for sub in ("mask", "mask_rgb", "recon", "overlay"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["f0.png", "f1.png", "f2.png", "rgba24.png"]
    labels = np.asarray(Image.open(out / "mask" / "f0.png"))
    assert labels.shape == (16, 16) and labels.max() < 6
    assert np.load(out / "latent" / "f0.npy").shape == (6, 32)

    (images / "broken.png").unlink()
    result = tmp_path / "scores.json"
    assert cli.main(["evaluate", "--images", str(images), "--masks", str(masks), "--out", str(result),
                     "--grid", str(tmp_path / "grid.png"), *common]) == 0
    scores = json.loads(result.read_text())
    assert scores["num_images"] == 4 and 0 <= scores["dataset"]["miou"] <= 1
    assert (tmp_path / "grid.png").is_file()
    assert cli.main(["evaluate", "--split", "test", "--limit", "4", "--out", str(result), *common]) == 0
    assert json.loads(result.read_text())["num_images"] == 4


def test_segment_refuses_a_stage1_run_without_mean_init(runs, tmp_path, capsys):
    from semgan_jax.segment import BatchedInverter

    with pytest.raises(ValueError, match="stage-1 .* no encoder.*--mean-init"):
        BatchedInverter(str(runs / "stage1"), infer.InvertConfig(step=1), use_lpips="off")
    with pytest.raises(FileNotFoundError, match="must be a train-encoder"):
        BatchedInverter(str(tmp_path), infer.InvertConfig(step=1), use_lpips="off")


def test_encoder_weight_defaults_to_the_measured_value_without_lpips(runs, capsys):
    """`segment` / `evaluate` leave --lambda-encoder unset by default: the reference's 1e-3 with
    LPIPS, infer.LAMBDA_ENCODER_WITHOUT_LPIPS without it (said on stdout); a given value is kept."""
    from semgan_jax.segment import BatchedInverter

    inv = BatchedInverter(str(runs / "stage2"), infer.InvertConfig(step=1, lambda_encoder=None), use_lpips="off")
    assert inv.cfg.lambda_encoder == infer.LAMBDA_ENCODER_WITHOUT_LPIPS != 1e-3
    assert "encoder-consistency weight" in capsys.readouterr().out
    inv = BatchedInverter(str(runs / "stage2"), infer.InvertConfig(step=1, lambda_encoder=0.5), use_lpips="off")
    assert inv.cfg.lambda_encoder == 0.5
    assert infer.encoder_weight(None, has_lpips=True) == 1e-3 == infer.InvertConfig().lambda_encoder


def test_dm_weight_defaults_on_for_a_stage1_dm_trained_on_mismatched_pairs(runs, tmp_path, capsys):
    """--lambda-dm unset: infer.LAMBDA_DM_ALIGNED when the stage-1 run trained Dm with
    train.dm_mismatch > 0 (said on stdout; Dm loaded, judging masks in that run's fake_mask form),
    else 0 and no Dm loaded; a given value is kept."""
    from semgan_jax.segment import BatchedInverter

    inv = BatchedInverter(str(runs / "stage2"), infer.InvertConfig(step=1, lambda_dm=None), use_lpips="off")
    assert inv.cfg.lambda_dm == 0 and inv.inv.dm is None and "dm" not in inv.variables
    assert "mismatched pairs" not in capsys.readouterr().out
    config = tiny_gan_config()
    config.train.update(dm_mismatch=1.0, fake_mask="hard")
    write_stage1_run(tmp_path / "aligned", config)
    cfg = infer.InvertConfig(step=1, mean_init=True, lambda_dm=None)
    inv = BatchedInverter(str(tmp_path / "aligned"), cfg, use_lpips="off")
    assert inv.cfg.lambda_dm == infer.LAMBDA_DM_ALIGNED > 0 and inv.cfg.dm_mask == "hard"
    assert inv.inv.dm is not None and set(inv.variables["dm"]) == {"params", "spectral"}
    assert "mismatched pairs" in capsys.readouterr().out
    inv = BatchedInverter(str(tmp_path / "aligned"), infer.InvertConfig(step=1, mean_init=True, lambda_dm=0.0),
                          use_lpips="off")
    assert inv.cfg.lambda_dm == 0 and inv.inv.dm is None


def test_coupling_diagnostics_of_a_stage1_run(runs):
    """experiments/coupling.py: chance (test masks against the next one's), G's mask variety and
    Dm's scores of matched / shuffled / flipped pairs, for every row it names."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("coupling", REPO / "experiments" / "coupling.py")
    coupling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(coupling)
    same = np.tile(np.arange(6).repeat(4)[None, :, None], (3, 1, 24))          # every class, every image
    assert coupling.next_mask_iou(same, 6)["miou"] == 1.0
    assert coupling.next_mask_iou(np.stack([same[0], same[0].T, same[0]]), 6)["miou"] < 0.5
    res = coupling.measure(str(runs / "stage1"), n=8)
    assert set(res["next_mask_iou"]) == {"test masks (chance)", "g masks", "g_ema masks"}
    assert 0 < res["next_mask_iou"]["test masks (chance)"]["miou"] < 1
    assert len(res["dm_alignment"]) == 6
    for row in res["dm_alignment"].values():
        assert all(np.isfinite(row[k]) for k in ("matched", "shuffled", "flipped"))
        assert 0 <= row["matched_above_shuffled"] <= 1
