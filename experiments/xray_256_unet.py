"""Supervised baseline for experiments/xray_256.py: the paper's U-Net on the same labeled JSRT
subsets (grey input, background / lung), scored on test (SCR fold 2) and on the out-of-domain
`montgomery` and `shenzhen` splits with `semgan evaluate-supervised --split montgomery`."""

from semgan_jax.train.supervised import default_config


def get_config():
    c = default_config()
    c.data.update(name="chest_xray", resolution=256)
    return c
