"""Stage 2 with the official `train_enc.py` defaults (FPN encoder, Ranger lr 1e-3 with the
30k-100k cosine window, clipping 2 / 5, MSE 1 + LPIPS(VGG) 10, CE 1 + Dice 1, batch 16).
`--config.stage1=RUN_DIR` names the celebamask_256 stage-1 run; LPIPS weight files as in
docs/metrics.md.
"""

from semgan_jax.train.encoder import default_config


def get_config():
    return default_config()
