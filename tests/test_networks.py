"""The four SemanticGAN networks: reference parameter counts, shapes, dtypes, jit, finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semgan_jax.models.discriminator import ImageDiscriminator, MaskDiscriminator
from semgan_jax.models.encoder import FPNEncoder, ResEncoder
from semgan_jax.models.generator import Generator, init_generator, noise_shapes
from semgan_jax.models.widths import channels_at

KEY = jax.random.PRNGKey(0)


def jit_apply(module, variables, *args, **kw):
    """module.apply(variables, *args, **kw) as one program (run op by op, a test compiles every
    primitive alone: hundreds of programs). kw are closed over (static)."""
    return jax.jit(lambda v, *a: module.apply(v, *a, **kw))(variables, *args)


def n_params(variables):
    return sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))


def shapes_only(init_fn):
    return jax.eval_shape(init_fn, KEY)


# Measured on the official code (../shared/REFERENCE_FACTS.md); encoders measured on the
# reference's FPNEncoder / ResEncoder modules the same way.
@pytest.mark.parametrize("size,cm,g,dr,dm", [
    (256, 2, 31_568_218, 28_864_129, 8_316_099),
    (32, 1, 22_590_515, 21_507_073, 8_316_099),
])
def test_parameter_counts_equal_the_reference(size, cm, g, dr, dm):
    gen = Generator(size=size, channel_multiplier=cm, seg_dim=8, image_channels=3)
    assert n_params(shapes_only(lambda k: init_generator(gen, k))) == g
    d_img = ImageDiscriminator(size=size, channel_multiplier=cm)
    assert n_params(shapes_only(lambda k: d_img.init(k, jnp.zeros((1, size, size, 3))))) == dr
    d_seg = MaskDiscriminator()
    assert n_params(shapes_only(lambda k: d_seg.init(k, jnp.zeros((1, size, size, 11))))) == dm


@pytest.mark.parametrize("enc,size,n_latent,count", [
    (FPNEncoder, 256, 14, 210_858_560),
    (FPNEncoder, 32, 8, 124_329_536),
    (ResEncoder, 256, 14, 83_396_224),
])
def test_encoder_parameter_counts_equal_the_reference(enc, size, n_latent, count):
    e = enc(size=size, n_latent=n_latent)
    assert n_params(shapes_only(lambda k: e.init(k, jnp.zeros((1, size, size, 3))))) == count


def test_resencoder_grayscale_cm1_count():
    e = ResEncoder(size=32, n_latent=8, channel_multiplier=1)
    assert n_params(shapes_only(lambda k: e.init(k, jnp.zeros((2, 32, 32, 1))))) == 50_869_248


def test_channel_table_and_cap():
    assert [channels_at(r, 2) for r in (4, 32, 64, 128, 256, 512, 1024)] == [512, 512, 512, 256, 128, 64, 32]
    assert [channels_at(r, 1) for r in (32, 64, 128)] == [512, 256, 128]
    assert channels_at(16, 2, channel_max=32) == 32


def tiny_generator(size, seg_dim=8, image_channels=3, **kw):
    return Generator(size=size, style_dim=32, n_mlp=2, seg_dim=seg_dim, image_channels=image_channels,
                     channel_max=16, **kw)


@pytest.mark.parametrize("size,seg_dim,image_channels", [(16, 1, 1), (32, 8, 3), (64, 8, 1)])
def test_generator_shapes_dtypes_and_finite_grads(size, seg_dim, image_channels):
    g = tiny_generator(size, seg_dim, image_channels)
    v = init_generator(g, KEY)
    z = jax.random.normal(KEY, (2, 32))

    @jax.jit
    def run(params, z, key):
        def loss(p):
            img, seg = g.apply({"params": p}, z, rngs={"noise": key})
            return jnp.mean(img ** 2) + jnp.mean(seg ** 2), (img, seg)
        return jax.value_and_grad(loss, has_aux=True)(params)

    (loss, (img, seg)), grads = run(v["params"], z, KEY)
    assert img.shape == (2, size, size, image_channels) and img.dtype == jnp.float32
    assert seg.shape == (2, size, size, seg_dim) and seg.dtype == jnp.float32
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads["mapping"]["dense_0"]["weight"]).sum()) > 0


def test_generator_input_paths_agree():
    """z -> w -> w+ paths, explicit noise, stored noise, truncation and style mixing."""
    g = tiny_generator(16)
    v = init_generator(g, KEY)
    z = jax.random.normal(KEY, (3, 32))
    noise = [jax.random.normal(jax.random.PRNGKey(i), s) for i, s in enumerate(noise_shapes(16, 3))]
    img_z, seg_z, wplus = jit_apply(g, v, z, noise=noise, return_latents=True)
    w = jit_apply(g, v, z, method=Generator.get_latent)
    img_w, _ = jit_apply(g, v, w, input_is_latent=True, noise=noise)
    img_wp, seg_wp = jit_apply(g, v, wplus, input_is_latent=True, noise=noise)
    assert wplus.shape == (3, g.n_latent, 32)
    np.testing.assert_allclose(img_z, img_w, atol=1e-5)
    np.testing.assert_allclose(img_z, img_wp, atol=1e-5)
    np.testing.assert_allclose(seg_z, seg_wp, atol=1e-5)
    # stored noise is deterministic; fresh noise differs between keys
    a, _ = jit_apply(g, v, z, randomize_noise=False)
    b, _ = jit_apply(g, v, z, randomize_noise=False)
    np.testing.assert_array_equal(a, b)
    # truncation 0 maps every sample to the truncation latent
    mean_w = jax.jit(lambda v, k: g.apply(v, k, 64, method=Generator.mean_latent))(v, KEY)
    _, _, wt = jit_apply(g, v, z, truncation=0.0, truncation_latent=mean_w, noise=noise, return_latents=True)
    np.testing.assert_allclose(wt, jnp.broadcast_to(mean_w[:, None], wt.shape), atol=1e-6)
    # style mixing: latents before inject_index come from the first style, the rest from the second
    z2 = jax.random.normal(jax.random.PRNGKey(9), (3, 32))
    w2 = jit_apply(g, v, z2, method=Generator.get_latent)
    _, _, wm = jit_apply(g, v, [z, z2], inject_index=2, noise=noise, return_latents=True)
    np.testing.assert_allclose(wm[:, :2], jnp.broadcast_to(w[:, None], (3, 2, 32)), atol=1e-6)
    np.testing.assert_allclose(wm[:, 2:], jnp.broadcast_to(w2[:, None], (3, g.n_latent - 2, 32)), atol=1e-6)
    _, _, wr = jit_apply(g, v, [z, z2], noise=noise, return_latents=True, rngs={"mixing": KEY})
    assert wr.shape == wm.shape


def test_generator_errors():
    g = tiny_generator(16)
    v = init_generator(g, KEY)
    z = jnp.zeros((1, 32))
    with pytest.raises(ValueError, match="noise maps"):
        g.apply(v, z, noise=[jnp.zeros((1, 4, 4, 1))])
    with pytest.raises(ValueError, match="truncation_latent"):
        g.apply(v, z, truncation=0.5, rngs={"noise": KEY})
    with pytest.raises(ValueError, match="noises"):
        g.apply({"params": v["params"]}, z, randomize_noise=False)
    with pytest.raises(ValueError, match="power of two"):
        init_generator(Generator(size=48, channel_max=8), KEY)


def test_modconv_forms_give_the_same_generator():
    ga, gb = tiny_generator(16, impl="input_scaling"), tiny_generator(16, impl="grouped")
    v = init_generator(ga, KEY)
    z = jax.random.normal(KEY, (2, 32))
    a = jit_apply(ga, v, z, randomize_noise=False)
    b = jit_apply(gb, v, z, randomize_noise=False)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-4)


@pytest.mark.parametrize("size,channels", [(16, 1), (32, 3), (64, 3)])
def test_image_discriminator(size, channels):
    d = ImageDiscriminator(size=size, channel_max=16)
    x = jax.random.normal(KEY, (4, size, size, channels))
    v = jax.jit(d.init)(KEY, x)
    out = jax.jit(d.apply)(v, x)
    assert out.shape == (4, 1) and out.dtype == jnp.float32
    g = jax.jit(jax.grad(lambda xx: d.apply(v, xx).sum()))(x)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
    with pytest.raises(ValueError, match="expected"):
        d.apply(v, jnp.zeros((4, size * 2, size * 2, channels)))


@pytest.mark.parametrize("size,channels", [(16, 1 + 1), (32, 3 + 8), (64, 1 + 8)])
def test_mask_discriminator_features_and_spectral_state(size, channels):
    d = MaskDiscriminator(ndf=8)
    x = jax.random.normal(KEY, (2, size, size, channels))
    v = jax.jit(d.init)(KEY, x)
    feats, new = jax.jit(lambda vv, xx: d.apply(vv, xx, update_stats=True, mutable=["spectral"]))(v, x)
    assert len(feats) == 3 and all(len(f) == 5 for f in feats)
    assert [f[-1].shape[-1] for f in feats] == [1, 1, 1]
    assert feats[0][0].shape == (2, size // 2 + 1, size // 2 + 1, 8)
    assert feats[1][0].shape[1] < feats[0][0].shape[1]          # coarser scale
    # train mode moves u, v; eval mode leaves them
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), v["spectral"], new["spectral"])
    assert max(jax.tree_util.tree_leaves(moved)) > 0
    _, same = jax.jit(lambda vv, xx: d.apply(vv, xx, mutable=["spectral"]))(v, x)
    for a, b in zip(jax.tree_util.tree_leaves(v["spectral"]), jax.tree_util.tree_leaves(same["spectral"])):
        np.testing.assert_array_equal(a, b)
    g = jax.jit(jax.grad(lambda p: sum(f[-1].mean() for f in d.apply({**v, "params": p}, x))))(v["params"])
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))


@pytest.mark.parametrize("size,channels", [(16, 1), (32, 3), (64, 3)])
def test_encoders_map_images_to_w_plus(size, channels):
    n_latent = 2 * (size.bit_length() - 1) - 2
    x = jax.random.normal(KEY, (2, size, size, channels))
    fpn = FPNEncoder(size=size, n_latent=n_latent, style_dim=32, feature_dim=16, base_width=4)
    v = fpn.init(KEY, x)

    def loss(p):
        w_plus, new = fpn.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(w_plus ** 2), (w_plus, new)

    (_, (w_plus, new)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
    assert w_plus.shape == (2, n_latent, 32) and w_plus.dtype == jnp.float32
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(grads))
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), v["batch_stats"], new["batch_stats"])
    assert max(jax.tree_util.tree_leaves(moved)) > 0
    assert fpn.apply(v, x).shape == (2, n_latent, 32)
    res = ResEncoder(size=size, n_latent=n_latent, style_dim=32, channel_max=16)
    vr = res.init(KEY, x)
    assert jax.jit(res.apply)(vr, x).shape == (2, n_latent, 32)


@pytest.mark.slow
def test_full_width_256px_forward():
    g = Generator(size=256, channel_multiplier=2, seg_dim=8)
    v = init_generator(g, KEY)
    img, seg = jax.jit(lambda vv, z: g.apply(vv, z, randomize_noise=False))(v, jax.random.normal(KEY, (2, 512)))
    assert img.shape == (2, 256, 256, 3) and seg.shape == (2, 256, 256, 8)
    assert bool(jnp.all(jnp.isfinite(img))) and bool(jnp.all(jnp.isfinite(seg)))
    d = ImageDiscriminator(size=256)
    vd = d.init(KEY, img)
    assert jax.jit(d.apply)(vd, img).shape == (2, 1)
    dm = MaskDiscriminator()
    x = jnp.concatenate([img, seg], -1)
    feats = jax.jit(dm.apply)(dm.init(KEY, x), x)
    assert feats[0][-1].shape == (2, 35, 35, 1)
    e = FPNEncoder(size=256, n_latent=14)
    assert jax.jit(e.apply)(e.init(KEY, img), img).shape == (2, 14, 512)


@pytest.mark.parametrize("k,pad", [(3, 0), (1, 0), (4, 2), (4, 1)])
def test_subsampled_strided_conv_equals_the_strided_conv_to_second_order(k, pad):
    from semgan_jax.nn.conv import conv2d

    rng = np.random.default_rng(k + pad)
    x = jnp.asarray(rng.normal(size=(2, 10, 10, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)

    def r1(sub):  # R1's shape: the weight gradient of a penalty on the input gradient
        def pen(w):
            gx = jax.grad(lambda x: jnp.sum(jnp.tanh(conv2d(x, w, 2, pad, subsample_strides=sub))))(x)
            return jnp.sum(gx ** 2)
        return jax.value_and_grad(pen)(w)

    y, y_sub = conv2d(x, w, 2, pad), conv2d(x, w, 2, pad, subsample_strides=True)
    assert y.shape == y_sub.shape == (2, (10 + 2 * pad - k) // 2 + 1, (10 + 2 * pad - k) // 2 + 1, 4)
    np.testing.assert_allclose(y_sub, y, rtol=1e-5, atol=1e-5)
    (v, g), (v_sub, g_sub) = r1(False), r1(True)
    np.testing.assert_allclose(v_sub, v, rtol=1e-5)
    np.testing.assert_allclose(g_sub, g, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("h,k,stride,pad", [(2, 3, 2, 1), (1, 3, 2, 1), (2, 3, 1, 1), (2, 4, 2, 2), (3, 4, 1, 2)])
def test_convs_of_inputs_smaller_than_the_kernel_run_as_one_matmul(h, k, stride, pad):
    """conv2d of an input smaller than its kernel (the encoder's style heads) gives the lax conv's
    numbers to second order, and its compiled program holds no `reverse` (XLA would swap the
    operands and flip the weight in every call)."""
    from semgan_jax.nn.conv import conv2d

    rng = np.random.default_rng(h * k + pad)
    x = jnp.asarray(rng.normal(size=(2, h, h, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)

    def lax_conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def r1(conv):
        def pen(w):
            gx = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w))))(x)
            return jnp.sum(gx ** 2)
        return jax.value_and_grad(pen)(w)

    ours = lambda x, w: conv2d(x, w, stride, pad)  # noqa: E731
    np.testing.assert_allclose(ours(x, w), lax_conv(x, w), rtol=1e-5, atol=1e-5)
    (v, g), (v_ref, g_ref) = r1(ours), r1(lax_conv)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
    assert "reverse" not in jax.jit(ours).lower(x, w).compile().as_text()
    assert "reverse" in jax.jit(lax_conv).lower(x, w).compile().as_text()  # what it avoids


@pytest.mark.parametrize("k,padding", [(3, ((1, 1), (1, 1))), (2, ((0, 0), (0, 0))), (1, ((0, 0), (0, 0))), (2, ((1, 0), (0, 1)))])
def test_conv_stride1_gives_the_lax_conv_and_its_gradients_to_second_order(k, padding):
    """conv_stride1's explicit input gradient (flipped, transposed kernel) equals the lax conv's
    VJP, first and second order (path length differentiates G's convs twice); inside a loop its
    compiled program holds only plain HWIO kernels, not the in/out-swapped one XLA:CPU runs
    slowly there."""
    import re

    from semgan_jax.nn.conv import _lax_conv, conv_stride1

    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)

    def penalty(conv):
        def pen(x, w):
            gx, gw = jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w, padding))), argnums=(0, 1))(x, w)
            return jnp.sum(gx ** 2) + jnp.sum(gw ** 2)
        return jax.value_and_grad(pen, argnums=(0, 1))(x, w)

    np.testing.assert_allclose(conv_stride1(x, w, padding), _lax_conv(x, w, padding), rtol=1e-5, atol=1e-5)
    (v, (gx, gw)), (v_ref, (gx_ref, gw_ref)) = penalty(conv_stride1), penalty(_lax_conv)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, gw_ref, rtol=1e-4, atol=1e-4)

    def kernels_in_loop(conv):
        def body(x, _):
            return jnp.tanh(jax.grad(lambda x: jnp.sum(conv(x, w, padding) ** 2))(x)), None
        txt = jax.jit(lambda x: jax.lax.scan(body, x, None, length=3)[0]).lower(x).compile().as_text()
        return {label.split("_")[1].split("-")[0] for label in re.findall(r"dim_labels=(\S+?),", txt)}

    if k > 1:  # (XLA turns 1x1 convs into dots)
        assert kernels_in_loop(conv_stride1) == {"01io"}
        assert "01oi" in kernels_in_loop(_lax_conv)  # what it avoids


def test_flax_conv_hook_matches_lax_for_small_and_large_inputs():
    import flax.linen as nn

    from semgan_jax.nn.conv import conv_general_dilated

    for h in (2, 8):
        x = jax.random.normal(KEY, (2, h, h, 3))
        plain = nn.Conv(5, (3, 3), (1, 1), [(1, 1)] * 2)
        hooked = nn.Conv(5, (3, 3), (1, 1), [(1, 1)] * 2, conv_general_dilated=conv_general_dilated)
        v = plain.init(KEY, x)
        np.testing.assert_allclose(hooked.apply(v, x), plain.apply(v, x), rtol=1e-5, atol=1e-5)


def test_discriminators_in_subsample_form_give_the_same_numbers():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
    dr = ImageDiscriminator(size=16, channel_base=256, channel_max=16)
    p = jax.jit(dr.init)(jax.random.PRNGKey(1), x)
    np.testing.assert_allclose(jit_apply(dr.clone(subsample_strides=True), p, x), jit_apply(dr, p, x),
                               rtol=1e-5, atol=1e-5)
    xm = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 5))
    dm = MaskDiscriminator(ndf=8, max_channels=16)
    v = jax.jit(dm.init)(jax.random.PRNGKey(3), xm)
    for a, b in zip(jax.tree.leaves(jit_apply(dm.clone(subsample_strides=True), v, xm)),
                    jax.tree.leaves(jit_apply(dm, v, xm))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
