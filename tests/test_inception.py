"""Inception-v3 (FID / IS network of the reference) in Flax against torch, and the FID / IS math.

Torch side: torchvision's Inception3 layers (tests/_torchvision_double.py where torchvision does
not load) with random weights, run the way the reference's `WrapInception` runs them (written
out below). FID is checked against pytorch-fid's `calculate_frechet_distance` and against scipy's
sqrtm with the reference's always-on eps offset. Tests needing torch / pytorch-fid / scipy skip
without them; the rest is numpy / jax only, including the Flax network's plumbing (statistics,
`semgan inception-stats`, FID / IS of a generator) on random numpy weights.
"""

import json
import pickle

import jax
import numpy as np
import pytest

from semgan_jax import metrics
from semgan_jax.perceptual import convert
from semgan_jax.perceptual.inception import InceptionV3, resize_matrix

SIZE = 32  # input size of the network tests; the network itself always runs at 299 x 299


def _images(seed, n, size=SIZE, channels=3):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, channels)).astype(np.float32)


def _gaussian_features(seed, n, d, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mix + shift


# --------------------------------------------------------------------------- FID / IS math, torch-free


def test_fid_identical_stats_is_zero():
    x = _gaussian_features(0, 400, 16)
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma, offset="fallback")) < 1e-9
    # the reference's formula puts eps I inside the square root only: -2 D eps for identical stats
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(-2 * 16 * 1e-6, rel=1e-6)


def test_fid_closed_form_gaussians():
    """Commuting covariances: Tr sqrt(S1 S2) = sum sqrt(a_i b_i); FID = |dmu|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    a, b = rng.uniform(0.1, 3, 12), rng.uniform(0.1, 3, 12)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2, offset="fallback"), want, rtol=1e-10)
    # the reference's offset: eps I added to both covariances
    want_eps = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a + 1e-6) - np.sqrt(b + 1e-6)) ** 2) - 2e-6 * 12
    np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2), want_eps, rtol=1e-10)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations
    np.testing.assert_allclose(metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]], offset="fallback"),
                               4.0 + 1.0, rtol=1e-12)


def test_trace_sqrt_product_singular_is_real_and_finite():
    x = _gaussian_features(2, 10, 32)  # N < D: rank-deficient covariances
    y = _gaussian_features(3, 10, 32)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    t = metrics.trace_sqrt_product(s1, s2)
    assert np.isfinite(t) and t >= 0
    ev = np.linalg.eigvals(s1 @ s2)  # the definition, for a check in plain numpy
    np.testing.assert_allclose(t, np.sum(np.sqrt(np.clip(ev.real, 0, None))), rtol=1e-6)


def test_fid_input_errors():
    with pytest.raises(ValueError, match="shape"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="offset"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), offset="sometimes")


def test_inception_score_formula():
    # uniform predictions: p(y|x) = p(y) -> KL 0 -> IS 1 in every split
    assert metrics.inception_score(np.full((20, 7), 1 / 7), num_splits=10) == pytest.approx((1.0, 0.0))
    # one-hot predictions spread evenly over K classes: IS = K
    onehot = np.eye(5)[np.arange(50) % 5]
    assert metrics.inception_score(onehot, num_splits=2) == pytest.approx((5.0, 0.0))  # 0 log 0 = 0
    # fixed logits against the formula written out: 2 splits of 23 // 2 = 11 rows, the last row dropped
    logits = np.random.default_rng(4).standard_normal((23, 6)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(metrics.softmax(logits), p, rtol=1e-12)
    scores = []
    for chunk in (p[0:11], p[11:22]):
        marginal = chunk.mean(0)
        scores.append(np.exp(np.mean([np.sum(r * np.log(r / marginal)) for r in chunk])))
    np.testing.assert_allclose(metrics.inception_score(p, num_splits=2), (np.mean(scores), np.std(scores)),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="at least"):
        metrics.inception_score(p[:5], num_splits=10)


def test_feature_stats_streaming_equals_numpy():
    x = _gaussian_features(5, 37, 8, shift=3.0)
    acc = metrics.FeatureStats(8)
    for chunk in (x[:1], x[1:10], x[10:10], x[10:]):
        acc.update(chunk)
    assert acc.n == 37
    np.testing.assert_allclose(acc.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(acc.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    ref = metrics.InceptionStats(x.mean(0), np.cov(x, rowvar=False), 37)
    assert abs(metrics.fid_from_features(x, ref, offset="fallback")) < 1e-9


def test_stats_files_roundtrip(tmp_path):
    x = _gaussian_features(6, 30, 4)
    stats = metrics.InceptionStats(x.mean(0), np.cov(x, rowvar=False), 30, 2.5, 0.1, {"dataset": "synthetic"})
    stats.save(tmp_path / "s.npz")
    back = metrics.load_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert (back.n, back.is_mean, back.meta) == (30, 2.5, {"dataset": "synthetic"})
    with open(tmp_path / "ref.pkl", "wb") as f:  # the reference's prepare_inception.py output
        pickle.dump({"mean": stats.mu, "cov": stats.sigma, "size": 256, "path": "x"}, f)
    ref = metrics.load_stats(tmp_path / "ref.pkl")
    np.testing.assert_array_equal(ref.mu, stats.mu)
    assert ref.meta == {"size": 256, "path": "x"}
    with pytest.raises(FileNotFoundError, match="inception-stats"):
        metrics.load_stats(tmp_path / "missing.npz")


def test_resize_matrix_align_corners():
    m = resize_matrix(3, 5)
    np.testing.assert_allclose(m @ np.array([0.0, 1.0, 4.0]), [0, 0.5, 1, 2.5, 4], rtol=1e-6)
    np.testing.assert_allclose(resize_matrix(7, 299).sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(resize_matrix(299, 299), np.eye(299, dtype=np.float32))


def test_missing_inception_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv(convert.WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(convert.WeightsNotFoundError) as err:
        metrics.InceptionMetrics()
    msg = str(err.value)
    assert "inception_v3_google-0cc3c7bd.pth" in msg and "download.pytorch.org" in msg and str(tmp_path) in msg


def test_converter_rejects_other_inception_layouts():
    shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0), np.zeros((1, 75, 75, 3), np.float32))
    assert shapes["params"]["fc"]["kernel"].shape == (2048, 1000)
    state = {"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32),
             "fc.weight": np.zeros((1008, 2048), np.float32), "fc.bias": np.zeros(1008, np.float32)}
    with pytest.raises(ValueError, match="torchvision inception_v3"):  # e.g. pytorch-fid's 1008-class net
        convert.inception_variables(state)


# --------------------------------------------------------------------------- the network's plumbing, torch-free


def _random_variables(seed=0):
    """Flax InceptionV3 variables with He-normal numpy weights (unit BN statistics)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.float32))

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            gain = 1.0 if len(s.shape) == 2 else 2.0
            return (rng.standard_normal(s.shape) * np.sqrt(gain / fan_in)).astype(np.float32)
        return np.full(s.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _torch_layout(variables):
    """Flax InceptionV3 variables -> torchvision inception_v3 state-dict names and layouts."""
    leaf_names = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                  ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
    state = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables[collection]):
            keys = [p.key for p in path]
            leaf = np.asarray(leaf)
            if keys[-1] == "kernel":
                leaf = leaf.T if leaf.ndim == 2 else np.transpose(leaf, (3, 2, 0, 1))
            state[".".join(keys[:-1] + [leaf_names[collection, keys[-1]]])] = leaf
    return state


@pytest.fixture(scope="module")
def numpy_inception(tmp_path_factory):
    """(path of a random torchvision-layout state dict as .npz, its InceptionMetrics, batch 2)."""
    variables = _random_variables()
    path = tmp_path_factory.mktemp("inception") / "inception_v3_random.npz"
    state = _torch_layout(variables)
    state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)  # ignored, as in torchvision's file
    np.savez(path, **state)
    im = metrics.InceptionMetrics(path, batch_size=2)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(im.variables), variables)  # converter round trip
    return path, im


def test_inception_stats_stream_and_grey(numpy_inception):
    """.stats over ragged batches (padding to batch_size) equals the per-batch features; grey
    images are the RGB network on repeated channels; features are finite and not constant."""
    _, im = numpy_inception
    x = _images(8, 3)
    pool = np.concatenate([im.features(x[:2])[0], im.features(x[2:])[0]])
    assert np.isfinite(pool).all() and pool.std() > 0
    stats = im.stats([x[:1], {"image": x[1:]}], total=3, progress=False, num_splits=1)
    assert stats.n == 3
    np.testing.assert_allclose(stats.mu, pool.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.sigma, np.cov(pool.astype(np.float64), rowvar=False), rtol=1e-5, atol=1e-8)
    assert stats.is_mean >= 1.0
    grey = x[:2, :, :, :1]
    np.testing.assert_array_equal(im.forward(grey)[0], im.forward(np.repeat(grey, 3, -1))[0])
    with pytest.raises(ValueError, match="batch_size"):
        im.forward(_images(9, 3))


def test_inception_stats_cli(numpy_inception, tmp_path, capsys):
    """`semgan inception-stats` on the in-memory synthetic set (32 px, as the network tests)."""
    from semgan_jax import cli

    out = tmp_path / "stats.npz"
    argv = ["inception-stats", "--dataset", "synthetic", "--split", "test", "--limit", "3", "--batch-size", "2",
            "--num-splits", "1", "--weights", str(numpy_inception[0]), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    stats = metrics.load_stats(out)
    assert stats.n == 3 and stats.mu.shape == (2048,) and stats.meta["dataset"] == "synthetic"
    assert "3 images" in capsys.readouterr().out
    assert cli.main(["inception-stats", "--dataset", "synthetic", "--out", str(out),
                     "--weights", str(tmp_path / "missing.pth")]) == 1
    assert "missing.pth does not exist" in capsys.readouterr().err


def test_generator_fid_is(numpy_inception):
    """FID / IS of a tiny random generator through generator_sample_fn (fresh z and noise per
    batch, surplus samples of the last batch dropped). 16 px, shown to Inception at 32 px so its
    compiled network is reused; N(0, 1) numpy weights instead of a (slow on CPU) jitted init."""
    import jax.numpy as jnp

    from conftest import tiny_gan_config
    from semgan_jax.train import gan

    _, im = numpy_inception
    cfg = tiny_gan_config()
    g = gan.build_models(cfg.model, cfg.train.lr, cfg.train.d_reg_every, cfg.train.g_reg_every).g
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(g.init, {"params": jax.random.key(0), "noise": jax.random.key(1)},
                            jnp.zeros((1, g.style_dim)))["params"]
    variables = {"params": jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)}
    sample16 = metrics.generator_sample_fn(g, variables)

    def sample_fn(key, n):
        return jnp.repeat(jnp.repeat(sample16(key, n), 2, axis=1), 2, axis=2)

    a, b = sample_fn(jax.random.key(1), 2), sample_fn(jax.random.key(2), 2)
    assert a.shape == (2, 32, 32, 3) and np.isfinite(a).all() and not np.allclose(a, b)
    reference = im.stats([_images(20, 2), _images(21, 1)], progress=False, num_splits=1)
    result = im.fid_is(sample_fn, jax.random.key(3), reference, n=3, progress=False, num_splits=1)
    assert result["n"] == 3 and result["is_mean"] >= 1.0
    assert np.isfinite(result["fid"]) and result["fid"] > 0


def test_fid_cli_errors(tmp_path, capsys):
    from semgan_jax import cli

    x = _gaussian_features(12, 10, 2048)
    metrics.InceptionStats(x.mean(0), np.cov(x, rowvar=False), 10).save(tmp_path / "s.npz")
    assert cli.main(["fid", "--checkpoint", str(tmp_path), "--stats", str(tmp_path / "missing.npz")]) == 1
    assert "inception-stats" in capsys.readouterr().err
    assert cli.main(["fid", "--checkpoint", str(tmp_path), "--stats", str(tmp_path / "s.npz"),
                     "--weights", str(tmp_path / "none.pth")]) == 1
    assert "none.pth does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- against torch


def _torch_reference_forward(torch, net, x):
    """The reference's WrapInception (utils/inception_utils.py) semantics: x NCHW in [-1, 1]."""
    F = torch.nn.functional
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype).view(1, 3, 1, 1)
    x = ((x + 1) / 2 - mean) / std
    if x.shape[2] != 299 or x.shape[3] != 299:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "pool", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "pool", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
        x = F.max_pool2d(x, kernel_size=3, stride=2) if name == "pool" else getattr(net, name)(x)
    pool = x.mean(dim=(2, 3))
    return pool, net.fc(pool)


@pytest.fixture(scope="module")
def torch_inception(tmp_path_factory):
    """(torch, random torchvision Inception3 with calibrated BatchNorm statistics, .pth path)."""
    torch = pytest.importorskip("torch")
    import _torchvision_double

    _torchvision_double.install()
    from torchvision.models.inception import inception_v3

    torch.manual_seed(0)
    net = inception_v3(pretrained=False, aux_logits=True, init_weights=True, transform_input=False)
    # Random BN affine terms, and running statistics set from one batch (momentum None = plain
    # average), so activations stay O(1) through the 90+ layers as with trained weights.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.1)
    net.train()
    with torch.no_grad():
        _torch_reference_forward(torch, net, torch.from_numpy(_images(99, 2).transpose(0, 3, 1, 2)))
    net.eval()
    path = tmp_path_factory.mktemp("inception") / "inception_v3_random.pth"
    torch.save(net.state_dict(), path)
    return torch, net, path


def test_inception_matches_torch(torch_inception):
    """Pool features and logits of 2 images (32 px, resized to 299 inside) against the torch
    network: float64 on both sides within 1e-9 (the architecture, exactly), float32 on both sides
    within 1e-4 of the largest magnitude.

    A random, BatchNorm-calibrated 94-layer network amplifies float32 rounding ~1000-fold: torch's
    own float32 result lies ~2e-4 (pool) / 5e-4 (logits) from its float64 one, hence the float64
    check for exactness and the relative float32 bound.
    """
    import copy

    torch, net, path = torch_inception
    flax_inception = metrics.InceptionMetrics(path, batch_size=2)  # the converter reads the .pth
    x = _images(7, 2)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
    with torch.no_grad():
        pool32, logits32 = (t.numpy() for t in _torch_reference_forward(torch, net, xt))
        pool64, logits64 = (t.numpy() for t in _torch_reference_forward(torch, copy.deepcopy(net).double(),
                                                                         xt.double()))
    pool, logits = flax_inception.forward(x)
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(flax_inception.variables))
        jpool64, jlogits64 = (np.asarray(a) for a in jax.jit(InceptionV3(dtype=np.float64).apply)(
            v64, x.astype(np.float64)))
    scale_p, scale_l = np.abs(pool64).max(), np.abs(logits64).max()
    print(f"Inception (|pool| max {scale_p:.3f}, |logits| max {scale_l:.3f}), max |diff| pool / logits: "
          f"float64 {np.abs(jpool64 - pool64).max():.1e} / {np.abs(jlogits64 - logits64).max():.1e}; "
          f"float32 {np.abs(pool - pool32).max():.1e} / {np.abs(logits - logits32).max():.1e}; "
          f"torch float32 vs float64 {np.abs(pool32 - pool64).max():.1e} / {np.abs(logits32 - logits64).max():.1e}")
    assert pool.shape == (2, 2048) and logits.shape == (2, 1000) and jlogits64.dtype == np.float64
    assert pool64.std() > 1e-2 and logits64.std() > 1e-2  # a real signal was compared
    np.testing.assert_allclose(jpool64, pool64, atol=1e-9, rtol=0)
    np.testing.assert_allclose(jlogits64, logits64, atol=1e-9, rtol=0)
    np.testing.assert_allclose(pool, pool32, atol=1e-4 * scale_p, rtol=0)
    np.testing.assert_allclose(logits, logits32, atol=1e-4 * scale_l, rtol=0)
    probs = np.exp(logits32 - logits32.max(1, keepdims=True))
    np.testing.assert_allclose(flax_inception.features(x)[1], probs / probs.sum(1, keepdims=True), atol=1e-4)


@pytest.mark.parametrize("size", [7, 256, 512])
def test_resize_matches_torch_interpolate(size):
    """Up- and downsampling to 299 as F.interpolate(bilinear, align_corners=True), no antialias."""
    torch = pytest.importorskip("torch")
    from semgan_jax.perceptual.inception import resize_bilinear_align_corners

    x = _images(30, 1, size, 2)
    want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(299, 299),
                                           mode="bilinear", align_corners=True).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(resize_bilinear_align_corners(x, 299)), want, atol=1e-6)


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_fid_matches_pytorch_fid():
    """FID of two feature sets: pytorch-fid's calculate_frechet_distance (offset='fallback') and
    the reference's numpy_calculate_frechet_distance formula (scipy sqrtm, eps always) within 1e-6
    relative; full-rank and N < D covariances."""
    pytest.importorskip("torch")
    linalg = pytest.importorskip("scipy.linalg")
    import _torchvision_double

    _torchvision_double.install()
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    worst = {}
    for n, d in ((300, 64), (20, 64)):
        a, b = _gaussian_features(10, n, d), _gaussian_features(11, n, d, shift=0.3)
        a, b = np.maximum(a, 0), np.maximum(b, 0)  # ReLU-like, as pool features
        s = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        want = fid_score.calculate_frechet_distance(*s)
        got = metrics.frechet_distance(*s, offset="fallback")
        eye = np.eye(d) * 1e-6
        covmean = linalg.sqrtm((s[1] + eye) @ (s[3] + eye)).real
        diff = s[0] - s[2]
        want_ref = diff @ diff + np.trace(s[1]) + np.trace(s[3]) - 2 * np.trace(covmean)
        got_ref = metrics.frechet_distance(*s)
        worst[(n, d)] = (abs(got - want) / want, abs(got_ref - want_ref) / want_ref)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_allclose(got_ref, want_ref, rtol=1e-6)
    print("FID relative differences (pytorch-fid, reference formula):", json.dumps(
        {f"N={n},D={d}": [f"{v:.1e}" for v in vals] for (n, d), vals in worst.items()}))
