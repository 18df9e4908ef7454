"""`semgan segment` (label maps for image files) and `semgan evaluate` (mIoU / JSI / DSC over a
dataset split), both by generator inversion (`semgan_jax.infer`)."""

from __future__ import annotations

import dataclasses
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

    def __init__(self, checkpoint: str, cfg, use_lpips: str = "auto", batch_size: int = 8, seed: int = 0,
                 perceptual_net: str | None = None):
        import jax

        from semgan_jax import infer

        stage1_train = infer.stage1_config(checkpoint).train
        lambda_dm = infer.dm_weight(cfg.lambda_dm, stage1_train) if cfg.step else 0.0  # 0 steps: E(x) alone
        if cfg.lambda_dm is None and lambda_dm:
            print(f"the stage-1 Dm learnt to reject mismatched pairs: its verdict joins the inversion at weight "
                  f"{lambda_dm:g} (docs/learning.md); --lambda-dm sets it")
        # Dm judges G's masks in the form it saw them in stage 1
        cfg = dataclasses.replace(cfg, lambda_dm=lambda_dm, dm_mask=stage1_train.get("fake_mask", "raw"))
        self.inv, self.variables, self.stage1 = infer.load_inverter(checkpoint, use_lpips, perceptual_net,
                                                                    with_dm=bool(lambda_dm))
        if cfg.lambda_encoder is None:  # the default: depends on whether the perceptual term is on
            cfg = dataclasses.replace(cfg, lambda_encoder=infer.encoder_weight(None, self.inv.lpips is not None))
            if self.inv.lpips is None and not cfg.mean_init:
                print(f"without LPIPS the encoder-consistency weight is {cfg.lambda_encoder:g} (the reference's "
                      "1e-3 assumes the perceptual term; docs/learning.md); --lambda-encoder sets it")
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
                        optimize_noise=not args.no_noises, lambda_dm=args.lambda_dm)


def _add_inversion_args(p) -> None:
    p.add_argument("--checkpoint", required=True, help="train-encoder workdir (or train-gan with --mean-init)")
    p.add_argument("--step", type=int, default=100, help="optimisation steps (reference default 100)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lambda-mse", type=float, default=0.1)
    p.add_argument("--lambda-encoder", type=float, default=None,
                   help="encoder-consistency weight (default: the reference's 1e-3 with LPIPS, "
                        "infer.LAMBDA_ENCODER_WITHOUT_LPIPS without it)")
    p.add_argument("--noise-regularize", type=float, default=1e2)
    p.add_argument("--lambda-dm", type=float, default=None,
                   help="weight of the stage-1 mask discriminator's verdict that G's mask belongs to the input "
                        "image (not in the reference; default: infer.LAMBDA_DM_ALIGNED for a stage-1 run trained "
                        "with train.dm_mismatch, else 0; docs/learning.md)")
    p.add_argument("--mean-init", action="store_true", help="start from the mean latent instead of E(x)")
    p.add_argument("--no-noises", action="store_true", help="do not optimise the noise maps")
    p.add_argument("--lpips", choices=("auto", "on", "off"), default="auto",
                   help="perceptual term: auto = on when the weight files are found")
    p.add_argument("--perceptual-net", choices=("vgg", "alex", "dr"), default=None,
                   help="its feature net (default: the stage-2 config's lpips.net); dr = the stage-1 run's "
                        "discriminator, which needs no weight files (perceptual/dr_distance.py)")
    p.add_argument("--batch", type=int, default=8, help="images inverted together (vmap)")
    p.add_argument("--seed", type=int, default=0)


def _open_inverter(args) -> BatchedInverter | None:
    """The inverter of --checkpoint; None after printing one error line for a missing or wrong run
    directory (no config.json, no checkpoint, a stage-1 run without --mean-init, ...)."""
    from semgan_jax.data.common import printable

    try:
        return BatchedInverter(args.checkpoint, _invert_config(args), args.lpips, args.batch, args.seed,
                               args.perceptual_net)
    except (FileNotFoundError, ValueError) as err:
        print(printable(f"error: {err}"), file=sys.stderr)
        return None


def _add_batch_run_args(p) -> None:
    p.add_argument("--resume", action="store_true",
                   help="keep the results an interrupted run of the same command finished; do the rest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _progress(args, total: int, done: int, desc: str):
    """tqdm bar on stderr counting images (its rate is images/s); `done` of `total` already done."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="img", disable=args.no_progress, file=sys.stderr,
                dynamic_ncols=True)


def register_segment(subparsers) -> None:
    p = subparsers.add_parser("segment", help="label maps for images by generator inversion",
                              description="Writes OUT/mask (integer class PNGs), mask_rgb, recon, overlay "
                                          "(and latent/*.npy with --save-latent), each batch as soon as it "
                                          "is done; --resume skips images whose outputs are all there.")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True)
    p.add_argument("--save-latent", action="store_true")
    _add_inversion_args(p)
    _add_batch_run_args(p)
    p.set_defaults(handler=run_segment)


def register_evaluate(subparsers) -> None:
    from semgan_jax.data.datasets import DATASET_NAMES  # numpy only

    p = subparsers.add_parser("evaluate", help="mIoU / JSI / DSC by generator inversion on a dataset split",
                              description="Segments every image of a split (or --images/--masks folders) "
                                          "and scores it against its mask; writes JSON and prints a table. "
                                          "Per-image results go to OUT's .images.jsonl as they are computed; "
                                          "--resume continues an interrupted run from them.")
    p.add_argument("--dataset", choices=DATASET_NAMES,
                   help="dataset of --split (default: the model's own); another dataset must have the same "
                        "classes and image channels, e.g. metfaces40 for a celebamask_hq model")
    p.add_argument("--split", default="test", help="split of the dataset (e.g. test, test_ood)")
    p.add_argument("--data-dir", help="prepared data root of --dataset (default: the model's data.data_dir for "
                                      "its own dataset, else TFDS's default)")
    p.add_argument("--images", help="folder of images (instead of --split); masks in --masks, same names")
    p.add_argument("--masks", help="folder of integer label PNGs matching --images")
    p.add_argument("--limit", type=int, default=0, help="score only the first N examples (0 = all)")
    p.add_argument("--out", required=True, help="JSON file for the scores")
    p.add_argument("--grid", help="PNG of inputs | predictions | ground truth for the first examples")
    _add_inversion_args(p)
    _add_batch_run_args(p)
    p.set_defaults(handler=run_evaluate)


SEGMENT_OUTPUTS = ("mask_rgb", "recon", "overlay", "mask")  # written in this order: mask/ last


def _segmented(out: Path, stem: str, save_latent: bool) -> bool:
    """Whether an earlier run wrote all outputs of `stem` (mask/ is written last, atomically)."""
    return (out / "mask" / f"{stem}.png").is_file() and (not save_latent or (out / "latent" / f"{stem}.npy").is_file())


def run_segment(args) -> int:
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
    for sub in SEGMENT_OUTPUTS + (("latent",) if args.save_latent else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    earlier = {f for f in files if args.resume and _segmented(out, f.stem, args.save_latent)}
    bar = _progress(args, len(files), len(earlier), "segment")
    t0 = time.perf_counter()
    try:
        for start in range(0, len(files), args.batch):  # batches of the whole list: resumed batches invert alike
            names, images = [], []
            for f in files[start:start + args.batch]:
                if f in earlier:
                    continue
                try:
                    if len(os.fsencode(f.stem + ".png.tmp")) > NAME_MAX:  # viz.save_png writes NAME.tmp first
                        raise ValueError(printable(f"{f}: name too long for its output files (stem over "
                                                     f"{NAME_MAX - 8} bytes)"))
                    images.append(read_image(f, inverter.size, inverter.channels))
                    names.append(f)
                except ValueError as err:
                    bar.write(f"skipped: {err}", file=sys.stderr)
                    failed.append(str(f))
                    bar.update(1)
            if not images:
                continue
            res = inverter(np.stack(images), start)
            labels = viz.seg_to_labels(res["seg"])
            for i, f in enumerate(names):
                stem = f.stem
                rgb = viz.colorize(labels[i], palette)
                viz.save_png(out / "mask_rgb" / f"{stem}.png", rgb)
                viz.save_png(out / "recon" / f"{stem}.png", viz.to_uint8(res["image"][i:i + 1])[0])
                target = viz.to_uint8(images[i][None])[0]
                viz.save_png(out / "overlay" / f"{stem}.png", (0.7 * target + 0.3 * rgb).round().astype(np.uint8))
                if args.save_latent:
                    np.save(out / "latent" / f"{stem}.npy", res["w_plus"][i])
                viz.save_png(out / "mask" / f"{stem}.png", labels[i].astype(np.uint8))  # last: marks it done
            done += len(names)
            bar.update(len(names))
    except KeyboardInterrupt:
        bar.close()
        print(printable(f"interrupted: {done + len(earlier)} of {len(files)} images are in {out}; the same command "
                        "with --resume does the rest"), file=sys.stderr)
        return 130
    bar.close()
    dt = time.perf_counter() - t0
    print(printable(f"segmented {done} images in {dt:.1f} s ({done / max(dt, 1e-9):.2f} images/s) -> {out}"
                    + (f"; {len(earlier)} done earlier (--resume)" if earlier else "")
                    + (f"; {len(failed)} skipped: {', '.join(failed)}" if failed else "")))
    return 0 if done or earlier else 1


def check_dataset(model_info, channels: int, name: str):
    """The DatasetInfo of `name` if a model of `model_info`'s classes taking `channels`-channel
    images can be scored on it: the same class names in the same order and the same channels;
    ValueError saying what differs otherwise."""
    from semgan_jax.data.datasets import get_dataset_info

    info = get_dataset_info(name)
    if info.class_names != model_info.class_names:
        raise ValueError(f"--dataset {name} has the classes {', '.join(info.class_names)}; the model was trained on "
                         f"{model_info.name} ({', '.join(model_info.class_names)}): its label maps cannot be "
                         "scored against these masks")
    if info.channels != channels:
        raise ValueError(f"--dataset {name} has {info.channels}-channel images; the model takes {channels}")
    return info


def _split_examples(inverter, dataset: str | None, split: str, data_dir: str | None):
    """(where, DatasetInfo, count, load(i) -> (name, image float (H, W, C) in [-1, 1], mask int
    (H, W))) of a prepared split, stored at the model's resolution."""
    from semgan_jax.data.datasets import get_dataset_info, load_split

    d = inverter.stage1.data
    dataset = dataset or d.name
    info = check_dataset(get_dataset_info(d.name), inverter.channels, dataset)
    data_dir = data_dir or (d.data_dir if dataset == d.name else None) or None
    source = load_split(dataset, split, data_dir=data_dir, resolution=d.resolution)

    def load(i):
        ex = source[i]
        name = ex["name"].decode() if isinstance(ex["name"], bytes) else str(ex["name"])
        return name, np.asarray(ex["image"], np.float32) / 127.5 - 1.0, np.asarray(ex["mask"], np.int64)

    return f"{dataset}/{split}", info, len(source), load


def _folder_examples(inverter, images: str, masks: str):
    """As _split_examples, for image files and label PNGs of the same stem in `masks`."""
    from semgan_jax.data import common
    from semgan_jax.data.datasets import get_dataset_info

    info = get_dataset_info(inverter.stage1.data.name)
    files = expand_inputs([images])
    missing = [f"{f.stem}.png" for f in files if not (Path(masks) / f"{f.stem}.png").is_file()]
    if missing:
        raise FileNotFoundError(common.printable(f"{masks}: no mask for {len(missing)} image(s) of {images}: "
                                                 f"{', '.join(missing[:5])}"))

    def load(i):
        f = files[i]
        mask = common.read_label_map(Path(masks) / f"{f.stem}.png", info.num_classes)
        return f.stem, read_image(f, inverter.size, inverter.channels), common.resize_mask(mask, inverter.size)

    return images, info, len(files), load


def run_evaluate(args) -> int:
    from semgan_jax import viz
    from semgan_jax.data.common import printable
    from semgan_jax.metrics import SegmentationMetrics, confusion_matrices, report
    from semgan_jax.records import ImageRecords

    if bool(args.images) != bool(args.masks):
        print("error: --images and --masks go together", file=sys.stderr)
        return 2
    if args.images and args.dataset:
        print("error: --dataset names the dataset of --split; --images/--masks score those folders", file=sys.stderr)
        return 2
    inverter = _open_inverter(args)
    if inverter is None:
        return 1
    records_path = Path(args.out).with_suffix(".images.jsonl")
    try:
        where, info, total, load = (_folder_examples(inverter, args.images, args.masks) if args.images
                                    else _split_examples(inverter, args.dataset, args.split, args.data_dir))
        settings = {"checkpoint": str(args.checkpoint), "source": where, "batch": args.batch, "seed": args.seed,
                    "lpips": args.lpips, "invert": dataclasses.asdict(inverter.cfg)}
        if not inverter.cfg.lambda_dm:  # records written before the option keep resuming
            for field in ("lambda_dm", "dm_mask"):
                settings["invert"].pop(field)
        if args.perceptual_net:  # only when given: records written before the flag keep resuming
            settings["perceptual_net"] = args.perceptual_net
        records = ImageRecords(records_path, settings, resume=args.resume)
    except (ValueError, FileNotFoundError) as err:
        print(printable(f"error: {err}"), file=sys.stderr)
        return 1
    total = min(total, args.limit) if args.limit else total
    k = info.num_classes
    # batches of the whole split, so that a resumed batch is inverted exactly as in one run
    batches = [range(s, min(s + args.batch, total)) for s in range(0, total, args.batch)]
    todo = [b for b in batches if not all(i in records.done for i in b)]
    earlier = total - sum(len(b) for b in todo)
    bar = _progress(args, total, earlier, where)
    shown, t0 = [], time.perf_counter()
    try:
        for idx in todo:
            names, images, masks = zip(*(load(i) for i in idx))
            res = inverter(np.stack(images), idx.start)
            pred = viz.seg_to_labels(res["seg"])
            records.append(idx, names, confusion_matrices(pred, np.stack(masks), k))
            if len(shown) < 16:
                shown.append((np.stack(images), pred, np.stack(masks)))
            bar.update(len(idx))
    except (ValueError, FileNotFoundError) as err:
        bar.close()
        print(printable(f"error: {err}\n({len(records.done)} images scored so far are in {records_path}; "
                        "fix the file and rerun with --resume)"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print(printable(f"interrupted: {len(records.done)} of {total} images scored, in {records_path}; the same "
                        "command with --resume does the rest"), file=sys.stderr)
        return 130
    finally:
        records.close()
    bar.close()
    dt = time.perf_counter() - t0
    metrics = SegmentationMetrics(k, info.class_names)
    if total:
        metrics.update_confusion(np.stack([records.done[i] for i in range(total)]))
    result = report(metrics, title=f"{where}: {metrics.num_images} images")
    inverted = total - earlier
    result.update(source=where, checkpoint=str(args.checkpoint), seconds=dt, images_inverted=inverted,
                  images_resumed=earlier, images_per_s=inverted / max(dt, 1e-9), records=str(records_path))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if args.grid and shown:
        images = np.concatenate([s[0] for s in shown])[:16]
        cols = [viz.to_uint8(images), viz.colorize(np.concatenate([s[1] for s in shown])[:16], info.palette),
                viz.colorize(np.concatenate([s[2] for s in shown])[:16], info.palette)]
        viz.save_png(args.grid, viz.grid(cols, ncol=4), scale=viz.grid_scale(images.shape[1]))
    return 0
