"""`semgan` console entry point (setup.cfg: semgan = semgan_jax.cli:main).

One argparse subcommand per job, each added by a `register_<name>(subparsers)` function listed in
REGISTRARS and run by the handler it sets with `set_defaults(handler=...)`; the handler returns the
exit code. Heavy modules (jax, TFDS, grain) are imported inside handlers so `semgan --help` is fast.
"""

from __future__ import annotations

import argparse
import sys

from semgan_jax.convert.cli import register_convert, register_export
from semgan_jax.oracle import register_oracle
from semgan_jax.perceptual.cli import register_fid, register_inception_stats
from semgan_jax.plot import register_plot
from semgan_jax.segment import register_evaluate, register_segment
from semgan_jax.train.commands import (register_evaluate_supervised, register_train_encoder, register_train_gan,
                                        register_train_supervised)
from semgan_jax.xla_cpu import CONV_LIBRARIES, use_cpu_conv_library


def register_prepare(subparsers) -> None:
    from semgan_jax.data.datasets import DATASET_NAMES  # numpy only

    p = subparsers.add_parser(
        "prepare", help="build a dataset into array_record files (TFDS, no TensorFlow needed)",
        description="Build DATASET from the files downloaded into --manual-dir (see docs/data.md). "
                    "'synthetic' needs no download.")
    p.add_argument("dataset", choices=DATASET_NAMES)
    p.add_argument("--manual-dir", help="folder holding the downloaded files (not for synthetic)")
    p.add_argument("--data-dir", help="output root (default: TFDS default, ~/tensorflow_datasets)")
    p.add_argument("--resolution", type=int, help="stored size R (default: 256; synthetic: 32)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip corrupt/mismatched examples (counted and reported) instead of failing")
    p.add_argument("--threads", type=int, default=4, help="threads decoding and resizing images")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if already prepared")
    p.set_defaults(handler=run_prepare)


def run_prepare(args) -> int:
    from semgan_jax.data import common
    from semgan_jax.data.prepare import prepare

    try:
        result = prepare(args.dataset, manual_dir=args.manual_dir, data_dir=args.data_dir,
                         resolution=args.resolution, skip_bad=args.skip_bad, num_threads=args.threads,
                         overwrite=args.overwrite)
    except common.BadExampleError as err:
        print(f"error: {err}\n(use --skip-bad to skip such examples; nothing was written)", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{result.name} {result.resolution}px -> {result.data_path}")
    for split, size in sorted(result.split_sizes.items()):
        print(f"  {split}: {size} examples")
    for split, errors in sorted(result.skipped.items()):
        print(f"  skipped {len(errors)} bad examples in {split}:")
        for err in errors:
            print(f"    {err}")
    return 0


REGISTRARS = [register_prepare, register_train_gan, register_train_encoder, register_segment, register_evaluate,
              register_convert, register_export, register_inception_stats, register_fid, register_train_supervised,
              register_evaluate_supervised, register_oracle, register_plot]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semgan", description="SemanticGAN in JAX/Flax")
    parser.add_argument("--cpu-convs", choices=CONV_LIBRARIES,
                        help="XLA:CPU convolution library (semgan_jax/xla_cpu.py): eigen is faster for "
                             "full-width networks, ynnpack (JAX's default) for narrow ones")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.cpu_convs:
        use_cpu_conv_library(args.cpu_convs)
    if getattr(args, "accepts_overrides", False):  # training commands: --config.FIELD=VALUE
        return args.handler(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
