"""Stage 2 for experiments/xray_256.py (`--config.stage1=RUN_DIR`): the official `train_enc.py`
defaults; unlabeled images from `train` like stage 1 (the builder has no separate pool)."""

from semgan_jax.train.encoder import default_config


def get_config():
    c = default_config()
    c.data.update(unlabeled_split="train")
    return c
