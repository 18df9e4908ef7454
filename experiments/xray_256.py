"""The paper's chest X-ray setting: lung masks at 256 px, grey images (image_channels 1, the
reference's `--image_mode L`), binary mask (seg_dim 1). Labeled: JSRT with the SCR masks
(`train` = SCR fold 1); in-domain test = SCR fold 2; out-of-domain: Montgomery and Shenzhen.
Unlabeled images: the builder has no separate pool (the paper adds unlabeled radiographs; see
docs/claims.md), so stage 1 draws its unlabeled stream from `train` as well. Everything else is
the official `train_seg_gan.py` default.

Prepare the data first: `semgan prepare chest_xray --manual-dir DIR --resolution 256` (docs/data.md).
Label-limited runs: `--config.data.num_labeled=N` (0 = all 124 of fold 1).
"""

from semgan_jax.train.gan import default_config


def get_config():
    c = default_config()
    c.data.update(name="chest_xray", resolution=256, unlabeled_split="train", labeled_split="train")
    c.model.update(seg_dim=1, image_channels=1)
    return c
