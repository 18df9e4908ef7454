"""`semgan segment` (label maps for image files) and `semgan evaluate` (mIoU / JSI / DSC over a
dataset split), both by generator inversion (`semgan_jax.infer`)."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
NAME_MAX = 255  # bytes in a file name (ext4, xfs, btrfs, APFS)


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """An image file -> float32 (size, size, channels) in [-1, 1], decoded as `semgan prepare`
    stores images (grey, RGBA and palette images converted to the model's channels, 16-bit grey
    scaled by its bit depth); other sizes are resized (LANCZOS, as the reference) with a warning.
    Unreadable files raise ValueError (BadExampleError) naming the file."""
    from semgan_jax.data import common

    x = common.read_rgb(path) if channels == 3 else common.read_grey(path)
    if x.shape[:2] != (size, size):
        warnings.warn(common.printable(f"{path}: {x.shape[1]}x{x.shape[0]} resized to the model's {size}x{size}"),
                      stacklevel=2)
        x = common.resize_image(x, size)
    return x.reshape(size, size, channels).astype(np.float32) / 127.5 - 1.0


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given; folders contribute their image files, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


class BatchedInverter:
    """Jitted, vmapped inversion of fixed-size batches (the last one padded)."""

    def __init__(self, checkpoint: str, cfg, use_lpips: str = "auto", batch_size: int = 8, seed: int = 0):
        import jax

        from semgan_jax import infer

        self.inv, self.variables, self.stage1 = infer.load_inverter(checkpoint, use_lpips)
        if self.inv.e is None and not cfg.mean_init:
            raise ValueError(f"{checkpoint} is a stage-1 (train-gan) run with no encoder: pass a train-encoder "
                             "workdir, or --mean-init to start from the mean latent")
        self.cfg, self.batch_size, self.key = cfg, batch_size, jax.random.PRNGKey(seed)
        self._run = infer.jit_invert(self.inv, cfg)

    @property
    def size(self) -> int:
        return self.inv.g.size

    @property
    def channels(self) -> int:
        return self.inv.g.image_channels

    def __call__(self, images: np.ndarray, index: int) -> dict:
        """images (n <= batch_size, H, W, C) -> numpy outputs of `infer.invert` for them."""
        import jax

        n = len(images)
        pad = np.zeros((self.batch_size - n, *images.shape[1:]), np.float32)
        out = self._run(self.variables, np.concatenate([images, pad]), jax.random.fold_in(self.key, index))
        return jax.tree.map(lambda a: np.asarray(a)[:n], jax.device_get(out))


def _invert_config(args):
    from semgan_jax.infer import InvertConfig

    return InvertConfig(step=args.step, lr=args.lr, lambda_mse=args.lambda_mse, lambda_encoder=args.lambda_encoder,
                        noise_regularize=args.noise_regularize, mean_init=args.mean_init,
                        optimize_noise=not args.no_noises)


def _add_inversion_args(p) -> None:
    p.add_argument("--checkpoint", required=True, help="train-encoder workdir (or train-gan with --mean-init)")
    p.add_argument("--step", type=int, default=100, help="optimisation steps (reference default 100)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lambda-mse", type=float, default=0.1)
    p.add_argument("--lambda-encoder", type=float, default=1e-3)
    p.add_argument("--noise-regularize", type=float, default=1e2)
    p.add_argument("--mean-init", action="store_true", help="start from the mean latent instead of E(x)")
    p.add_argument("--no-noises", action="store_true", help="do not optimise the noise maps")
    p.add_argument("--lpips", choices=("auto", "on", "off"), default="auto",
                   help="perceptual term: auto = on when the weight files are found")
    p.add_argument("--batch", type=int, default=8, help="images inverted together (vmap)")
    p.add_argument("--seed", type=int, default=0)


def _open_inverter(args) -> BatchedInverter | None:
    """The inverter of --checkpoint; None after printing one error line for a missing or wrong run
    directory (no config.json, no checkpoint, a stage-1 run without --mean-init, ...)."""
    from semgan_jax.data.common import printable

    try:
        return BatchedInverter(args.checkpoint, _invert_config(args), args.lpips, args.batch, args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(printable(f"error: {err}"), file=sys.stderr)
        return None


def register_segment(subparsers) -> None:
    p = subparsers.add_parser("segment", help="label maps for images by generator inversion",
                              description="Writes OUT/mask (integer class PNGs), mask_rgb, recon, overlay "
                                          "(and latent/*.npy with --save-latent).")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True)
    p.add_argument("--save-latent", action="store_true")
    _add_inversion_args(p)
    p.set_defaults(handler=run_segment)


def register_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="mIoU / JSI / DSC by generator inversion on a dataset split",
                              description="Segments every image of a split (or --images/--masks folders) "
                                          "and scores it against its mask; writes JSON and prints a table.")
    p.add_argument("--split", default="test", help="split of the stage-1 dataset (e.g. test, test_ood)")
    p.add_argument("--images", help="folder of images (instead of --split); masks in --masks, same names")
    p.add_argument("--masks", help="folder of integer label PNGs matching --images")
    p.add_argument("--limit", type=int, default=0, help="score only the first N examples (0 = all)")
    p.add_argument("--out", required=True, help="JSON file for the scores")
    p.add_argument("--grid", help="PNG of inputs | predictions | ground truth for the first examples")
    _add_inversion_args(p)
    p.set_defaults(handler=run_evaluate)


def run_segment(args) -> int:
    from PIL import Image

    from semgan_jax import viz
    from semgan_jax.data.common import printable
    from semgan_jax.data.datasets import get_dataset_info

    files, failed, done = expand_inputs(args.images), [], 0
    by_stem = {}
    for f in files:  # outputs are named by the input's stem
        if f.stem in by_stem:
            print(printable(f"error: {by_stem[f.stem]} and {f} would both write {f.stem}.png; segment them "
                            "in separate runs (--out)"), file=sys.stderr)
            return 2
        by_stem[f.stem] = f
    inverter = _open_inverter(args)
    if inverter is None:
        return 1
    palette = get_dataset_info(inverter.stage1.data.name).palette
    out = Path(args.out)
    for sub in ("mask", "mask_rgb", "recon", "overlay") + (("latent",) if args.save_latent else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for start in range(0, len(files), args.batch):
        names, images = [], []
        for f in files[start:start + args.batch]:
            try:
                if len(os.fsencode(f.stem + ".png.tmp")) > NAME_MAX:  # viz.save_png writes NAME.tmp first
                    raise ValueError(printable(f"{f}: name too long for its output files (stem over "
                                                 f"{NAME_MAX - 8} bytes)"))
                images.append(read_image(f, inverter.size, inverter.channels))
                names.append(f)
            except ValueError as err:
                print(f"skipped: {err}", file=sys.stderr)
                failed.append(str(f))
        if not images:
            continue
        res = inverter(np.stack(images), start)
        labels = viz.seg_to_labels(res["seg"])
        for i, f in enumerate(names):
            stem = f.stem
            Image.fromarray(labels[i].astype(np.uint8)).save(out / "mask" / f"{stem}.png", format="PNG")
            rgb = viz.colorize(labels[i], palette)
            viz.save_png(out / "mask_rgb" / f"{stem}.png", rgb)
            viz.save_png(out / "recon" / f"{stem}.png", viz.to_uint8(res["image"][i:i + 1])[0])
            target = viz.to_uint8(images[i][None])[0]
            viz.save_png(out / "overlay" / f"{stem}.png",
                         (0.7 * target + 0.3 * rgb).round().astype(np.uint8))
            if args.save_latent:
                np.save(out / "latent" / f"{stem}.npy", res["w_plus"][i])
        done += len(names)
    dt = time.perf_counter() - t0
    print(printable(f"segmented {done} images in {dt:.1f} s ({done / max(dt, 1e-9):.2f} images/s) -> {out}"
                    + (f"; {len(failed)} skipped: {', '.join(failed)}" if failed else "")))
    return 0 if done else 1


def _split_examples(inverter, split: str):
    """(images float (N, H, W, C) in [-1, 1], masks int (N, H, W)) of a split of the stage-1 dataset."""
    from semgan_jax.data.datasets import load_split

    d = inverter.stage1.data
    source = load_split(d.name, split, data_dir=d.data_dir or None, resolution=d.resolution)
    for i in range(len(source)):
        ex = source[i]
        yield np.asarray(ex["image"], np.float32) / 127.5 - 1.0, np.asarray(ex["mask"], np.int64)


def _folder_examples(inverter, images: str, masks: str):
    from PIL import Image

    for f in expand_inputs([images]):
        m = Path(masks) / f"{f.stem}.png"
        if not m.is_file():
            raise FileNotFoundError(f"{f}: no mask {m}")
        mask = np.asarray(Image.open(m).resize((inverter.size, inverter.size), Image.NEAREST), np.int64)
        yield read_image(f, inverter.size, inverter.channels), mask


def run_evaluate(args) -> int:
    from semgan_jax import viz
    from semgan_jax.data.datasets import get_dataset_info
    from semgan_jax.metrics import SegmentationMetrics, report

    if bool(args.images) != bool(args.masks):
        print("error: --images and --masks go together", file=sys.stderr)
        return 2
    inverter = _open_inverter(args)
    if inverter is None:
        return 1
    info = get_dataset_info(inverter.stage1.data.name)
    metrics = SegmentationMetrics(len(info.class_names), info.class_names)
    examples = (_folder_examples(inverter, args.images, args.masks) if args.images
                else _split_examples(inverter, args.split))
    shown, batch, index, t0 = [], [], 0, time.perf_counter()

    def flush():
        nonlocal index
        images = np.stack([b[0] for b in batch])
        masks = np.stack([b[1] for b in batch])
        res = inverter(images, index)
        pred = viz.seg_to_labels(res["seg"])
        metrics.update(pred, masks)
        if len(shown) < 16:
            shown.append((images, pred, masks))
        index += len(batch)
        batch.clear()

    for n, ex in enumerate(examples):
        if args.limit and n >= args.limit:
            break
        batch.append(ex)
        if len(batch) == args.batch:
            flush()
    if batch:
        flush()
    dt = time.perf_counter() - t0
    where = args.images or f"{inverter.stage1.data.name}/{args.split}"
    result = report(metrics, title=f"{where}: {metrics.num_images} images")
    result.update(source=where, checkpoint=str(args.checkpoint), seconds=dt,
                  images_per_s=metrics.num_images / max(dt, 1e-9))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if args.grid and shown:
        images = np.concatenate([s[0] for s in shown])[:16]
        cols = [viz.to_uint8(images), viz.colorize(np.concatenate([s[1] for s in shown])[:16], info.palette),
                viz.colorize(np.concatenate([s[2] for s in shown])[:16], info.palette)]
        viz.save_png(args.grid, viz.grid(cols, ncol=4), scale=max(1, 128 // images.shape[1]))
    return 0
