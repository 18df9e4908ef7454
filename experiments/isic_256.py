"""The paper's skin-lesion setting: ISIC 2018 task 1 at 256 px, binary mask (seg_dim 1:
one sigmoid channel, as the reference's `--seg_dim 1`), labeled subset of the 2594 training
pairs, unlabeled images from ISIC 2019 (`unlabeled` split); out-of-domain scoring on PH2,
DermIS and DermQuest. Everything else is the official `train_seg_gan.py` default (celebamask_256).

Prepare the data first: `semgan prepare isic2018 --manual-dir DIR --resolution 256` (docs/data.md).
Label-limited runs: `--config.data.num_labeled=N` (0 = all 2594 pairs).
"""

from semgan_jax.train.gan import default_config


def get_config():
    c = default_config()
    c.data.update(name="isic2018", resolution=256, unlabeled_split="unlabeled", labeled_split="train")
    c.model.update(seg_dim=1)
    return c
