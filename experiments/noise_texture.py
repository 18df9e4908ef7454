"""How much of G_ema's high-frequency content comes from its per-pixel noise inputs?

    python experiments/noise_texture.py STAGE1_RUN [--out grid.png]

Prints each styled conv's learned noise strength and the mean |horizontal pixel difference| (in
[-1, 1] units) of 8 G_ema samples with fresh noise maps and with zero noise maps, beside that of
8 real synthetic images; --out writes the samples (top: with noise, bottom: without) as a PNG.
A G that paints noise instead of structure has a large last-layer strength and loses most of its
high frequency when the noise is zeroed (docs/learning.md, section 3).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from semgan_jax.data.pipeline import image_to_float
from semgan_jax.data.synthetic import generate
from semgan_jax.models.generator import noise_shapes
from semgan_jax.train.encoder import load_generator


def high_frequency(images) -> float:
    return float(jnp.abs(jnp.diff(jnp.asarray(images), axis=2)).mean())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a train-gan workdir")
    p.add_argument("--out", help="PNG of the samples with (top) and without (bottom) noise")
    args = p.parse_args(argv)
    cfg, g, params, _ = load_generator(args.run)
    for name, conv in sorted(params["synthesis"].items()):
        if "noise" in conv:
            print(f"noise strength {name:10s} {float(np.ravel(conv['noise']['weight'])[0]): .4f}")
    z = jax.random.normal(jax.random.PRNGKey(0), (8, g.style_dim))
    with_noise, _ = g.apply({"params": params}, z, rngs={"noise": jax.random.PRNGKey(1)})
    zeros = [jnp.zeros((8,) + s[1:]) for s in noise_shapes(g.size, 1)]
    without, _ = g.apply({"params": params}, z, noise=zeros)
    real = image_to_float(generate(8, g.size, 0)[0])
    print(f"high frequency: with noise {high_frequency(with_noise):.3f}, without {high_frequency(without):.3f}, "
          f"real images {high_frequency(real):.3f}")
    if args.out:
        from PIL import Image

        row = lambda x: np.concatenate(list(np.clip((np.asarray(x) + 1) * 127.5, 0, 255).astype(np.uint8)), 1)  # noqa: E731
        Image.fromarray(np.concatenate([row(with_noise), row(without)], 0)).save(args.out)


if __name__ == "__main__":
    main()
