"""Loss functions of SemanticGAN's three stages, as pure `jax.numpy` functions.

Each function names the reference function or class it matches (official code:
`semanticGAN/train_seg_gan.py`, `semanticGAN/losses.py`, `semanticGAN/inference.py`,
`models/stylegan2_seg.py`). Arrays are NHWC. Networks are passed in as callables, never imported.

Dm (the pix2pixHD multiscale discriminator with intermediate features) returns a list over its
scales, each a list of that scale's intermediate feature maps whose last entry is the final
(N, h, w, 1) patch map. Functions taking "multiscale predictions" accept that layout; an entry
that is a bare array is taken as the final map itself (as the reference's GANLoss does).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


# --------------------------------------------------------------------------------------------
# Stage 1: StyleGAN2 logistic losses and regularisers (image discriminator Dr, generator)
# --------------------------------------------------------------------------------------------

def d_logistic_loss(real_pred: Array, fake_pred: Array) -> Array:
    """Discriminator logistic loss, as `d_logistic_loss` in the reference.

    mean(softplus(-D(real))) + mean(softplus(D(fake))); each mean is over all elements of its
    input (for Dr the predictions are (N, 1)). Returns a scalar.
    """
    return jnp.mean(jax.nn.softplus(-real_pred)) + jnp.mean(jax.nn.softplus(fake_pred))


def g_nonsaturating_loss(fake_pred: Array) -> Array:
    """Generator non-saturating loss, as `g_nonsaturating_loss`: mean(softplus(-D(fake)))."""
    return jnp.mean(jax.nn.softplus(-fake_pred))


def r1_penalty(d_fn: Callable, real_input: Array, has_aux: bool = False):
    """R1 gradient penalty on real data, as `d_r1_loss` in the reference.

    g = d/dx sum(d_fn(x)) at x = real_input (N, H, W, C); returns mean over the batch of the
    sum over (H, W, C) of g**2, a scalar. The reference weights it by r1 / 2 · d_reg_every
    (lazy regularisation); that weighting is the caller's.

    d_fn: x -> predictions of any shape (for Dr: (N, 1) logits, summed over the batch as the
    reference does, so each sample's gradient is its own; for Dm: use
    `multiscale_r1_output`, see there). With `has_aux`, d_fn returns (predictions, aux) and
    this returns (penalty, aux), e.g. to carry Dm's updated spectral-norm state out.
    Differentiable w.r.t. whatever d_fn closes over (double backprop).
    """
    def total(x):
        out = d_fn(x)
        if has_aux:
            pred, aux = out
            return jnp.sum(pred), aux
        return jnp.sum(out)

    grad_and_aux = jax.grad(total, has_aux=has_aux)(real_input)
    grad = grad_and_aux[0] if has_aux else grad_and_aux
    penalty = jnp.mean(jnp.sum(jnp.square(grad).reshape(grad.shape[0], -1), axis=1))
    return (penalty, grad_and_aux[1]) if has_aux else penalty


def multiscale_r1_output(preds: Sequence) -> Array:
    """Scalar that the reference differentiates for Dm's R1: sum over scales of the mean of
    that scale's final map (mean over batch, space and channel).

    train_seg_gan.py does `real_pred[0][-1].mean() + real_pred[1][-1].mean() +
    real_pred[2][-1].mean()`. Because each final map is averaged over the batch too, the
    per-sample input gradients carry a factor 1/(N·h·w), so Dm's R1 value is much smaller than
    Dr's and shrinks with the batch size as 1/N²; reproduced as is.
    """
    return sum(jnp.mean(_final_map(p)) for p in preds)


def path_length_penalty(g_fn: Callable, latents: Array, mean_path_length, key: Array,
                        decay: float = 0.01, noise: Array | None = None):
    """Path length regulariser, as `g_path_regularize` in the reference.

    g_fn: w+ latents (N, n_latent, style_dim) -> images (N, H, W, C); latents: the w+ codes the
    generator used (the reference's `return_latents=True` output, after style mixing).
    With y ~ N(0, 1) of the image's shape, scaled by 1/sqrt(H·W):
        J = d/dw sum(g_fn(w) · y)                          (N, n_latent, style_dim)
        path_lengths = sqrt(mean over n_latent of sum over style_dim of J**2)      (N,)
        path_mean = mean_path_length + decay · (mean(path_lengths) − mean_path_length)
        penalty = mean((path_lengths − path_mean)**2)
    `noise` (tests): a recorded N(0, 1) draw of the image's shape replacing the key's.
    Returns (penalty, new_mean_path_length, mean(path_lengths)); the last two are
    stop-gradient'ed. As in the reference, path_mean inside the penalty is NOT detached, so
    gradients also flow through its mean(path_lengths) term.

    Difference from the reference: mean(path_lengths) and therefore the running mean are taken
    over the batch given here, i.e. the global batch when called under a sharded jit; the
    reference keeps one running mean per GPU over its local batch (and only logs their average).
    The weighting (path_regularize · g_reg_every) is the caller's.
    """
    images, vjp_fn = jax.vjp(g_fn, latents)
    noise = jax.random.normal(key, images.shape, images.dtype) if noise is None else noise.astype(images.dtype)
    noise = noise / jnp.sqrt(images.shape[1] * images.shape[2])
    (grad,) = vjp_fn(noise)
    path_lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grad), axis=2), axis=1))
    lengths_mean = jnp.mean(path_lengths)
    path_mean = mean_path_length + decay * (lengths_mean - mean_path_length)
    penalty = jnp.mean(jnp.square(path_lengths - path_mean))
    return penalty, jax.lax.stop_gradient(path_mean), jax.lax.stop_gradient(lengths_mean)


# --------------------------------------------------------------------------------------------
# Stage 1: hinge GAN loss and feature matching for the image+mask discriminator Dm
# --------------------------------------------------------------------------------------------

def _final_map(pred):
    """Final map of one scale: last entry of a feature list, or the array itself."""
    return pred[-1] if isinstance(pred, (list, tuple)) else pred


def hinge_d_loss(preds: Sequence, is_real: bool) -> Array:
    """Discriminator hinge loss on Dm's multiscale output, as pix2pixHD `GANLoss('hinge')`
    called with `for_discriminator=True`.

    preds: list over scales (each a feature list whose last entry is the final map, or the
    final map itself). Per scale: −mean(min(p − 1, 0)) for real, −mean(min(−p − 1, 0)) for
    fake (means over every element of the final map); the result is the average over scales.
    The reference's Dm step uses (hinge_d_loss(fake, False) + hinge_d_loss(real, True)) / 2.
    """
    sign = 1.0 if is_real else -1.0
    losses = [-jnp.mean(jnp.minimum(sign * _final_map(p) - 1.0, 0.0)) for p in preds]
    return sum(losses) / len(losses)


def hinge_g_loss(preds: Sequence) -> Array:
    """Generator hinge loss on Dm's multiscale output, as `GANLoss('hinge')` called with
    target real and `for_discriminator=False`: average over scales of −mean(final map)."""
    losses = [-jnp.mean(_final_map(p)) for p in preds]
    return sum(losses) / len(losses)


def feature_matching_loss(fake_feats: Sequence[Sequence[Array]],
                          real_feats: Sequence[Sequence[Array]],
                          weight: float = 2.0, d_weight: float = 1.0 / 3.0,
                          feat_weight: float = 1.0) -> Array:
    """Dm feature-matching loss of the generator step in train_seg_gan.py.

    fake_feats, real_feats: Dm outputs (list over scales of lists of feature maps). Sums, over
    every scale and every intermediate feature of that scale EXCEPT the final map, the L1 mean
    |fake − stop_gradient(real)| times d_weight · feat_weight · weight.

    Defaults are the reference's: weight = lambda_dseg_feat = 2.0; d_weight = 1/3 is hard-coded
    in the reference (it equals 1/num_D only for the default 3 scales); feat_weight = 1.0 (the
    reference does not use pix2pixHD's 4 / (n_layers_D + 1)).
    """
    total = 0.0
    for fake_scale, real_scale in zip(fake_feats, real_feats, strict=True):
        for fake, real in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            l1 = jnp.mean(jnp.abs(fake - jax.lax.stop_gradient(real)))
            total = total + d_weight * feat_weight * l1 * weight
    return total


# --------------------------------------------------------------------------------------------
# Stage 2: segmentation losses of the labeled encoder update (train_enc.py)
# --------------------------------------------------------------------------------------------

def softmax_cross_entropy(logits: Array, labels: Array, tau: float = 0.1) -> Array:
    """Cross-entropy on temperature-scaled logits, as `SoftmaxLoss(tau)`.

    logits: (N, H, W, C) raw segmentation output; labels: (N, H, W) integer class indices (the
    reference passes argmax over channels of its one-hot mask). Mean over N·H·W of
    −log_softmax(logits / tau)[label]. Default tau = 0.1 is what train_enc.py uses for
    multi-class masks (the class's own default is 1.0).
    """
    logp = jax.nn.log_softmax(logits / tau, axis=-1)
    picked = jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)
    return -jnp.mean(picked)


def soft_binary_cross_entropy(logits: Array, targets: Array, tau: float = 0.3) -> Array:
    """Binary cross-entropy on temperature-scaled logits, as `SoftBinaryCrossEntropyLoss(tau)`
    (torch BCEWithLogitsLoss, mean reduction).

    logits: (N, H, W, 1); targets: same shape, float in [0, 1] (the reference passes
    (mask + 1) / 2), or integer (N, H, W) foreground labels in {0, 1}. Default tau = 0.3 is
    what train_enc.py uses for single-channel masks (the class's own default is 1.0).
    """
    targets = _dense_targets(targets, logits.shape[-1])
    x = logits / tau
    return jnp.mean(jnp.maximum(x, 0.0) - x * targets + jnp.log1p(jnp.exp(-jnp.abs(x))))


def dice_loss(logits: Array, targets: Array, sigmoid_tau: float = 0.3, include_bg: bool = False,
              weight: Array | None = None, eps: float = 1e-6) -> Array:
    """Dice loss, as `DiceLoss(weight, sigmoid_tau, include_bg)` in the reference.

    logits: (N, H, W, C). targets: (N, H, W, C) float in [0, 1] (the reference passes the
    one-hot mask shifted to [0, 1]), or integer class labels (N, H, W), which are one-hot
    encoded (for C = 1: taken as the foreground indicator).
    p = sigmoid(logits / sigmoid_tau) -- a sigmoid per channel even for multi-class maps, as in
    the reference. Per channel c, summing over N·H·W:
        dice_c = 2 · w_c · sum(p·t) / max(sum(p²) + sum(t²), eps)
    Returns 1 − mean over channels of dice_c, excluding channel 0 unless include_bg.
    A class absent from the targets has sum(p·t) = 0, so its dice is 0 whatever p is (a
    constant 1 in the mean, with zero gradient). train_enc.py uses include_bg=False for
    multi-class masks and include_bg=True for C = 1 (with C = 1 and include_bg=False the
    reference averages an empty set and returns NaN).
    """
    targets = _dense_targets(targets, logits.shape[-1])
    p = jax.nn.sigmoid(logits / sigmoid_tau)
    axes = tuple(range(logits.ndim - 1))
    intersect = jnp.sum(p * targets, axis=axes)
    if weight is not None:
        intersect = weight * intersect
    denom = jnp.sum(p * p, axis=axes) + jnp.sum(targets * targets, axis=axes)
    dice = 2.0 * intersect / jnp.maximum(denom, eps)
    return 1.0 - jnp.mean(dice if include_bg else dice[1:])


def _dense_targets(targets: Array, num_channels: int) -> Array:
    """Float (N, H, W, C) targets from float targets of that shape or integer (N, H, W) labels."""
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        return targets
    if num_channels == 1:
        return targets[..., None].astype(jnp.float32)
    return jax.nn.one_hot(targets, num_channels, dtype=jnp.float32)


# --------------------------------------------------------------------------------------------
# Inference (latent optimisation): noise-map regulariser and renormalisation
# --------------------------------------------------------------------------------------------

def noise_regularize(noises: Sequence[Array]) -> Array:
    """Spatial-correlation penalty on the per-layer noise maps, as `noise_regularize`.

    noises: list of (N, S, S, C) maps (C = 1 in the generator). For each map, at S and at every
    2×2-average-pooled version of it down to S = 8 (a map of S <= 8 is used once as is), adds
    mean(n · roll(n, 1, W))² + mean(n · roll(n, 1, H))², each mean over the whole array
    (batch included). Matches semanticGAN/losses.py; inference.py's copy is the same for its
    batch size of 1 (its reshape hard-codes a batch of 1). Returns a scalar.
    """
    loss = 0.0
    for noise in noises:
        size = noise.shape[1]
        while True:
            loss = (loss
                    + jnp.square(jnp.mean(noise * jnp.roll(noise, 1, axis=2)))
                    + jnp.square(jnp.mean(noise * jnp.roll(noise, 1, axis=1))))
            if size <= 8:
                break
            n, _, _, c = noise.shape
            noise = noise.reshape(n, size // 2, 2, size // 2, 2, c).mean(axis=(2, 4))
            size //= 2
    return loss


def noise_normalize(noises: Sequence[Array]) -> list[Array]:
    """Each noise map shifted and scaled to zero mean and unit std over all its elements, as
    `noise_normalize_` in inference.py (in place there; torch's std is the unbiased one, so
    ddof=1 here). Applied after every optimiser step; not differentiated through."""
    return [(n - jnp.mean(n)) / jnp.std(n, ddof=1) for n in noises]
