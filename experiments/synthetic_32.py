"""Default demo / test config: SemanticGAN stage 1 on the built-in synthetic faces at 32 px.

Narrow networks (<= 64 channels, style_dim 128, 4 mapping layers, Dm ndf 16) and 64 labeled
examples, so that a 2-core CPU learns visible masks and faces within minutes. Losses,
schedules and optimiser settings are the reference's (see `default_config`).
"""

from semgan_jax.train.gan import default_config


def get_config():
    c = default_config()
    c.data.update(name="synthetic", resolution=32, unlabeled_split="train", num_labeled=64,
                  num_workers=0, prefetch=2)
    c.model.update(size=32, style_dim=128, n_mlp=4, seg_dim=6, channel_base=16384, channel_max=64,
                   dm_ndf=16, dm_max_channels=64)
    c.train.iterations = 1500
    # The reference's EMA (half-life 312 iterations, no ramp-up) was made for 800k iterations: after
    # 350 it still holds 46 % of the random initialisation, and G_ema draws colour blobs where G
    # draws faces. StyleGAN2-ADA's ramp-up (half-life 0.05 * step until it reaches 312) fixes that.
    c.train.ema_rampup = 0.05
    # the oracle metrics of G and G_ema (semgan_jax/oracle.py; the oracle is built on first use)
    c.eval.update(oracle=True, every=250, oracle_samples=512)
    c.log.update(log_every=10, viz_every=250, n_sample=16, save_every=500, keep=3)
    return c
