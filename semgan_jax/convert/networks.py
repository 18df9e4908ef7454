"""Flax networks, variable templates and key tables of a converted checkpoint, from its config.

A converted checkpoint holds up to five networks, named as in the reference's checkpoints:
  g, g_ema  Generator            {'params', 'noises'}
  d_img     ImageDiscriminator   {'params'}                        (Dr)
  d_seg     MaskDiscriminator    {'params', 'spectral'}            (Dm)
  e         FPNEncoder           {'params', 'batch_stats'}  or  ResEncoder {'params'}
config['model'] is the `model` section of the stage-1 experiment configs and config['encoder']
the `encoder` section of the stage-2 ones; the modules are built by the trainers' own builders
(`train.gan.build_models`, `train.encoder.build_encoder`), so a converted network is exactly
the network those commands train.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from semgan_jax.convert import tables
from semgan_jax.convert.errors import ConversionError

NETWORKS = ("g", "g_ema", "d_img", "d_seg", "e")


def build(name: str, config: dict) -> nn.Module:
    """The Flax module of network `name`."""
    import ml_collections

    from semgan_jax.train import encoder as stage2
    from semgan_jax.train import gan

    model_cfg = ml_collections.ConfigDict(config["model"])
    if name in ("g", "g_ema", "d_img", "d_seg"):
        models = gan.build_models(model_cfg, 0.0, 1, 1)
        return {"g": models.g, "g_ema": models.g, "d_img": models.d_img, "d_seg": models.d_seg}[name]
    if name == "e":
        return stage2.build_encoder(model_cfg, ml_collections.ConfigDict(config["encoder"]))
    raise ConversionError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}")


def input_channels(name: str, config: dict) -> int:
    m = config["model"]
    return m["image_channels"] + (m["seg_dim"] if name == "d_seg" else 0)


def init(name: str, config: dict, seed: int) -> dict[str, Any]:
    """Freshly initialised variables of network `name`, for what a checkpoint lacks. One jitted
    program, drawing with the 'rbg' PRNG: XLA:CPU compiles the dozens of threefry draws of an
    initialisation several times slower (tens of seconds for Dm), and any seeded draw will do."""
    return jax.jit(lambda k: _init(name, config, k))(jax.random.key(seed, impl="rbg"))


def _init(name: str, config: dict, key) -> dict[str, Any]:
    from semgan_jax.models.generator import init_generator

    module = build(name, config)
    if name in ("g", "g_ema"):
        return init_generator(module, key)
    size = config["model"]["size"]
    return module.init(key, jnp.zeros((1, size, size, input_channels(name, config)), jnp.float32))


def template(name: str, config: dict):
    """Shapes and dtypes of network `name`'s variables (jax.ShapeDtypeStruct leaves), no compute."""
    return jax.eval_shape(lambda: _init(name, config, jax.random.key(0)))


def table(name: str, config: dict, variables_template) -> tables.Table:
    """The torch <-> Flax key table of network `name` (generators always with the seg branch)."""
    m = config["model"]
    if name in ("g", "g_ema"):
        return tables.generator_table(m["size"], m["n_mlp"])
    if name == "d_img":
        return tables.image_discriminator_table(m["size"])
    if name == "d_seg":
        return tables.mask_discriminator_table(m["dm_n_layers"], m["dm_num_d"])
    if config["encoder"]["backbone"] == "fpn":
        params = variables_template["params"]
        head_convs = [[sum(k.startswith("convs_") for k in params[f"{group}_styles_{i}"])
                       for i in range(sum(k.startswith(f"{group}_styles_") for k in params))]
                      for group in ("coarse", "medium", "fine")]
        return tables.fpn_encoder_table(head_convs)
    return tables.res_encoder_table(m["size"])
