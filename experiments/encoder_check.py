"""Does the encoder read its input? E(x)'s masks against one mask for every image.

    python experiments/encoder_check.py STAGE2_RUN [--split test] [--n 64]

Prints, on the first N synthetic images of SPLIT (zero noise maps, no test-time optimisation):
the mIoU of G's masks at w+ = E(x); the mIoU when every image gets the mask of the mean E(x)
(a constant template); and the spread and size of E(x) against G's own w (mapping-network
outputs of 256 z). An encoder that reads its input scores well above the template.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from semgan_jax import infer, viz
from semgan_jax.data.pipeline import image_to_float
from semgan_jax.data.synthetic import synthetic_split
from semgan_jax.metrics import SegmentationMetrics
from semgan_jax.models.generator import noise_shapes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a train-encoder workdir")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=64)
    args = p.parse_args(argv)
    inv, v, _ = infer.load_inverter(args.checkpoint, "off")
    src = synthetic_split(args.split)
    examples = [src[i] for i in range(args.n)]
    x = jnp.asarray(image_to_float(np.stack([e["image"] for e in examples])))
    truth = np.stack([e["mask"] for e in examples])
    w = inv.e.apply(v["e"], x, train=False)

    def miou(latents) -> float:
        noise = [jnp.zeros((latents.shape[0],) + s[1:]) for s in noise_shapes(inv.g.size, 1)]
        seg = inv.g.apply({"params": v["g"]}, latents, input_is_latent=True, noise=noise)[1]
        m = SegmentationMetrics(seg.shape[-1])
        m.update(viz.seg_to_labels(np.asarray(seg)), truth)
        return m.result()["dataset"]["miou"]

    w_g = inv.g.apply({"params": v["g"]}, jax.random.normal(jax.random.PRNGKey(0), (256, inv.g.style_dim)),
                      method=type(inv.g).get_latent)
    print(f"mIoU of E(x)'s masks            {miou(w):.3f}")
    print(f"mIoU of one mask (mean E(x))    {miou(jnp.broadcast_to(w.mean(0, keepdims=True), w.shape)):.3f}")
    print(f"spread over images of E(x)      {float(w.std(0).mean()):.4g}   of G's w {float(w_g.std(0).mean()):.4g}")
    print(f"mean |E(x)|                     {float(jnp.abs(w).mean()):.4g}   of G's w {float(jnp.abs(w_g).mean()):.4g}")


if __name__ == "__main__":
    main()
