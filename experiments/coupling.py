"""How tightly a stage-1 run ties G's masks to G's images, and why not more: three measurements
that need no oracle.

    python experiments/coupling.py RUN [RUN ...] [--n 64] [--json OUT]

1. Chance: the mIoU of each held-out test mask against the *next* image's mask. A segmenter that
   draws some plausible face mask, not this face's, scores this much; mask agreement and
   test mIoU mean something only above it.
2. Layout variety: the same score among G's (and G_ema's) own masks, 256 samples. Above the
   chance of 1 means G's faces vary less in size, place and parts than the real ones (a mask
   that fits every sample fits each one better than chance).
3. Dm's view of alignment: Dm's score (mean of its scales' final maps, as the hinge losses read
   them) of (image, mask) pairs that belong together against the same images with the next
   example's mask and with their own mask flipped left-right, for the labeled pairs Dm trained
   on, held-out test pairs and G's pairs (raw seg logits as Dm sees them in the reference, and
   one-hot). Matched and mismatched pairs scoring alike means Dm does not check alignment, and
   G's seg branch, which Dm's loss reaches alone, is not taught it.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from semgan_jax.data.datasets import load_split
from semgan_jax.data.pipeline import make_eval_batches
from semgan_jax.metrics import SegmentationMetrics
from semgan_jax.train import encoder, gan


def next_mask_iou(masks: np.ndarray, num_classes: int) -> dict:
    """Dataset-wide {'miou', 'iou' (per class)} of each integer mask (N, H, W) against the next one's."""
    m = SegmentationMetrics(num_classes)
    m.update(np.roll(masks, 1, axis=0), masks)
    d = m.result()["dataset"]
    return {"miou": d["miou"], "iou": d["iou"]}


@functools.partial(jax.jit, static_argnums=0)
def _mean_dm_score(models, d_seg, spectral, x):
    feats, _ = gan._dm(models, d_seg, spectral, x)
    return sum(jnp.mean(f[-1], axis=(1, 2, 3)) for f in feats) / len(feats)


def dm_scores(models, state, image, mask) -> np.ndarray:
    """Dm's per-example score of (image, mask) pairs (N, H, W, C) and (N, H, W, seg_dim)."""
    return np.asarray(_mean_dm_score(models, state.d_seg, state.d_seg_spectral, jnp.concatenate([image, mask], -1)))


def alignment_row(models, state, image, mask) -> dict:
    matched = dm_scores(models, state, image, mask)
    shuffled = dm_scores(models, state, image, jnp.roll(mask, 1, axis=0))
    flipped = dm_scores(models, state, image, jnp.flip(mask, axis=2))
    return {"matched": float(matched.mean()), "shuffled": float(shuffled.mean()), "flipped": float(flipped.mean()),
            "matched_above_shuffled": float((matched > shuffled).mean())}


def measure(run: str, n: int) -> dict:
    cfg, models, state = encoder.load_stage1(run)
    k = models.g.seg_dim
    labeled = encoder.first_labeled_examples(cfg.data, k, n)
    test = next(make_eval_batches(load_split(cfg.data.name, "test", data_dir=cfg.data.data_dir or None,
                                             resolution=cfg.data.resolution), n, k))
    variety = {"test masks (chance)": next_mask_iou(np.asarray(test["mask"]), k)}
    align = {"labeled train pairs (Dm's reals)": alignment_row(models, state, labeled["image"], labeled["mask_onehot"]),
             "test pairs (unseen)": alignment_row(models, state, test["image"], test["mask_onehot"])}
    generate = jax.jit(gan.generate, static_argnums=(0, 3, 4))
    for net in ("g", "g_ema"):
        image, seg = generate(models, getattr(state, net), jax.random.key(3), 256, 0.0)
        variety[f"{net} masks"] = next_mask_iou(np.asarray(jnp.argmax(seg, -1)), k)
        align[f"{net} pairs, raw logits"] = alignment_row(models, state, image[:n], seg[:n])
        align[f"{net} pairs, one-hot"] = alignment_row(models, state, image[:n], gan.dm_mask(seg[:n], "hard"))
    return {"run": run, "step": int(state.step), "n": n,
            "next_mask_iou": variety,
            "dm_alignment": align}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="stage-1 run directories")
    p.add_argument("--n", type=int, default=64, help="real / G pairs per Dm row")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    results = []
    for run in args.runs:
        res = measure(run, args.n)
        results.append(res)
        print(f"\n{run} (iteration {res['step']})")
        print(f"{'masks: mIoU against the next mask':36s} {'mIoU':>6s}  per class")
        for name, r in res["next_mask_iou"].items():
            print(f"{name:36s} {r['miou']:6.3f}  {' '.join(f'{x:.2f}' for x in r['iou'])}")
        print(f"{'Dm score of pairs':36s} {'matched':>8s} {'shuffled':>9s} {'flipped':>8s}  matched > shuffled")
        for name, r in res["dm_alignment"].items():
            print(f"{name:36s} {r['matched']:+8.3f} {r['shuffled']:+9.3f} {r['flipped']:+8.3f}  "
                  f"{r['matched_above_shuffled']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
