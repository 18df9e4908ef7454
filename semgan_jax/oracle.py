"""Offline GAN-quality metrics from an *oracle* segmenter, for datasets with labels to spare (the
built-in synthetic faces: 4,000 labeled training images). No download, no Inception weights.

The oracle is the supervised U-Net baseline (models/unet.py) trained on every labeled training
image, built once and cached beside the prepared data (`DATA_DIR/oracle/DATASET_RES/`, a
train-supervised run directory plus `oracle.json` with its test scores):

    oracle = load_oracle("synthetic", 32, data_dir)        # builds it on first use (minutes)
    labels, features = oracle(images)                      # (N, H, W) int32, (N, D) float32

Two numbers of a generator G (stage 1 logs both for G and G_ema every `eval.every` steps):
- **mask agreement**: mIoU between G's own label map (argmax of the seg branch) and the oracle's
  label map of G's image, over N samples: whether G draws images and masks that belong together,
  the property SemanticGAN rests on. Real (image, mask) pairs score the oracle's own mIoU.
- **oracle Fréchet distance** (OFD): Fréchet distance between the oracle's bottleneck features
  (global average pool of the U-Net's deepest block) of G samples and of the `test` split: a
  domain FID, lower is better.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

ORACLE_ITERATIONS = 2000


def oracle_dir(dataset: str, resolution: int, data_dir: str | None) -> Path:
    """Where the oracle of (dataset, resolution) lives: beside the prepared data, or under
    ~/.cache/semgan_jax/oracle for data generated in memory (synthetic without data_dir)."""
    root = Path(data_dir) if data_dir else Path(os.environ.get("SEMGAN_JAX_ORACLE",
                                                              Path.home() / ".cache" / "semgan_jax"))
    return root / "oracle" / f"{dataset}_{resolution}"


def oracle_config(dataset: str, resolution: int, data_dir: str | None, iterations: int = ORACLE_ITERATIONS):
    """train-supervised config of the oracle: the narrow U-Net of experiments/synthetic_32_unet.py
    (base width 16, three poolings) on ALL labeled training images, batch 16, lr 1e-3 with a cosine
    over the second half."""
    from semgan_jax.train.supervised import default_config

    c = default_config()
    c.data.update(name=dataset, resolution=resolution, data_dir=data_dir or "", num_labeled=0, num_workers=0,
                  prefetch=2)
    c.model.update(base_width=16, depth=3, norm_groups=8)
    c.train.update(iterations=iterations, batch_size=16, lr=1e-3, lr_min=1e-5, lr_decay_start=iterations // 2,
                   lr_decay_end=iterations)
    c.log.update(log_every=50, viz_every=iterations, n_sample=16, save_every=iterations, keep=1)
    return c


def build_oracle(dataset: str, resolution: int, data_dir: str | None, *, iterations: int = ORACLE_ITERATIONS,
                 eval_limit: int = 0) -> Path:
    """Train the oracle (or finish an interrupted build) and score it on `test`: writes
    oracle.json {'test_miou', 'iterations', ...} last, so its presence marks a finished oracle."""
    from semgan_jax.train import supervised

    path = oracle_dir(dataset, resolution, data_dir)
    print(f"building the {dataset} {resolution}px oracle segmenter in {path} ({iterations} iterations)")
    supervised.train(oracle_config(dataset, resolution, data_dir, iterations), str(path / "run"), resume=True)
    result = supervised.evaluate(path / "run", "test", limit=eval_limit, data_dir=data_dir, verbose=False)
    record = {"dataset": dataset, "resolution": resolution, "iterations": iterations,
              "test_miou": result["dataset"]["miou"], "test_images": result["num_images"]}
    (path / "oracle.json").write_text(json.dumps(record, indent=2))
    return path


class Oracle:
    """The oracle of a finished build: `oracle(images)` -> (labels (N, H, W) int32, features (N, D)
    float32) for images float (N, H, W, C) in [-1, 1]; `record` holds oracle.json."""

    def __init__(self, path: str | Path):
        import jax
        import jax.numpy as jnp

        from semgan_jax.train import supervised

        path = Path(path)
        self.path, self.record = path, json.loads((path / "oracle.json").read_text())
        self.config, models, state = supervised.load_run(path / "run")
        self.num_classes = models.num_classes

        def run(params, x):
            logits, inter = models.net.apply({"params": params}, x, mutable=["intermediates"])
            feats = jnp.mean(inter["intermediates"]["bottleneck_features"][0], axis=(1, 2))
            return jnp.argmax(logits, axis=-1).astype(jnp.int32), feats.astype(jnp.float32)

        self._params, self._run = state.params, jax.jit(run)

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray]:
        labels, feats = self._run(self._params, np.asarray(images, np.float32))
        return np.asarray(labels), np.asarray(feats)

    def split_stats(self, split: str = "test", batch_size: int = 100):
        """(mu, sigma) of the oracle features of a split of its own dataset, cached as stats_SPLIT.npz."""
        from semgan_jax.data.datasets import load_split
        from semgan_jax.data.pipeline import make_eval_batches
        from semgan_jax.metrics import FeatureStats

        cache = self.path / f"stats_{split}.npz"
        if cache.is_file():
            with np.load(cache) as d:
                return d["mu"], d["sigma"]
        d = self.config.data
        source = load_split(d.name, split, data_dir=d.data_dir or None, resolution=d.resolution)
        stats = None
        for batch in make_eval_batches(source, batch_size):
            _, feats = self(batch["image"])
            stats = stats or FeatureStats(feats.shape[1])
            stats.update(feats)
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez(tmp, mu=stats.mean, sigma=stats.cov)
        tmp.replace(cache)
        return stats.mean, stats.cov


def load_oracle(dataset: str, resolution: int, data_dir: str | None, *, build: bool = True,
                iterations: int = ORACLE_ITERATIONS) -> Oracle:
    """The cached oracle of (dataset, resolution); built first when missing and `build`."""
    path = oracle_dir(dataset, resolution, data_dir)
    if not (path / "oracle.json").is_file():
        if not build:
            raise FileNotFoundError(f"no oracle segmenter in {path}; build it with `semgan oracle {dataset} "
                                    f"--resolution {resolution}" + (f" --data-dir {data_dir}`" if data_dir else "`"))
        build_oracle(dataset, resolution, data_dir, iterations=iterations)
    return Oracle(path)


def mask_agreement(oracle: Oracle, images, labels) -> float:
    """Dataset-level mIoU of `labels` (N, H, W) (e.g. G's own label maps) against the oracle's label
    maps of `images` (N, H, W, C) in [-1, 1]."""
    from semgan_jax.metrics import SegmentationMetrics

    metrics = SegmentationMetrics(oracle.num_classes)
    metrics.update(np.asarray(labels), oracle(images)[0])
    return float(metrics.result()["dataset"]["miou"])


def generator_scores(oracle: Oracle, sample_fn, key, n: int, batch_size: int = 128, reference=None) -> dict:
    """{'agreement', 'ofd'} of a generator: `sample_fn(key, b)` -> (images (b, H, W, C) in [-1, 1],
    seg logits (b, H, W, K)); n samples in batches; `reference` the (mu, sigma) to compare with
    (default: the oracle's test split)."""
    import jax

    from semgan_jax import viz
    from semgan_jax.metrics import FeatureStats, SegmentationMetrics, frechet_distance

    metrics, stats = SegmentationMetrics(oracle.num_classes), None
    for i in range(0, n, batch_size):
        images, seg = jax.device_get(sample_fn(jax.random.fold_in(key, i), batch_size))
        images, seg = images[:n - i], seg[:n - i]
        labels, feats = oracle(images)
        metrics.update(viz.seg_to_labels(seg), labels)
        stats = stats or FeatureStats(feats.shape[1])
        stats.update(feats)
    mu, sigma = reference if reference is not None else oracle.split_stats("test")
    return {"agreement": float(metrics.result()["dataset"]["miou"]),
            "ofd": frechet_distance(stats.mean, stats.cov, mu, sigma)}


def stage1_evaluator(config, models):
    """evaluate(state, step) -> {'oracle_agreement', 'oracle_ofd', 'oracle_agreement_ema',
    'oracle_ofd_ema'}: the scores of G and G_ema over `eval.oracle_samples` samples (fresh noise,
    no truncation, no mixing; the same z every time)."""
    import jax

    from semgan_jax.metrics import generator_sampler

    d, e = config.data, config.eval
    oracle = load_oracle(d.name, d.resolution, d.data_dir or None)
    reference = oracle.split_stats("test")
    sample = generator_sampler(models.g)
    key = jax.random.PRNGKey(config.seed + 4321)

    def evaluate(state, step):
        out = {}
        for suffix, params in (("", state.g), ("_ema", state.g_ema)):
            s = generator_scores(oracle, lambda k, n: sample(params, k, n), key, e.oracle_samples,
                                 reference=reference)
            out.update({f"oracle_agreement{suffix}": s["agreement"], f"oracle_ofd{suffix}": s["ofd"]})
        return out

    return evaluate


def register_oracle(subparsers) -> None:
    from semgan_jax.data.datasets import DATASET_NAMES  # numpy only

    p = subparsers.add_parser("oracle", help="build the oracle segmenter of a dataset (for mask agreement / OFD)",
                              description="Train the U-Net oracle on every labeled training image of DATASET "
                                          "(once; cached in DATA_DIR/oracle/) and print its test mIoU.")
    p.add_argument("dataset", choices=DATASET_NAMES)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--data-dir", help="where the dataset is prepared (synthetic: none = generated in memory)")
    p.add_argument("--iterations", type=int, default=ORACLE_ITERATIONS)
    p.set_defaults(handler=run_oracle)


def run_oracle(args) -> int:
    from semgan_jax.train.commands import enable_compilation_cache

    enable_compilation_cache()
    try:
        oracle = load_oracle(args.dataset, args.resolution, args.data_dir, iterations=args.iterations)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 1
    print(f"oracle {oracle.path}: test mIoU {oracle.record['test_miou']:.3f} "
          f"({oracle.record['iterations']} iterations on all labeled training images)")
    return 0
