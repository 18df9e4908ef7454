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
    # Adam at lr 0.001 instead of the reference's Ranger: Ranger's RAdam rectification (beta2 0.999)
    # and Lookahead leave a fraction of the step in the first few hundred iterations, which is all a
    # short run has. One stage-1 run, 300 iterations, test mIoU: Ranger 0.364, Adam 1e-3 0.388,
    # Adam 3e-3 0.397 but with latents of mean |w+| 118 (G's w: 0.8), so 1e-3 (docs/learning.md)
    c.train.update(iterations=1000, lr_decay_start=500, lr_decay_end=1000, optimizer="adam", lr=0.001,
                   lambda_unlabel_lpips=0.0, lambda_label_lpips=0.0)
    c.log.update(log_every=10, viz_every=250, n_sample=8, save_every=500, keep=3)
    return c
