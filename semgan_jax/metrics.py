"""Evaluation metrics: segmentation scores, and FID / IS with the Flax Inception-v3.

Segmentation (numpy; no jax needed)
    confusion_matrices(pred, target, num_classes) -> (N, K, K) int64, rows = target, cols = pred
    SegmentationMetrics(num_classes, class_names=None): .update(pred, target) per batch of integer
        maps (N, H, W) or (H, W) (or .update_confusion(per-image confusion matrices (N, K, K)));
        .result() -> JSON-able dict; .table() -> printable text
    report(metrics, title=None, file=sys.stdout) -> dict: prints the table, returns .result()

Inception metrics (float64 numpy for the statistics; no scipy)
    frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6, offset="always") -> float
    trace_sqrt_product(sigma1, sigma2) -> Tr(sqrtm(S1 S2)) from a symmetric eigenvalue problem
    softmax(logits) / inception_score(probs, num_splits=10) -> (mean, std)
    FeatureStats: streaming mean / covariance of (N, D) feature batches (Chan's merge, float64)
    InceptionStats: mu, sigma, n, is_mean, is_std (+ metadata); .save(path) / load_stats(path)
    fid_from_features(features (N, D), reference) -> float
    InceptionMetrics(weights=None, batch_size=50): jitted Inception-v3, .forward / .features of
        one batch, .stats(batches, total) / .sample_stats(sample_fn, key, n) -> InceptionStats,
        .fid_is(sample_fn, key, reference, n) -> {'fid', 'is_mean', 'is_std', 'n'}
    generator_sampler(generator) -> sample(params, key, n) -> (images, seg logits), jitted once
    generator_sample_fn(generator, variables) -> sample_fn(key, n) -> images, for the above

How the reference computes FID / IS (utils/inception_utils.py, prepare_inception.py): torchvision
Inception-v3 pool features (2048) and softmax logits (1000) of images in [-1, 1] (see
perceptual/inception.py); data statistics mean and np.cov(rowvar=False) of all features; IS over
10 splits of N // 10 probabilities each (the remainder is dropped), mean and std of the split
scores; FID by numpy_calculate_frechet_distance (scipy sqrtm, eps I always added to both
covariances), reproduced here without scipy to ~1e-8 relative or better. During training the
reference draws 10,000 samples from g_ema (truncation 1) for FID / IS.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

# --------------------------------------------------------------------------- segmentation


def confusion_matrices(pred, target, num_classes: int) -> np.ndarray:
    """Per-image confusion matrices (N, K, K), entry [n, t, p] = pixels of class t predicted as p.

    pred, target: integer arrays (N, H, W) or (H, W) (then N = 1) with values in 0..K-1.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    if pred.ndim != 3:
        raise ValueError(f"expected integer maps (N, H, W) or (H, W), got shape {pred.shape}")
    for name, a in (("pred", pred), ("target", target)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, got {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} has values outside 0..{num_classes - 1}")
    n, k = pred.shape[0], num_classes
    index = (np.arange(n)[:, None] * (k * k) + target.reshape(n, -1).astype(np.int64) * k
             + pred.reshape(n, -1).astype(np.int64))
    return np.bincount(index.ravel(), minlength=n * k * k).reshape(n, k, k)


def _scores(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice per class from confusion matrices (..., K, K); NaN where the class is absent
    from both target and prediction (0 / 0)."""
    inter = np.diagonal(conf, axis1=-2, axis2=-1).astype(np.float64)
    target = conf.sum(axis=-1).astype(np.float64)
    pred = conf.sum(axis=-2).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (target + pred - inter)
        dice = 2 * inter / (target + pred)
    return iou, dice


def _nanmean(x: np.ndarray, axis=None):
    """Mean over the non-NaN entries; NaN (without a warning) where there are none."""
    valid = ~np.isnan(x)
    count = valid.sum(axis=axis)
    total = np.where(valid, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def _json_float(x) -> float | None:
    return None if np.isnan(x) else float(x)


class SegmentationMetrics:
    """Streaming IoU (= JSI) and Dice (= DSC) over (pred, target) integer maps, K classes.

    Two averages, both in `result()`:
      * dataset (the reference's, `validate` in semanticGAN/train_enc.py): intersections and
        unions summed over all pixels of all images; per class IoU = TP / (TP + FP + FN), Dice =
        2 TP / (2 TP + FP + FN). 'miou' / 'mdice' are means over all K classes, background
        included, a class absent from both targets and predictions counting as 0 - the reference's
        inter / (eps + union). 'miou_present' / 'mdice_present' leave such classes out; the two
        agree whenever every class occurs. 'pixel_accuracy' as the reference's pixAcc.
      * per_image: the same scores per image, then averaged over images; a class neither in the
        target nor in the prediction of an image has no score there (0 / 0) and is left out of that
        image's mean and of the class's average over images; present in one but not the other
        scores 0.
    Per-class values of a class absent from the whole set are None (JSON null).
    For K = 2 (background, foreground) `result()` adds 'jsi' and 'dsc': the foreground IoU / Dice
    averaged over images (the usual protocol for skin-lesion and lung segmentation; the reference
    ships no code for these two), and their dataset-level values 'jsi_dataset' / 'dsc_dataset'.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None):
        if num_classes < 2:
            raise ValueError("num_classes counts the background too: use 2 for a binary task")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        self.confusion = np.zeros((k, k), np.int64)
        self.num_images = 0
        self._iou_sum, self._dice_sum = np.zeros(k), np.zeros(k)
        self._present = np.zeros(k, np.int64)
        self._miou_sum = self._mdice_sum = 0.0
        self._images_scored = 0

    def update(self, pred, target) -> None:
        """Add a batch: integer class maps (N, H, W) or (H, W), values 0..K-1."""
        self.update_confusion(confusion_matrices(pred, target, self.num_classes))

    def update_confusion(self, conf) -> None:
        """Add images given by their confusion matrices (N, K, K) (as `confusion_matrices`
        returns them; e.g. read back from per-image records)."""
        conf = np.asarray(conf, np.int64)
        if conf.ndim != 3 or conf.shape[1:] != (self.num_classes, self.num_classes):
            raise ValueError(f"expected confusion matrices (N, {self.num_classes}, {self.num_classes}), "
                             f"got shape {conf.shape}")
        self.confusion += conf.sum(axis=0)
        self.num_images += conf.shape[0]
        iou, dice = _scores(conf)
        present = ~np.isnan(iou)
        self._iou_sum += np.where(present, iou, 0.0).sum(axis=0)
        self._dice_sum += np.where(present, dice, 0.0).sum(axis=0)
        self._present += present.sum(axis=0)
        scored = present.any(axis=1)  # False only for empty (0-pixel) images
        self._miou_sum += float(_nanmean(iou[scored], axis=1).sum())
        self._mdice_sum += float(_nanmean(dice[scored], axis=1).sum())
        self._images_scored += int(scored.sum())

    def result(self) -> dict:
        """JSON-able scores (fractions in [0, 1]; None where undefined)."""
        iou, dice = _scores(self.confusion)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou_img, dice_img = self._iou_sum / self._present, self._dice_sum / self._present
            per_image_miou = self._miou_sum / self._images_scored if self._images_scored else np.nan
            per_image_mdice = self._mdice_sum / self._images_scored if self._images_scored else np.nan
        union = self.confusion.sum(axis=0) + self.confusion.sum(axis=1) - np.diagonal(self.confusion)
        occurs = union > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            total = self.confusion.sum()
            accuracy = np.trace(self.confusion) / total if total else np.nan
        out = {
            "num_images": self.num_images,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "confusion": self.confusion.tolist(),
            "dataset": {"iou": [_json_float(v) for v in iou], "dice": [_json_float(v) for v in dice],
                        "miou": _json_float(np.where(occurs, iou, 0.0).mean()) if total else None,
                        "mdice": _json_float(np.where(occurs, dice, 0.0).mean()) if total else None,
                        "miou_present": _json_float(_nanmean(iou)), "mdice_present": _json_float(_nanmean(dice)),
                        "pixel_accuracy": _json_float(accuracy)},
            "per_image": {"iou": [_json_float(v) for v in iou_img], "dice": [_json_float(v) for v in dice_img],
                          "images_with_class": self._present.tolist(),
                          "miou": _json_float(per_image_miou), "mdice": _json_float(per_image_mdice)},
        }
        if self.num_classes == 2:
            out.update(jsi=_json_float(iou_img[1]), dsc=_json_float(dice_img[1]),
                       jsi_dataset=_json_float(iou[1]), dsc_dataset=_json_float(dice[1]))
        return out

    def table(self, title: str | None = None) -> str:
        """Per-class IoU / Dice (dataset and per-image averages) and the means, as text."""
        r = self.result()
        fmt = lambda v: "     -" if v is None else f"{v:6.4f}"  # noqa: E731
        width = max(10, *(len(n) for n in self.class_names))
        lines = [title] if title else []
        lines.append(f"{r['num_images']} images, {self.num_classes} classes")
        lines.append(f"{'class':<{width}}  {'IoU':>6}  {'Dice':>6}  {'IoU/img':>7}  {'Dice/img':>8}  {'images':>6}")
        d, p = r["dataset"], r["per_image"]
        for i, name in enumerate(self.class_names):
            lines.append(f"{name:<{width}}  {fmt(d['iou'][i])}  {fmt(d['dice'][i])}  {fmt(p['iou'][i]):>7}  "
                         f"{fmt(p['dice'][i]):>8}  {p['images_with_class'][i]:>6}")
        lines.append(f"{'mean':<{width}}  {fmt(d['miou'])}  {fmt(d['mdice'])}  {fmt(p['miou']):>7}  "
                     f"{fmt(p['mdice']):>8}")
        if d["miou"] != d["miou_present"]:
            lines.append(f"(classes absent from the whole set count as 0 in the dataset means, as in the "
                         f"reference; over present classes only: mIoU {fmt(d['miou_present'])}, "
                         f"mDice {fmt(d['mdice_present'])})")
        lines.append(f"pixel accuracy {fmt(d['pixel_accuracy'])}")
        if self.num_classes == 2:
            lines.append(f"JSI {fmt(r['jsi'])}  DSC {fmt(r['dsc'])}  (foreground, mean over images; "
                         f"dataset-level JSI {fmt(r['jsi_dataset'])}, DSC {fmt(r['dsc_dataset'])})")
        return "\n".join(lines)


def report(metrics: SegmentationMetrics, title: str | None = None, file=sys.stdout) -> dict:
    """Print `metrics.table(title)` and return `metrics.result()` (JSON-able)."""
    print(metrics.table(title), file=file)
    return metrics.result()


# --------------------------------------------------------------------------- FID / IS math


def trace_sqrt_product(sigma1, sigma2) -> float:
    """Tr(sqrtm(S1 S2)) for symmetric PSD (D, D) matrices, float64, numpy only (no scipy).

    S1 S2 has the eigenvalues of a symmetric PSD matrix M, so the trace of its principal square
    root is sum_i sqrt(lambda_i(M)), from numpy's eigvalsh: M = L^T S2 L with S1 = L L^T
    (Cholesky; roles swapped when only S2 factors), or S1^1/2 S2 S1^1/2 from an eigendecomposition
    of S1 when neither is positive definite (N < D features). Eigenvalues that rounding makes
    slightly negative count as 0: that is where scipy.linalg.sqrtm returns the small imaginary part
    that FID code drops. D = 2048 takes a few seconds on 2 CPU cores (Cholesky route).
    """
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    for a, b in ((s1, s2), (s2, s1)):
        try:
            low = np.linalg.cholesky(a)
        except np.linalg.LinAlgError:
            continue
        m = low.T @ b @ low
        break
    else:
        w, v = np.linalg.eigh((s1 + s1.T) / 2)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = root @ s2 @ root
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sum(np.sqrt(np.clip(lam, 0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, offset: str = "always") -> float:
    """Fréchet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), float64.

    mu (D,), sigma (D, D). The square-root term comes from `trace_sqrt_product` (numpy; it stays
    finite and real for singular or near-singular covariances, N < D included).
    offset="always" (default): use (S1 + eps I)(S2 + eps I) inside the square root, as the
    reference's numpy_calculate_frechet_distance does (its singularity test only prints).
    offset="fallback": pytorch-fid's calculate_frechet_distance, which adds eps I only when its
    scipy sqrtm fails; `trace_sqrt_product` never fails on finite input, so no offset is added.
    Non-finite inputs raise ValueError.
    """
    if offset not in ("fallback", "always"):
        raise ValueError(f"offset must be 'fallback' or 'always', got {offset!r}")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("FID: non-finite values in the feature statistics")
    diff = mu1 - mu2
    if offset == "always":
        eye = np.eye(sigma1.shape[0]) * eps
        tr_covmean = trace_sqrt_product(sigma1 + eye, sigma2 + eye)
    else:
        tr_covmean = trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def softmax(logits) -> np.ndarray:
    """Softmax over the last axis in float64: (..., K) -> (..., K)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def inception_score(probs, num_splits: int = 10) -> tuple[float, float]:
    """IS mean and std over `num_splits` consecutive chunks of N // num_splits rows (the remainder
    is dropped, as in the reference); probs (N, classes) softmax outputs; float64."""
    probs = np.asarray(probs, np.float64)
    size = probs.shape[0] // num_splits
    if size == 0:
        raise ValueError(f"need at least {num_splits} rows for {num_splits} splits, got {probs.shape[0]}")
    scores = []
    for i in range(num_splits):
        chunk = probs[i * size:(i + 1) * size]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = chunk * (np.log(chunk) - np.log(chunk.mean(axis=0, keepdims=True)))
        kl = np.where(chunk > 0, kl, 0.0)  # 0 log 0 = 0 (the reference would give NaN)
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


class FeatureStats:
    """Streaming mean and covariance (ddof 1, = np.cov(rowvar=False)) of feature rows, float64."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim)
        self._m2 = np.zeros((dim, dim))

    def update(self, features) -> None:
        x = np.asarray(features, np.float64)
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(axis=0)
        xc = x - mb
        m2b = xc.T @ xc
        n = self.n + nb
        delta = mb - self.mean
        self._m2 += m2b + np.outer(delta, delta) * (self.n * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = n

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError("covariance needs at least 2 feature rows")
        return self._m2 / (self.n - 1)


@dataclasses.dataclass
class InceptionStats:
    """Inception pool-feature statistics of an image set (+ its IS), as saved in stats .npz files."""
    mu: np.ndarray  # (2048,) float64
    sigma: np.ndarray  # (2048, 2048) float64
    n: int
    is_mean: float = float("nan")
    is_std: float = float("nan")
    meta: dict = dataclasses.field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz to exactly `path` (no suffix added)."""
        with open(path, "wb") as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, n=self.n, is_mean=self.is_mean, is_std=self.is_std,
                     meta=json.dumps(self.meta))


def load_stats(path: str | os.PathLike) -> InceptionStats:
    """Stats from our .npz, or from the reference's prepare_inception.py pickle ({'mean', 'cov'})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; make it with `semgan inception-stats`")
    with open(path, "rb") as f:
        is_npz = f.read(4) == b"PK\x03\x04"
    if is_npz:
        with np.load(path) as d:
            return InceptionStats(d["mu"], d["sigma"], int(d["n"]), float(d["is_mean"]), float(d["is_std"]),
                                  json.loads(str(d["meta"])))
    with open(path, "rb") as f:  # a pickle: only load files you made or trust
        d = pickle.load(f)
    return InceptionStats(np.asarray(d["mean"], np.float64), np.asarray(d["cov"], np.float64), -1,
                          meta={k: v for k, v in d.items() if k in ("size", "path")})


def fid_from_features(features, reference: InceptionStats, offset: str = "always") -> float:
    """FID of feature rows (N, D) (N >= 2) against reference statistics."""
    stats = FeatureStats(reference.mu.shape[0])
    stats.update(features)
    return frechet_distance(stats.mean, stats.cov, reference.mu, reference.sigma, offset=offset)


# --------------------------------------------------------------------------- Inception features


class InceptionMetrics:
    """Jitted Inception-v3 (the reference's metric network) with FID / IS over image streams.

    weights: None (find the torchvision file, see perceptual.convert.find_weights), a path, a
    state-dict mapping, or ready Flax variables ({'params', 'batch_stats'}).
    batch_size: images per jitted call; smaller batches are zero-padded to it (one compilation).
    Images: float (N, H, W, 1|3) in [-1, 1], any size (resized to 299 inside).
    """

    def __init__(self, weights=None, batch_size: int = 50):
        import jax

        from semgan_jax.perceptual.convert import inception_variables, load_inception
        from semgan_jax.perceptual.inception import InceptionV3

        if isinstance(weights, Mapping) and "params" in weights and "batch_stats" in weights:
            self.model, variables = InceptionV3(), weights
        elif isinstance(weights, Mapping):
            self.model, variables = InceptionV3(), inception_variables(weights)
        else:
            self.model, variables = load_inception(weights)
        self.variables = jax.device_put(variables)  # once, not with every batch
        self.batch_size = batch_size

        def forward(variables, images):
            return self.model.apply(variables, images)

        self._forward = jax.jit(forward)

    def forward(self, images) -> tuple[np.ndarray, np.ndarray]:
        """images (N <= batch_size, H, W, C) in [-1, 1] -> (pool (N, 2048), logits (N, 1000)) float32.

        Batches smaller than batch_size are zero-padded to it, so the network compiles once.
        """
        import jax.numpy as jnp

        n = images.shape[0]
        if n > self.batch_size:
            raise ValueError(f"batch of {n} > batch_size {self.batch_size}")
        images = jnp.asarray(images, jnp.float32)
        if images.shape[-1] == 1:  # grey: repeated to RGB here, so one compilation serves both
            images = jnp.repeat(images, 3, axis=-1)
        if n < self.batch_size:
            images = jnp.pad(images, [(0, self.batch_size - n)] + [(0, 0)] * 3)
        pool, logits = self._forward(self.variables, images)
        return np.asarray(pool[:n]), np.asarray(logits[:n])

    def features(self, images) -> tuple[np.ndarray, np.ndarray]:
        """images (N <= batch_size, H, W, C) in [-1, 1] -> (pool (N, 2048) float32, softmax
        probabilities (N, 1000) float64)."""
        pool, logits = self.forward(images)
        return pool, softmax(logits)

    def stats(self, batches: Iterable, total: int | None = None, progress: bool = True,
              num_splits: int = 10, desc: str = "inception") -> InceptionStats:
        """Stats and IS of image batches (arrays or dicts with 'image'), up to `total` images."""
        from tqdm import tqdm

        acc, probs = None, []
        bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
        seen = 0
        for batch in batches:
            images = batch["image"] if isinstance(batch, dict) else batch
            if total is not None:
                images = images[:total - seen]
            for start in range(0, images.shape[0], self.batch_size):
                pool, p = self.features(images[start:start + self.batch_size])
                if acc is None:
                    acc = FeatureStats(pool.shape[1])
                acc.update(pool)
                probs.append(p)
                bar.update(pool.shape[0])
            seen += images.shape[0]
            if total is not None and seen >= total:
                break
        bar.close()
        if acc is None or acc.n < 2:
            raise ValueError("need at least 2 images for Inception statistics")
        probs = np.concatenate(probs)
        is_mean, is_std = inception_score(probs, num_splits) if len(probs) >= num_splits else (np.nan, np.nan)
        return InceptionStats(acc.mean, acc.cov, acc.n, is_mean, is_std)

    def sample_stats(self, sample_fn: Callable, key, n: int, progress: bool = True,
                     num_splits: int = 10) -> InceptionStats:
        """Stats and IS of n samples from `sample_fn(key, batch_size) -> images` in [-1, 1].

        sample_fn is called with fold_in(key, i) for batch i and always with batch_size (so a
        jitted sampler compiles once); surplus images of the last batch are dropped.
        """
        import jax

        def batches():
            for i in range((n + self.batch_size - 1) // self.batch_size):
                yield sample_fn(jax.random.fold_in(key, i), self.batch_size)

        return self.stats(batches(), total=n, progress=progress, num_splits=num_splits, desc="samples")

    def fid_is(self, sample_fn: Callable, key, reference: InceptionStats, n: int = 50_000,
               progress: bool = True, num_splits: int = 10, offset: str = "always") -> dict:
        """{'fid', 'is_mean', 'is_std', 'n'} of n generator samples against reference stats."""
        s = self.sample_stats(sample_fn, key, n, progress=progress, num_splits=num_splits)
        fid = frechet_distance(s.mu, s.sigma, reference.mu, reference.sigma, offset=offset)
        return {"fid": fid, "is_mean": s.is_mean, "is_std": s.is_std, "n": s.n}


def generator_sampler(generator, truncation: float = 1.0, truncation_latent=None):
    """sample(params, key, n) -> (images (n, size, size, C) in ~[-1, 1], seg logits (n, size,
    size, K)) of a semgan Generator: fresh z and per-layer noise on every call, as the reference's
    `sample_gema`. Jitted once with the params as an argument, so a new training state reuses the
    compiled program; compiles once per n."""
    import functools

    import jax

    @functools.partial(jax.jit, static_argnums=2)
    def sample(params, key, n: int):
        k_z, k_noise = jax.random.split(key)
        z = jax.random.normal(k_z, (n, generator.style_dim))
        return generator.apply({"params": params}, z, truncation=truncation, truncation_latent=truncation_latent,
                               rngs={"noise": k_noise})

    return sample


def generator_sample_fn(generator, variables, truncation: float = 1.0, truncation_latent=None, sampler=None):
    """sample_fn(key, n) -> images (n, size, size, C) in ~[-1, 1] for `InceptionMetrics`, from a
    semgan Generator and its (g_ema) variables, through `sampler` (default: a new
    `generator_sampler`; pass one to share its compiled program across states)."""
    sample = sampler or generator_sampler(generator, truncation, truncation_latent)
    return lambda key, n: sample(variables["params"], key, n)[0]
