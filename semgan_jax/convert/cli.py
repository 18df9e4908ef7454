"""`semgan convert` and `semgan export` (registered in semgan_jax/cli.py)."""

from __future__ import annotations

import sys


def register_convert(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert an official PyTorch checkpoint into a run directory",
        description="Convert a checkpoint of the official SemanticGAN code (train_seg_gan.py: g, g_ema, d_img, "
                    "d_seg, args; train_enc.py: g_ema, e) or of rosinality's StyleGAN2 (g_ema [, g, d]; the seg "
                    "branch is freshly initialised) into DIR, a run directory that train-gan --resume, "
                    "train-encoder (config stage1=DIR) and segment / evaluate (--checkpoint DIR) read. The .pt "
                    "file is read with torch's restricted unpickler (needs the [torch] extra); nothing in it is "
                    "executed. See docs/convert.md.")
    p.add_argument("checkpoint", help="the .pt file")
    p.add_argument("--out", required=True, metavar="DIR", help="output run directory")
    p.add_argument("--config", metavar="FILE",
                   help="stage-1 experiment config the run directory starts from (its model section is replaced "
                        "by the checkpoint's); default: the train_seg_gan.py defaults and the checkpoint's args")
    p.add_argument("--encoder-config", metavar="FILE",
                   help="train_enc.py checkpoints: stage-2 experiment config to start from (default: defaults)")
    p.add_argument("--seg-dim", type=int,
                   help="StyleGAN2 checkpoints only: classes of the new seg branch (default 8)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of what the checkpoint lacks (new seg branch, discriminators, PRNG state)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.set_defaults(handler=run_convert)


def run_convert(args) -> int:
    from semgan_jax.config import load_config_file
    from semgan_jax.convert import ConversionError, convert_file, write_workdir

    try:
        s1_base = load_config_file(args.config) if args.config else None
        enc_base = load_config_file(args.encoder_config) if args.encoder_config else None
        config, variables = convert_file(args.checkpoint, seg_dim=args.seg_dim, seed=args.seed)
        out = write_workdir(args.out, config, variables, stage1_config=s1_base, encoder_config=enc_base,
                            seed=args.seed, overwrite=args.overwrite, source_file=str(args.checkpoint))
    except (ConversionError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    m = config["model"]
    enc = f", encoder {config['encoder']['backbone']}" if "encoder" in config else ""
    print(f"{config['source']}: {', '.join(config['networks'])} ({m['size']} px, channel_multiplier "
          f"{m['channel_multiplier']}, seg_dim {m['seg_dim']}, {m['image_channels']} image channels{enc}) -> {out}")
    if "encoder" in config:
        print(f"  segment:        semgan segment --checkpoint {out} IMAGES...")
        print(f"  train-encoder:  semgan train-encoder --workdir {out} --resume")
    else:
        print(f"  resume:  semgan train-gan --workdir {out} --resume")
    return 0


def register_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a run directory's networks as an official PyTorch checkpoint",
        description="Write the latest checkpoint of DIR (a train-gan or train-encoder run directory, or one "
                    "written by `semgan convert`) as a .pt file the official code loads: train_seg_gan.py's "
                    "{g, g_ema, d_img, d_seg, args, fresh Adam states} for a stage-1 run, train_enc.py's "
                    "{g_ema, e} for a stage-2 run. Needs the [torch] extra and reference-sized networks.")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--to-torch", required=True, metavar="OUT.pt", help="the .pt file to write")
    p.set_defaults(handler=run_export)


def run_export(args) -> int:
    from semgan_jax.convert import ConversionError, export_file, read_workdir

    try:
        config, variables = read_workdir(args.directory)
        export_file(config, variables, args.to_torch)
    except (ConversionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{', '.join(config['networks'])} -> {args.to_torch}")
    return 0
