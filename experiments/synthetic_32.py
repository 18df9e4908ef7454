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
    c.log.update(log_every=10, viz_every=250, n_sample=16, save_every=500, keep=3)
    return c
