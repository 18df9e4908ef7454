"""`semgan inception-stats`: Inception feature mean / covariance and IS of a dataset split (the
reference's prepare_inception.py), saved as .npz for FID (metrics.load_stats reads it).
`semgan fid`: FID / IS of a stage-1 generator (G_ema) against such a file, as the reference's
training loop computes them (fresh z and noise, truncation 1)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register_inception_stats(subparsers) -> None:
    from semgan_jax.data.datasets import DATASET_NAMES  # numpy only

    p = subparsers.add_parser(
        "inception-stats", help="Inception-v3 feature statistics (FID reference) and IS of a dataset split",
        description="Run the reference's metric network (torchvision Inception-v3, weights from a local "
                    "file: see docs/metrics.md) over a prepared dataset split and save mean, covariance "
                    "and Inception score to an .npz file.")
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--split", default="train", help="split to read (default: train)")
    p.add_argument("--out", required=True, help="output .npz path")
    p.add_argument("--data-dir", help="prepared data root (default: TFDS default; synthetic: in memory)")
    p.add_argument("--resolution", type=int, help="prepared resolution (default: the dataset's first)")
    p.add_argument("--limit", type=int, help="use only the first N images of the split")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception call (default 50)")
    p.add_argument("--weights", help="torchvision inception_v3 .pth (default: $SEMGAN_WEIGHTS/"
                                     "inception_v3_google-0cc3c7bd.pth)")
    p.add_argument("--num-splits", type=int, default=10, help="IS splits (default 10)")
    p.add_argument("--reference-preprocess", action="store_true",
                   help="chest_xray only: histogram equalisation + gamma 0.5 as the reference loader, "
                        "to match a generator trained on such images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_inception_stats)


def run_inception_stats(args) -> int:
    from semgan_jax.data.datasets import load_split
    from semgan_jax.data.pipeline import make_eval_batches
    from semgan_jax.metrics import InceptionMetrics

    image_fn = None
    if args.reference_preprocess:
        if args.dataset != "chest_xray":
            print("error: --reference-preprocess applies to chest_xray only", file=sys.stderr)
            return 1
        from semgan_jax.data.chest_xray import reference_preprocess as image_fn
    try:
        metrics = InceptionMetrics(args.weights, batch_size=args.batch_size)
        source = load_split(args.dataset, args.split, data_dir=args.data_dir, resolution=args.resolution)
        total = len(source) if args.limit is None else min(args.limit, len(source))
        resolution = int(source[0]["image"].shape[0])
        batches = make_eval_batches(source, args.batch_size, image_fn=image_fn)
        stats = metrics.stats(batches, total=total, progress=not args.no_progress, num_splits=args.num_splits)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    stats.meta = {"dataset": args.dataset, "split": args.split, "resolution": resolution,
                  "reference_preprocess": args.reference_preprocess}
    stats.save(args.out)
    print(f"{args.dataset}/{args.split}: {stats.n} images, IS {stats.is_mean:.4f} +/- {stats.is_std:.4f} "
          f"-> {args.out}")
    return 0


def register_fid(subparsers) -> None:
    p = subparsers.add_parser(
        "fid", help="FID / IS of a stage-1 generator against `semgan inception-stats` statistics",
        description="Sample N images from the G_ema weights of the latest stage-1 checkpoint (fresh z and "
                    "noise, as the reference's sample_gema) and compute FID against a stats file (ours, or "
                    "the reference's prepare_inception.py pickle) and the Inception score.")
    p.add_argument("--checkpoint", required=True, help="stage-1 workdir (semgan train-gan --workdir)")
    p.add_argument("--stats", required=True, help="reference statistics (.npz from inception-stats, or .pkl)")
    p.add_argument("--num", type=int, default=50_000, help="generated images (default 50000; the reference's "
                                                           "training loop uses 10000)")
    p.add_argument("--batch-size", type=int, default=50, help="images per sampling / Inception call (default 50)")
    p.add_argument("--weights", help="torchvision inception_v3 .pth (default: $SEMGAN_WEIGHTS/"
                                     "inception_v3_google-0cc3c7bd.pth)")
    p.add_argument("--num-splits", type=int, default=10, help="IS splits (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the result as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_fid)


def run_fid(args) -> int:
    import jax

    from semgan_jax.metrics import InceptionMetrics, generator_sample_fn, load_stats
    from semgan_jax.train.encoder import load_generator

    try:
        reference = load_stats(args.stats)
        metrics = InceptionMetrics(args.weights, batch_size=args.batch_size)
        _, g, g_ema, _ = load_generator(args.checkpoint)
        sample_fn = generator_sample_fn(g, {"params": g_ema})
        result = metrics.fid_is(sample_fn, jax.random.key(args.seed), reference, n=args.num,
                                progress=not args.no_progress, num_splits=args.num_splits)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    result.update(checkpoint=str(args.checkpoint), stats=str(args.stats))
    print(f"FID {result['fid']:.4f}  IS {result['is_mean']:.4f} +/- {result['is_std']:.4f}  ({result['n']} samples)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0
