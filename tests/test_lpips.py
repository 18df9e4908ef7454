"""LPIPS v0.1 in Flax against the `lpips` package (torch), and the weight converter.

The torch comparisons use the `lpips` package's own network and its shipped v0.1 heads (the same
bytes as the reference's models/lpips/weights/v0.1) with random backbone weights
(`pnet_rand=True`); torchvision comes from tests/_torchvision_double.py when its real build does
not load. They skip without torch / lpips. The other tests need neither.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semgan_jax.perceptual import convert
from semgan_jax.perceptual.lpips import LPIPS, unit_normalize


def _images(seed, n, size, channels=3):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, size, size, channels)).astype(np.float32)


def random_variables(model, x, seed=0):
    """Variables of `model` with N(0, 1/fan_in) numpy weights: no jitted init (seconds on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, x)
    return jax.tree.map(lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))
                                   ).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def random_vgg():
    """LPIPS('vgg') with random weights (no torch): module and variables."""
    model = LPIPS("vgg")
    return model, random_variables(model, _images(0, 1, 32))


@pytest.fixture(scope="module")
def random_alex():
    model = LPIPS("alex")
    return model, random_variables(model, _images(0, 1, 64))


# --------------------------------------------------------------------------- torch-free


def test_identical_images_symmetry_and_grey(random_alex):
    model, variables = random_alex
    a, b = _images(1, 2, 64), _images(2, 2, 64)
    f = jax.jit(model.apply)
    np.testing.assert_allclose(f(variables, a, a), 0.0, atol=1e-7)
    np.testing.assert_allclose(f(variables, a, b), f(variables, b, a), rtol=1e-6)
    grey_a, grey_b = a[..., :1], b[..., :1]
    np.testing.assert_allclose(f(variables, grey_a, grey_b),
                               f(variables, np.repeat(grey_a, 3, -1), np.repeat(grey_b, 3, -1)), rtol=1e-6)
    assert f(variables, a, b).shape == (2,)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        model.apply(variables, a[..., :2], b[..., :2])


def test_unit_normalize_zero_vectors_have_finite_gradients():
    x = jnp.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    np.testing.assert_allclose(unit_normalize(x), [[0, 0, 0], [0.6, 0, 0.8]], rtol=1e-6)
    g = jax.jit(jax.grad(lambda v: jnp.sum(unit_normalize(v) * jnp.arange(3.0))))(x)
    assert np.isfinite(np.asarray(g)).all()


def test_unknown_net():
    with pytest.raises(ValueError, match="vgg"):
        LPIPS("resnet").init(jax.random.key(0), _images(0, 1, 32), _images(0, 1, 32))


def test_missing_weights_message_says_what_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv(convert.WEIGHTS_ENV, str(tmp_path / "w"))
    with pytest.raises(convert.WeightsNotFoundError) as err:
        convert.find_weights("vgg16")
    msg = str(err.value)
    assert "vgg16-397923af.pth" in msg and "download.pytorch.org" in msg and str(tmp_path / "w") in msg
    with pytest.raises(convert.WeightsNotFoundError, match="does not exist"):
        convert.load_lpips("alex", backbone=tmp_path / "nope.pth", heads=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="unknown weights"):
        convert.find_weights("resnet50")


def test_find_weights_in_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(convert.WEIGHTS_ENV, str(tmp_path))
    (tmp_path / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    assert convert.find_weights("alexnet") == tmp_path / "alexnet-owt-7be5be79.pth"


def _torch_layout(variables):
    """Flax LPIPS variables -> a torchvision-style state dict (numpy) + lpips head dict."""
    backbone, heads = {}, {}
    for name, layer in variables["params"]["features"].items():
        i = name.split("_")[1]
        backbone[f"features.{i}.weight"] = np.transpose(np.asarray(layer["kernel"]), (3, 2, 0, 1))
        backbone[f"features.{i}.bias"] = np.asarray(layer["bias"])
    for j in range(5):
        heads[f"lin{j}.model.1.weight"] = np.transpose(np.asarray(variables["params"][f"lin_{j}"]["kernel"]),
                                                       (3, 2, 0, 1))
    return backbone, heads


def test_converter_roundtrip_npz_and_errors(random_vgg, tmp_path):
    model, variables = random_vgg
    backbone, heads = _torch_layout(variables)
    backbone["classifier.0.weight"] = np.zeros((4, 3), np.float32)  # torchvision extras are ignored
    np.savez(tmp_path / "vgg16.npz", **backbone)
    np.savez(tmp_path / "heads.npz", **heads)
    module, loaded = convert.load_lpips("vgg", tmp_path / "vgg16.npz", tmp_path / "heads.npz")
    jax.tree.map(np.testing.assert_array_equal, loaded["params"], jax.tree.map(np.asarray, variables["params"]))
    bad = dict(backbone, **{"features.0.weight": np.zeros((64, 3, 5, 5), np.float32)})
    with pytest.raises(ValueError, match="shape mismatch"):
        convert.lpips_variables("vgg", bad, heads)
    with pytest.raises(ValueError, match="missing"):
        convert.lpips_variables("vgg", backbone, {k: v for k, v in heads.items() if "lin4" not in k})
    with pytest.raises(ValueError, match="unexpected"):
        convert.lpips_variables("vgg", dict(backbone, **{"extra.weight": np.zeros(1)}), heads)
    with pytest.raises(ValueError, match="missing"):  # AlexNet weights offered for VGG
        convert.lpips_variables("alex", backbone, heads)


# --------------------------------------------------------------------------- against the lpips package


@pytest.fixture(scope="module")
def torch_lpips():
    torch = pytest.importorskip("torch")
    import _torchvision_double

    _torchvision_double.install()
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    return torch, lpips


def _heads_file(lpips, net):
    from pathlib import Path

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        pytest.skip(f"the lpips package has no {path}")
    return path


@pytest.mark.parametrize("net,size", [("vgg", 48), ("alex", 64)])
def test_matches_lpips_package(torch_lpips, tmp_path, net, size):
    """Per-image distances of lpips.LPIPS(net, v0.1, shipped heads, random backbone) within 1e-4;
    the backbone goes through a torchvision-format .pth file and the heads through lpips's file."""
    torch, lpips = torch_lpips
    ref = lpips.LPIPS(pretrained=True, net=net, version="0.1", pnet_rand=True, verbose=False).eval()
    # lpips keeps torchvision's `features` indices inside net.sliceK: rebuild torchvision's keys.
    tv_state = {"features." + k.split(".", 1)[1]: v for k, v in ref.net.state_dict().items()}
    torch.save(tv_state, tmp_path / "backbone.pth")
    module, variables = convert.load_lpips(net, tmp_path / "backbone.pth", _heads_file(lpips, net))

    x0, x1 = _images(10, 3, size), _images(11, 3, size)
    x1[0] = x0[0]  # one identical pair
    with torch.no_grad():
        want = ref(torch.from_numpy(x0.transpose(0, 3, 1, 2)), torch.from_numpy(x1.transpose(0, 3, 1, 2)))
    want = want.numpy().reshape(-1)
    got = np.asarray(jax.jit(module.apply)(variables, x0, x1))
    print(f"LPIPS-{net} {size}px: torch {want}, max |diff| {np.abs(got - want).max():.2e}")
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert want[1] > 1e-3  # a real distance was compared, not only zeros


def test_gradient_matches_lpips_package(torch_lpips):
    """d LPIPS / d x0 (the encoder / inversion loss gradient) equals torch autograd's. AlexNet:
    the same LPIPS code path as VGG, at a fraction of VGG's backward compile time on CPU."""
    torch, lpips = torch_lpips
    ref = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    # a whole lpips.LPIPS state dict serves as backbone and heads at once
    variables = convert.lpips_variables("alex", ref.state_dict(), ref.state_dict())
    x0, x1 = _images(12, 2, 64), _images(13, 2, 64)
    t0 = torch.from_numpy(x0.transpose(0, 3, 1, 2)).requires_grad_(True)
    ref(t0, torch.from_numpy(x1.transpose(0, 3, 1, 2))).sum().backward()
    want = t0.grad.numpy().transpose(0, 2, 3, 1)
    got = np.asarray(jax.jit(jax.grad(lambda x: LPIPS("alex").apply(variables, x, x1).sum()))(x0))
    scale = np.abs(want).max()
    print(f"LPIPS-alex gradient: max |diff| / max |grad| = {np.abs(got - want).max() / scale:.2e}")
    np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0)
