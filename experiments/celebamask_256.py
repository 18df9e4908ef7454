"""The paper's face-parts setting with the official `train_seg_gan.py` defaults: 256 px,
batch 16, lr 0.002, channel_multiplier 2, r1 10, path_regularize 2, path_batch_shrink 2,
d_reg_every 16, g_reg_every 4, mixing 0.9, seg_dim 8, lambda_dseg_feat 2, 800k iterations,
full-width networks (style_dim 512, n_mlp 8, Dm ndf 64).

Prepare the data first: `semgan prepare celebamask_hq --manual-dir DIR` (docs/data.md).
Label-limited runs: `--config.data.num_labeled=30` (or 150, 1500).
"""

from semgan_jax.train.gan import default_config


def get_config():
    return default_config()
