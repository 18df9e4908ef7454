"""Supervised baseline on the built-in synthetic faces at 32 px: a narrow U-Net (base width 16,
three poolings: 16-32-64 channels, 128 at the 4x4 bottleneck, GroupNorm with 8 groups) trained
on the same 64 labeled examples as experiments/synthetic_32.py, with the same flips. A few
minutes on a 2-core CPU. Label-count sweep: `--config.data.num_labeled=8` (or 32, 128).
"""

from semgan_jax.train.supervised import default_config


def get_config():
    c = default_config()
    c.data.update(name="synthetic", resolution=32, num_labeled=64, num_workers=0, prefetch=2)
    c.model.update(base_width=16, depth=3, norm_groups=8)
    c.train.update(iterations=3000, batch_size=16, lr=1e-3, lr_min=1e-5, lr_decay_start=1500, lr_decay_end=3000)
    c.log.update(log_every=10, viz_every=500, n_sample=16, save_every=1000, keep=3)
    return c
