"""Stage 2 on the built-in synthetic faces: the encoder for the generator trained by
experiments/synthetic_32.py (`--config.stage1=RUN_DIR`). Narrow FPN encoder (base width 16,
FPN width 64); the reference's losses, clipping and lr schedule (its decay window scaled to
the short run), with Adam in place of Ranger (below). LPIPS weights cannot be downloaded here, so its terms are off by
default: with the files in place (docs/metrics.md) set lambda_*_lpips=10 as the reference.
"""

from semgan_jax.train.encoder import default_config


def get_config():
    c = default_config()
    c.stage1 = "runs/demo/stage1"
    c.data.update(unlabeled_split="train", num_labeled=64, num_workers=0, prefetch=2)
    c.encoder.update(base_width=16, feature_dim=64)
    # Adam at lr 0.003 instead of the reference's Ranger at 0.001: Ranger's RAdam rectification
    # (beta2 0.999) and Lookahead leave ~15 % of the step size in the first 300 iterations, which is
    # all a short run has; on one stage-1 run, 300 iterations: mIoU 0.364 (Ranger 1e-3), 0.340
    # (Ranger 3e-3), 0.388 (Adam 1e-3), 0.397 (Adam 3e-3) on test (docs/learning.md)
    c.train.update(iterations=1000, lr_decay_start=500, lr_decay_end=1000, optimizer="adam", lr=0.003,
                   lambda_unlabel_lpips=0.0, lambda_label_lpips=0.0)
    c.log.update(log_every=10, viz_every=250, n_sample=8, save_every=500, keep=3)
    return c
