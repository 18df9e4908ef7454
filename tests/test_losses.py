"""Losses of semgan_jax.losses against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from semgan_jax import losses as L


def sp(x):
    """softplus in double precision."""
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------ logistic losses

def test_d_logistic_loss_known_logits():
    real = jnp.array([[0.0], [2.0]])
    fake = jnp.array([[-1.0], [1.0]])
    expected = (sp(0.0) + sp(-2.0)) / 2 + (sp(-1.0) + sp(1.0)) / 2
    np.testing.assert_allclose(L.d_logistic_loss(real, fake), expected, rtol=1e-6)


def test_g_nonsaturating_loss_known_logits():
    fake = jnp.array([[0.0], [3.0], [-2.0]])
    expected = (sp(0.0) + sp(-3.0) + sp(2.0)) / 3
    np.testing.assert_allclose(L.g_nonsaturating_loss(fake), expected, rtol=1e-6)


# ------------------------------------------------------------------ R1

def _x(shape=(3, 2, 2, 2), seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_r1_quadratic_discriminator_closed_form():
    """D(x)_n = a·sum(x_n²) -> grad 2a·x_n -> penalty = mean_n 4a²·sum(x_n²)."""
    x = _x()
    a = 0.7
    d_fn = lambda x, a=a: a * jnp.sum(x ** 2, axis=(1, 2, 3))[:, None]
    sq = np.sum(np.asarray(x, np.float64) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(L.r1_penalty(d_fn, x), np.mean(4 * a * a * sq), rtol=1e-5)
    # differentiable w.r.t. the discriminator's parameters: d/da = 8a·mean(sum x²)
    grad_a = jax.grad(lambda a: L.r1_penalty(lambda x: d_fn(x, a), x))(a)
    np.testing.assert_allclose(grad_a, 8 * a * np.mean(sq), rtol=1e-5)


def test_r1_multiscale_reduction_and_aux():
    """Dm-style output: each scale's final map is w_s·x[..., 0]; the reduction is the sum of
    the final maps' means, so d/dx[..., 0] = sum(w)/(N·H·W) and the penalty is
    H·W·(sum w / (N·H·W))² = (sum w)² / (N²·H·W); the other channels have zero gradient."""
    x = _x((2, 4, 4, 3))
    w = (0.5, 2.0, -1.0)

    def d_fn(x):
        preds = [[x * 100.0, s * x[..., :1]] for s in w]  # intermediate features are ignored
        return L.multiscale_r1_output(preds), "aux"

    penalty, aux = L.r1_penalty(d_fn, x, has_aux=True)
    n, h, wd = 2, 4, 4
    np.testing.assert_allclose(penalty, sum(w) ** 2 / (n * n * h * wd), rtol=1e-6)
    assert aux == "aux"


# ------------------------------------------------------------------ path length

def test_path_length_linear_generator_closed_form():
    """G(w) = s·(w·A): J_n = s·A yᵀ_n / sqrt(H·W), so path_lengths = s·q with q independent
    of s; the penalty's gradient w.r.t. s includes the non-detached path_mean term."""
    n, n_lat, dim, h, wd, c = 3, 4, 5, 4, 2, 3
    rng = np.random.default_rng(1)
    A = rng.normal(size=(n_lat, dim, h * wd * c))
    latents = jnp.asarray(rng.normal(size=(n, n_lat, dim)), jnp.float32)
    key = jax.random.PRNGKey(3)
    decay, m0 = 0.01, 0.4

    def g(s):
        return lambda w: s * jnp.einsum("nld,ldp->np", w, jnp.asarray(A, jnp.float32)).reshape(n, h, wd, c)

    y = np.asarray(jax.random.normal(key, (n, h, wd, c)), np.float64).reshape(n, -1) / math.sqrt(h * wd)
    grad = np.einsum("ldp,np->nld", A, y)                       # (n, n_lat, dim), for s = 1
    q = np.sqrt(np.mean(np.sum(grad ** 2, axis=2), axis=1))    # (n,)

    s = 1.5
    penalty, new_mean, pl_mean = L.path_length_penalty(g(s), latents, m0, key, decay)
    path_mean = m0 + decay * (s * q.mean() - m0)
    np.testing.assert_allclose(pl_mean, s * q.mean(), rtol=1e-5)
    np.testing.assert_allclose(new_mean, path_mean, rtol=1e-5)
    np.testing.assert_allclose(penalty, np.mean((s * q - path_mean) ** 2), rtol=1e-4)

    ds = jax.grad(lambda s: L.path_length_penalty(g(s), latents, m0, key, decay)[0])(s)
    expected = np.mean(2 * (s * q - path_mean) * (q - decay * q.mean()))
    np.testing.assert_allclose(ds, expected, rtol=1e-4)


# ------------------------------------------------------------------ hinge / feature matching

FEAT = jnp.full((1, 2, 2, 4), 7.0)
S0 = jnp.array([0.5, -2.0]).reshape(1, 1, 2, 1)
S1 = jnp.array([3.0, 0.0]).reshape(1, 1, 2, 1)


def test_hinge_d_loss_known_maps():
    preds = [[FEAT, S0], [FEAT, S1]]
    # real: scale0 -mean(min(p-1,0)) = -mean(-0.5,-3) = 1.75; scale1 = -mean(0,-1) = 0.5
    np.testing.assert_allclose(L.hinge_d_loss(preds, True), (1.75 + 0.5) / 2, rtol=1e-6)
    # fake: scale0 -mean(min(-p-1,0)) = -mean(-1.5,0) = 0.75; scale1 = -mean(-4,-1) = 2.5
    np.testing.assert_allclose(L.hinge_d_loss(preds, False), (0.75 + 2.5) / 2, rtol=1e-6)
    # bare final maps are accepted too
    np.testing.assert_allclose(L.hinge_d_loss([S0, S1], True), 1.125, rtol=1e-6)


def test_hinge_g_loss_known_maps():
    # -mean(S0) = 0.75, -mean(S1) = -1.5
    np.testing.assert_allclose(L.hinge_g_loss([[FEAT, S0], [FEAT, S1]]), -0.375, rtol=1e-6)


def test_feature_matching_excludes_final_map_and_detaches_real():
    z = jnp.zeros((1, 2, 2, 1))
    fake = [[jnp.full((1, 2, 2, 2), 1.0), jnp.full((1, 1, 1, 3), -2.0), z + 50.0],
            [jnp.full((1, 2, 2, 2), 0.5), jnp.full((1, 1, 1, 3), 4.0), z - 50.0]]
    real = [[jnp.zeros((1, 2, 2, 2)), jnp.zeros((1, 1, 1, 3)), z],
            [jnp.full((1, 2, 2, 2), 1.0), jnp.full((1, 1, 1, 3), 1.0), z]]
    # L1 means: 1, 2 (scale 0); 0.5, 3 (scale 1); final maps ignored; ·(1/3)·2
    expected = (1 + 2 + 0.5 + 3) / 3 * 2
    np.testing.assert_allclose(L.feature_matching_loss(fake, real), expected, rtol=1e-6)
    np.testing.assert_allclose(L.feature_matching_loss(fake, real, weight=1.0, d_weight=0.5,
                                                       feat_weight=2.0),
                               (1 + 2 + 0.5 + 3), rtol=1e-6)
    g_fake, g_real = jax.grad(L.feature_matching_loss, argnums=(0, 1))(fake, real)
    assert all(float(jnp.abs(g).sum()) == 0.0 for scale in g_real for g in scale)
    assert float(jnp.abs(g_fake[0][0]).sum()) > 0 and float(jnp.abs(g_fake[0][-1]).sum()) == 0


# ------------------------------------------------------------------ segmentation losses

def test_softmax_cross_entropy_with_tau():
    logits = jnp.array([[0.1, 0.2, 0.0], [0.0, 0.0, 0.3]]).reshape(1, 1, 2, 3)
    labels = jnp.array([1, 0]).reshape(1, 1, 2)
    # logits / 0.1 = [1, 2, 0] (label 1) and [0, 0, 3] (label 0)
    e = math.e
    expected = (-math.log(e ** 2 / (e + e ** 2 + 1)) - math.log(1 / (2 + e ** 3))) / 2
    np.testing.assert_allclose(L.softmax_cross_entropy(logits, labels, tau=0.1), expected, rtol=1e-5)
    # class 2 is absent from the labels: no special case, plain mean over pixels
    np.testing.assert_allclose(L.softmax_cross_entropy(logits * 10, labels, tau=1.0), expected,
                               rtol=1e-5)


def test_soft_binary_cross_entropy_with_tau():
    logits = jnp.array([0.3, -0.6]).reshape(1, 1, 2, 1)
    targets = jnp.array([1.0, 0.5]).reshape(1, 1, 2, 1)
    # logits / 0.3 = [1, -2]
    expected = (sp(-1.0) + 0.5 * sp(2.0) + 0.5 * sp(-2.0)) / 2
    np.testing.assert_allclose(L.soft_binary_cross_entropy(logits, targets, tau=0.3), expected,
                               rtol=1e-5)
    labels = jnp.array([1, 0]).reshape(1, 1, 2)
    np.testing.assert_allclose(L.soft_binary_cross_entropy(logits, labels, tau=0.3),
                               (sp(-1.0) + sp(-2.0)) / 2, rtol=1e-5)


LABELS = jnp.array([[0, 1], [1, 1]]).reshape(1, 2, 2)  # class 2 absent


def test_dice_uniform_prediction_with_absent_class():
    logits = jnp.zeros((1, 2, 2, 3))          # p = 0.5 everywhere: sum p² = 1 per channel
    # dice0 = 2·0.5/(1+1) = 0.5; dice1 = 2·1.5/(1+3) = 0.75; dice2 = 0 (absent)
    np.testing.assert_allclose(L.dice_loss(logits, LABELS), 1 - (0.75 + 0) / 2, rtol=1e-6)
    np.testing.assert_allclose(L.dice_loss(logits, LABELS, include_bg=True),
                               1 - (0.5 + 0.75 + 0) / 3, rtol=1e-6)
    one_hot = jax.nn.one_hot(LABELS, 3)
    np.testing.assert_allclose(L.dice_loss(logits, one_hot), L.dice_loss(logits, LABELS))
    weight = jnp.array([1.0, 2.0, 1.0])
    np.testing.assert_allclose(L.dice_loss(logits, LABELS, weight=weight), 1 - (1.5 + 0) / 2,
                               rtol=1e-6)


def test_dice_sigmoid_tau_and_absent_class_gradient():
    logits = jnp.full((1, 2, 2, 3), 0.3 * math.log(3.0))   # sigmoid(l / 0.3) = 0.75
    # sum p² = 2.25; dice1 = 2·2.25/(2.25+3); dice2 = 0
    expected = 1 - (4.5 / 5.25) / 2
    np.testing.assert_allclose(L.dice_loss(logits, LABELS, sigmoid_tau=0.3), expected, rtol=1e-5)
    g = jax.grad(L.dice_loss)(logits, LABELS)
    assert float(jnp.abs(g[..., 2]).max()) == 0.0 and float(jnp.abs(g[..., 1]).max()) > 0


def test_dice_binary_include_bg():
    logits = jnp.zeros((1, 2, 2, 1))
    labels = jnp.array([[1, 0], [0, 0]]).reshape(1, 2, 2)
    # p = 0.5: dice = 2·0.5/(1 + 1) = 0.5
    np.testing.assert_allclose(L.dice_loss(logits, labels, include_bg=True), 0.5, rtol=1e-6)


# ------------------------------------------------------------------ inference noise

def _checker(s):
    i, j = np.indices((s, s))
    return (-1.0) ** (i + j)


def test_noise_regularize_known_maps():
    checker4 = jnp.asarray(_checker(4)).reshape(1, 4, 4, 1)
    ones16 = jnp.ones((1, 16, 16, 1))
    checker16 = jnp.asarray(_checker(16)).reshape(1, 16, 16, 1)
    stripes16 = jnp.asarray(np.tile((-1.0) ** np.arange(16), (16, 1))).reshape(1, 16, 16, 1)
    # checkerboard: both neighbour products are -1 -> 1 + 1; pooled to 8 it becomes 0
    np.testing.assert_allclose(L.noise_regularize([checker4]), 2.0)
    np.testing.assert_allclose(L.noise_regularize([checker16]), 2.0)
    # constant: 2 at 16 px and 2 again at 8 px
    np.testing.assert_allclose(L.noise_regularize([ones16]), 4.0)
    # stripes along W: 1 + 1 at 16 px, 0 once pooled
    np.testing.assert_allclose(L.noise_regularize([stripes16]), 2.0)
    np.testing.assert_allclose(L.noise_regularize([checker4, ones16, stripes16]), 8.0)
    # the mean runs over the batch before squaring: +1 and -1 products cancel
    batch = jnp.concatenate([jnp.ones((1, 4, 4, 1)), checker4], axis=0)
    np.testing.assert_allclose(L.noise_regularize([batch]), 0.0, atol=1e-7)


def test_noise_normalize_unbiased_std():
    (out,) = L.noise_normalize([jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1)])
    std = math.sqrt(5 / 3)
    np.testing.assert_allclose(out.ravel(), (np.array([1, 2, 3, 4]) - 2.5) / std, rtol=1e-6)


def test_losses_jit_match_eager():
    """Shapes and options are static: every loss traces under jit and gives the eager value."""
    logits = _x((2, 4, 4, 3))
    labels = jnp.argmax(_x((2, 4, 4, 3), seed=1), axis=-1)
    noise = [_x((2, 16, 16, 1), seed=2), _x((2, 4, 4, 1), seed=3)]

    def all_losses(logits, noise):
        return jnp.stack([
            L.d_logistic_loss(logits[..., :1], logits[..., 1:]),
            L.hinge_d_loss([[logits, logits[..., :1]]], False),
            L.softmax_cross_entropy(logits, labels),
            L.dice_loss(logits, labels),
            L.soft_binary_cross_entropy(logits[..., :1], (labels == 1).astype(jnp.int32)),
            L.noise_regularize(noise),
        ])

    np.testing.assert_allclose(jax.jit(all_losses)(logits, noise), all_losses(logits, noise),
                               rtol=1e-5, atol=1e-7)
