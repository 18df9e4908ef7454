"""`semgan train-gan` (and the other training commands' shared option handling), and the
supervised baseline's `semgan train-supervised` / `semgan evaluate-supervised`."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs (SEMGAN_JAX_CACHE, default ~/.cache/semgan_jax/xla), so a
    resumed or repeated run skips most of its compile time."""
    import jax

    path = os.environ.get("SEMGAN_JAX_CACHE", str(Path.home() / ".cache" / "semgan_jax" / "xla"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def _add_config_args(p, default_config: str) -> None:
    p.add_argument("--config", help=f"experiment config file (default {default_config}; with --resume, the "
                                    "run's own WORKDIR/config.json)")
    p.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, samples")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --workdir")
    p.set_defaults(default_config=default_config)


def load_run_config(args, overrides: list[str]):
    """Config + `--config.x=y` overrides. The config is --config, else (with --resume) the run's
    WORKDIR/config.json, else the command's default file. Refuses to overwrite a run without
    --resume, and --resume without --config on a workdir holding neither checkpoints nor
    config.json (a mistyped path would otherwise start a new run of the default config)."""
    import json

    import ml_collections

    from semgan_jax.config import apply_overrides, load_config_file

    workdir = Path(args.workdir)
    saved = workdir / "config.json"
    ckpt_dir = workdir / "checkpoints"
    has_checkpoints = ckpt_dir.is_dir() and any(ckpt_dir.iterdir())
    if args.resume and not args.config and not has_checkpoints and not saved.is_file():
        found = "does not exist" if not workdir.exists() else (
            "is not a directory" if not workdir.is_dir() else "holds no run")
        raise FileNotFoundError(
            f"--resume: nothing to resume: {args.workdir} {found} (looked for checkpoints in {ckpt_dir} and the "
            f"run's config in {saved}). Check the path; to start a new run there, drop --resume or pass --config")
    if args.config:
        config = load_config_file(args.config)
    elif args.resume and saved.is_file():
        config = ml_collections.ConfigDict(json.loads(saved.read_text()))
    else:
        config = load_config_file(args.default_config)
    config = apply_overrides(config, overrides)
    if not args.resume and has_checkpoints:
        raise FileExistsError(f"{args.workdir} already holds checkpoints: pass --resume to continue that run, "
                              "or choose a new --workdir")
    return config


def register_train_gan(subparsers) -> None:
    p = subparsers.add_parser(
        "train-gan", help="stage 1: train G, Dr, Dm (semi-supervised GAN)",
        description="Stage 1 of SemanticGAN. Extra arguments --config.FIELD=VALUE override config fields.")
    _add_config_args(p, "experiments/synthetic_32.py")
    p.set_defaults(handler=lambda args, overrides: _run_training("gan", args, overrides), accepts_overrides=True)


def register_train_encoder(subparsers) -> None:
    p = subparsers.add_parser(
        "train-encoder", help="stage 2: train the encoder E against the frozen stage-1 generator",
        description="Stage 2 of SemanticGAN (config field `stage1` names the stage-1 workdir). Extra "
                    "arguments --config.FIELD=VALUE override config fields.")
    _add_config_args(p, "experiments/synthetic_32_encoder.py")
    p.set_defaults(handler=lambda args, overrides: _run_training("encoder", args, overrides), accepts_overrides=True)


def register_train_supervised(subparsers) -> None:
    p = subparsers.add_parser(
        "train-supervised", help="baseline: train a U-Net on the labeled subset alone",
        description="The supervised baseline (docs/baseline.md): a U-Net on the same labeled subset and "
                    "augmentation as SemanticGAN. Extra arguments --config.FIELD=VALUE override config fields.")
    _add_config_args(p, "experiments/synthetic_32_unet.py")
    p.set_defaults(handler=lambda args, overrides: _run_training("supervised", args, overrides),
                   accepts_overrides=True)


def register_evaluate_supervised(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate-supervised", help="mIoU / JSI / DSC of a train-supervised run on a dataset split",
        description="Scores the run's latest checkpoint on a split of its dataset with the metrics of "
                    "`semgan evaluate`; writes JSON and prints a table.")
    p.add_argument("--workdir", required=True, help="train-supervised run directory")
    p.add_argument("--split", default="test", help="split of the run's dataset (e.g. test, test_ood)")
    p.add_argument("--out", help="JSON file for the scores (default WORKDIR/eval_SPLIT.json)")
    p.add_argument("--grid", type=int, default=0, metavar="N",
                   help="also write inputs | predictions | ground truth of the first N examples as a PNG "
                        "beside the JSON (same name, .png)")
    p.add_argument("--limit", type=int, default=0, help="score only the first N examples (0 = all)")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass")
    p.add_argument("--data-dir", help="dataset root, if not the one the run was trained from")
    p.set_defaults(handler=_run_evaluate_supervised)


def _run_evaluate_supervised(args) -> int:
    import json

    from semgan_jax.train.supervised import evaluate

    out = Path(args.out) if args.out else Path(args.workdir) / f"eval_{args.split}.json"
    try:
        result = evaluate(args.workdir, args.split, limit=args.limit, batch_size=args.batch,
                          data_dir=args.data_dir, grid=args.grid, grid_path=out.with_suffix(".png"))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


def _run_training(stage: str, args, overrides: list[str]) -> int:
    try:
        config = load_run_config(args, overrides)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from semgan_jax.parallel import maybe_initialize_distributed

    maybe_initialize_distributed()
    enable_compilation_cache()
    if stage == "gan":
        from semgan_jax.train.gan import train
    elif stage == "supervised":
        from semgan_jax.train.supervised import train
    else:
        from semgan_jax.train.encoder import train
    try:
        train(config, args.workdir, resume=args.resume)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
