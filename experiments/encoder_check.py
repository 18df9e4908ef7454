"""Does the encoder read its input, and what could G's seg branch give? E(x)'s masks against
one mask for every image, and against w+ fitted to the true masks.

    python experiments/encoder_check.py STAGE2_RUN [--split test] [--n 64] [--fit-steps 200]

Prints, on the first N synthetic images of SPLIT (zero noise maps, no test-time optimisation):
the mIoU of G's masks at w+ = E(x); the mIoU when every image gets the mask of the mean E(x)
(a constant template); and the spread and size of E(x) against G's own w (mapping-network
outputs of 256 z). An encoder that reads its input scores well above the template.

With --fit-steps, two fits of w+ from E(x) (Adam, per image, lr 0.01 and 0.05):
- to the TRUE mask (cross-entropy of G's seg logits): the ceiling of G's seg branch, how well
  some w+ reproduces each mask;
- to the image alone (MSE of G's image, no encoder term): what pure image inversion does to the
  masks. If it lowers them, G's images and masks are not tied tightly enough for reconstruction
  to find the right mask (docs/learning.md).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
    p.add_argument("--fit-steps", type=int, default=0, help="also fit w+ to the true masks / the images")
    args = p.parse_args(argv)
    inv, v, _ = infer.load_inverter(args.checkpoint, "off")
    src = synthetic_split(args.split)
    examples = [src[i] for i in range(args.n)]
    x = jnp.asarray(image_to_float(np.stack([e["image"] for e in examples])))
    truth = np.stack([e["mask"] for e in examples])
    w = inv.e.apply(v["e"], x, train=False)

    noise = [jnp.zeros((args.n,) + s[1:]) for s in noise_shapes(inv.g.size, 1)]

    def generate(latents):
        return inv.g.apply({"params": v["g"]}, latents, input_is_latent=True, noise=noise)

    def miou(latents) -> float:
        seg = generate(latents)[1]
        m = SegmentationMetrics(seg.shape[-1])
        m.update(viz.seg_to_labels(np.asarray(seg)), truth)
        return m.result()["dataset"]["miou"]

    w_g = inv.g.apply({"params": v["g"]}, jax.random.normal(jax.random.PRNGKey(0), (256, inv.g.style_dim)),
                      method=type(inv.g).get_latent)
    print(f"mIoU of E(x)'s masks            {miou(w):.3f}")
    print(f"mIoU of one mask (mean E(x))    {miou(jnp.broadcast_to(w.mean(0, keepdims=True), w.shape)):.3f}")
    print(f"spread over images of E(x)      {float(w.std(0).mean()):.4g}   of G's w {float(w_g.std(0).mean()):.4g}")
    print(f"mean |E(x)|                     {float(jnp.abs(w).mean()):.4g}   of G's w {float(jnp.abs(w_g).mean()):.4g}")
    if args.fit_steps:
        onehot = jax.nn.one_hot(truth, inv.g.seg_dim)
        objectives = {
            "true mask": lambda lat: -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(generate(lat)[1]), -1)),
            "image": lambda lat: jnp.mean(jnp.square(generate(lat)[0] - x))}
        for lr in (0.01, 0.05):
            for name, loss in objectives.items():
                fitted = fit(loss, w, lr, args.fit_steps)
                print(f"mIoU, w+ fitted to the {name:<9} (lr {lr:g}, {args.fit_steps} steps)  {miou(fitted):.3f}")


def fit(loss, w0, lr: float, steps: int):
    """w+ after `steps` Adam steps on loss(w+) from w0 (each image's terms touch only its latent)."""
    tx = optax.adam(lr)

    @jax.jit
    def step(w, state):
        updates, state = tx.update(jax.grad(loss)(w), state)
        return optax.apply_updates(w, updates), state

    w, state = w0, tx.init(w0)
    for _ in range(steps):
        w, state = step(w, state)
    return w


if __name__ == "__main__":
    main()
