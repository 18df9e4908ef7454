"""Supervised baseline for experiments/isic_256.py: the paper's U-Net on the same labeled ISIC
2018 subsets (background / lesion: K = 2 softmax, from the dataset's registry), scored on test and the PH2 / DermIS /
DermQuest out-of-domain splits with `semgan evaluate-supervised --split ph2`."""

from semgan_jax.train.supervised import default_config


def get_config():
    c = default_config()
    c.data.update(name="isic2018", resolution=256)
    return c
