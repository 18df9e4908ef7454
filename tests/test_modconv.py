"""The two modulated-convolution forms agree, and both equal a direct per-sample NumPy conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semgan_jax.nn.modconv import ModulatedConv, modulated_conv


def per_sample_numpy(x, w, s, demod):
    """Per-sample modulated 'same' conv by explicit loops (NHWC, HWIO)."""
    n, h, wd, cin = x.shape
    k, cout = w.shape[0], w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).astype(np.float64)
    out = np.zeros((n, h, wd, cout))
    for b in range(n):
        wb = w.astype(np.float64) * s[b][None, None, :, None]
        if demod:
            wb = wb / np.sqrt((wb ** 2).sum(axis=(0, 1, 2), keepdims=True) + 1e-8)
        for i in range(h):
            for j in range(wd):
                out[b, i, j] = np.einsum("hwi,hwio->o", xp[b, i:i + k, j:j + k], wb)
    return out


@pytest.mark.parametrize("demod", [True, False])
def test_functional_forms_equal_numpy(demod):
    rs = np.random.RandomState(0)
    x = rs.randn(3, 6, 5, 4).astype(np.float32)
    w = rs.randn(3, 3, 4, 5).astype(np.float32) / 6
    s = rs.randn(3, 4).astype(np.float32) + 1
    want = per_sample_numpy(x, w, s, demod)
    for impl in ("input_scaling", "grouped"):
        got = modulated_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(s), demodulate=demod, impl=impl)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-4)


# (upsample, demodulate, kernel size): the reference upsamples only with 3x3 convs
@pytest.mark.parametrize("upsample,demod,kernel_size", [
    (False, True, 3), (False, False, 3), (True, True, 3), (True, False, 3), (False, True, 1), (False, False, 1)])
def test_module_forms_agree_outputs_and_gradients(upsample, demod, kernel_size):
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (4, 8, 8, 6))
    style = jax.random.normal(jax.random.PRNGKey(1), (4, 16))
    mods = {impl: ModulatedConv(5, kernel_size, demodulate=demod, upsample=upsample, impl=impl)
            for impl in ("input_scaling", "grouped")}
    params = mods["grouped"].init(jax.random.PRNGKey(2), x, style)
    outs, grads = {}, {}
    for impl, m in mods.items():
        def loss(p, xx, ss, m=m):
            y = m.apply(p, xx, ss)
            return jnp.sum(jnp.sin(y)), y
        (_, outs[impl]), grads[impl] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
            params, x, style)
    assert outs["grouped"].shape == (4, 16, 16, 5) if upsample else (4, 8, 8, 5)
    np.testing.assert_allclose(outs["input_scaling"], outs["grouped"], atol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(grads["input_scaling"]), jax.tree_util.tree_leaves(grads["grouped"])):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)


def test_transposed_conv_equals_scatter_definition():
    """Upsampling conv = torch conv_transpose2d(stride 2): each input pixel scatters w into out."""
    rs = np.random.RandomState(3)
    x = rs.randn(1, 3, 4, 2).astype(np.float32)
    w = rs.randn(3, 3, 2, 3).astype(np.float32)
    s = np.ones((1, 2), np.float32)
    got = np.asarray(modulated_conv(x, w, s, demodulate=False, upsample=True))
    want = np.zeros((1, 2 * 3 + 1, 2 * 4 + 1, 3))
    for i in range(3):
        for j in range(4):
            want[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += np.einsum("c,hwco->hwo", x[0, i, j], w)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="impl"):
        modulated_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), jnp.ones((1, 2)), impl="fused")


def test_zero_insert_upsampling_equals_the_phase_form_to_second_order():
    """The path-length regulariser's form of G (UPSAMPLE_FORMS): same image, same gradient of the
    penalty |J^T y| with respect to the parameters."""
    from semgan_jax.models.generator import Generator

    g = Generator(size=16, style_dim=16, n_mlp=2, seg_dim=2, channel_base=256, channel_max=16)
    w = jax.random.normal(jax.random.PRNGKey(0), (2, g.n_latent, 16))
    init = jax.jit(lambda k: g.init(k, w, input_is_latent=True, randomize_noise=False))
    params = init(jax.random.PRNGKey(1))["params"]
    y = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 3))

    def penalty(form):
        net = g.clone(upsample_form=form)

        def pen(p):
            synth = lambda w: net.apply({"params": p}, w, input_is_latent=True, rngs={"noise": jax.random.PRNGKey(3)})[0]
            img, vjp = jax.vjp(synth, w)
            return jnp.sum(vjp(y)[0] ** 2), img
        return jax.jit(jax.value_and_grad(pen, has_aux=True))(params)

    (v, img), grads = penalty("phases")
    (v_z, img_z), grads_z = penalty("zero_insert")
    np.testing.assert_allclose(img_z, img, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v_z, v, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_z), jax.tree.leaves(grads)):  # f32, summed in other orders
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.max(np.abs(b))))
    with pytest.raises(ValueError, match="upsample_form"):
        modulated_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), jnp.ones((1, 2)), upsample=True,
                       upsample_form="nearest")
