"""The demo's stage 1: experiments/synthetic_32.py with a mask discriminator that checks alignment.

Dm also learns to reject real images paired with another labeled example's mask
(`train.dm_mismatch`, the matching-aware discriminator of GAN-CLS) and sees G's masks as one-hot
maps, as it sees the real ones (`train.fake_mask='hard'`). Neither is in the reference, whose Dm
scores a real image with a wrong real mask almost as high as with its own. This Dm tells them
apart on unseen pairs, and `semgan segment` / `evaluate` then add its verdict on (input image,
G's mask) to the inversion (`--lambda-dm`, by default 0.3 for runs trained this way): on one
stage-1 run, test mIoU 0.387 -> 0.467 against the inversion without it, 0.411 for E(x) alone
(docs/learning.md section 4). The tests and the recipe ablation keep synthetic_32.py.
"""

from pathlib import Path

from semgan_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("synthetic_32.py"))
    c.train.update(dm_mismatch=1.0, fake_mask="hard")
    return c
