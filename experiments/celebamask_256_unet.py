"""Supervised baseline for the paper's face-parts setting: the paper's U-Net (base width 64,
four poolings, 64-1024 channels, GroupNorm(32)) on CelebAMask-HQ at 256 px, 8 classes, batch 16,
AdamW lr 1e-3 (weight decay 1e-4), cosine decay to 1e-5 over the second half of 20k iterations,
CE + soft Dice, random horizontal flips, the same labeled subsets as SemanticGAN
(`data.num_labeled`, `data.label_seed`).

Prepare the data first: `semgan prepare celebamask_hq --manual-dir DIR` (docs/data.md).
Label-limited runs: `--config.data.num_labeled=30` (or 150, 1500).
"""

from semgan_jax.train.supervised import default_config


def get_config():
    return default_config()
