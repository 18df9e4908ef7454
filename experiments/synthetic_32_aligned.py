"""experiments/synthetic_32.py with a mask discriminator that checks alignment.

Dm also learns to reject real images paired with another labeled example's mask
(`train.dm_mismatch`, the matching-aware discriminator of GAN-CLS) and sees G's masks as one-hot
maps, as it sees the real ones (`train.fake_mask='hard'`). Neither is in the reference, whose Dm
scores a real image with a wrong real mask almost as high as with its own. This Dm tells them
apart on unseen pairs, and `semgan segment` / `evaluate` then add its verdict on (input image,
G's mask) to the inversion (`--lambda-dm`, by default 0.3 for runs trained this way). Three runs
(docs/learning.md section 4): the verdict lifts the inversion over E(x) by +0.056 / +0.043 /
-0.001 in-domain, but this stage 1 gives a weaker encoder than synthetic_32.py's (E(x) 0.404-0.418
against 0.455-0.456), so the demo and the tests keep synthetic_32.py.
"""

from pathlib import Path

from semgan_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("synthetic_32.py"))
    c.train.update(dm_mismatch=1.0, fake_mask="hard")
    return c
