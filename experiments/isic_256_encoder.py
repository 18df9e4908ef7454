"""Stage 2 for experiments/isic_256.py (`--config.stage1=RUN_DIR`): the official `train_enc.py`
defaults, as celebamask_256_encoder.py; the binary mask uses the soft BCE (tau 0.3) + Dice
terms, chosen from the stage-1 seg_dim 1."""

from semgan_jax.train.encoder import default_config


def get_config():
    return default_config()
