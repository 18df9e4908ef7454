"""Key tables: which torch state-dict key holds which Flax variable, in which layout.

One table per network and configuration, read in both directions by `mapping.py` (import and
export), so the two cannot drift apart. A table lists
  - `Tensor`s: torch key <-> Flax path (collection, module..., leaf) + `Layout`; Flax 'params'
    are torch parameters, every other collection ('noises', 'spectral', 'batch_stats') holds
    torch buffers;
  - `Constant`s: torch buffers with no Flax counterpart: the FIR kernels of Blur / Upsample
    (checked on import, since the Flax networks hard-wire them) and BatchNorm's
    num_batches_tracked (ignored on import, written as 0 on export; unused with momentum 0.1).

Torch names follow the official code (models/stylegan2_seg.py, models/utils.py,
models/encoder_model.py) and rosinality's StyleGAN2 (model.py), which shares the generator's
names without the to_seg* modules.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from semgan_jax.convert.layouts import CHANNEL_BIAS, CONV, DENSE, MODCONV, NCHW, VECTOR, Layout
from semgan_jax.models.generator import num_noise_layers

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Tensor:
    torch_key: str
    flax_path: Path
    layout: Layout

    @property
    def is_parameter(self) -> bool:
        return self.flax_path[0] == "params"


@dataclasses.dataclass(frozen=True)
class Constant:
    torch_key: str
    value: np.ndarray
    checked: bool


@dataclasses.dataclass(frozen=True)
class Table:
    tensors: tuple[Tensor, ...]
    constants: tuple[Constant, ...]

    def torch_keys(self) -> set[str]:
        return {t.torch_key for t in self.tensors} | {c.torch_key for c in self.constants}


class _Builder:
    def __init__(self):
        self.tensors: list[Tensor] = []
        self.constants: list[Constant] = []

    def tensor(self, torch_key: str, flax_path: Path, layout: Layout):
        self.tensors.append(Tensor(torch_key, flax_path, layout))

    def constant(self, torch_key: str, value: np.ndarray, checked: bool = True):
        self.constants.append(Constant(torch_key, value, checked))

    def table(self) -> Table:
        return Table(tuple(self.tensors), tuple(self.constants))


def fir_kernel(blur_kernel: Sequence[int], gain: float = 1.0) -> np.ndarray:
    """The reference's `make_kernel(k) * gain`: outer product normalised to sum 1, (k, k) float32."""
    k = np.asarray(blur_kernel, np.float32)
    k2 = np.outer(k, k)
    return (k2 / k2.sum() * gain).astype(np.float32)


def _log2(size: int) -> int:
    return int(math.log2(size))


# ---- shared pieces --------------------------------------------------------------------------

def _dense(b: _Builder, tk: str, fp: Path):
    """EqualLinear `tk` <-> EqualDense at params/fp."""
    b.tensor(f"{tk}.weight", ("params", *fp, "weight"), DENSE)
    b.tensor(f"{tk}.bias", ("params", *fp, "bias"), VECTOR)


def _conv2d(b: _Builder, tk: str, fp: Path, bias: bool = True):
    """nn.Conv2d `tk` <-> Conv2d at params/fp."""
    b.tensor(f"{tk}.weight", ("params", *fp, "weight"), CONV)
    if bias:
        b.tensor(f"{tk}.bias", ("params", *fp, "bias"), VECTOR)


def _modconv(b: _Builder, tk: str, fp: Path):
    b.tensor(f"{tk}.weight", ("params", *fp, "weight"), MODCONV)
    _dense(b, f"{tk}.modulation", (*fp, "modulation"))


def _conv_layer(b: _Builder, tk: str, fp: Path, blur_kernel, downsample=False, activate=True):
    """ConvLayer (nn.Sequential: [Blur], EqualConv2d, [FusedLeakyReLU]); without activation the
    reference's ConvLayers here have no bias (ResBlock.skip)."""
    i = 0
    if downsample:
        b.constant(f"{tk}.0.kernel", fir_kernel(blur_kernel))
        i = 1
    b.tensor(f"{tk}.{i}.weight", ("params", *fp, "conv", "weight"), CONV)
    if activate:
        b.tensor(f"{tk}.{i + 1}.bias", ("params", *fp, "act", "bias"), VECTOR)


def _residual_trunk(b: _Builder, size: int, blur_kernel, fp: Path = ("trunk",)):
    """Discriminator / ResEncoder body: convs.0, ResBlocks convs.1.., final_conv."""
    _conv_layer(b, "convs.0", (*fp, "convs_0"), blur_kernel)
    for k in range(1, _log2(size) - 1):
        tk, bp = f"convs.{k}", (*fp, f"convs_{k}")
        _conv_layer(b, f"{tk}.conv1", (*bp, "conv1"), blur_kernel)
        _conv_layer(b, f"{tk}.conv2", (*bp, "conv2"), blur_kernel, downsample=True)
        _conv_layer(b, f"{tk}.skip", (*bp, "skip"), blur_kernel, downsample=True, activate=False)
    _conv_layer(b, "final_conv", (*fp, "final_conv"), blur_kernel)


# ---- networks -------------------------------------------------------------------------------

def generator_table(size: int, n_mlp: int = 8, seg: bool = True,
                    blur_kernel: Sequence[int] = (1, 3, 3, 1)) -> Table:
    """GeneratorSeg (seg=True) or rosinality's StyleGAN2 Generator (seg=False)."""
    b = _Builder()
    for i in range(n_mlp):
        _dense(b, f"style.{i + 1}", ("mapping", f"dense_{i}"))
    syn = ("synthesis",)
    b.tensor("input.input", ("params", *syn, "input", "input"), NCHW)
    up_kernel = fir_kernel(blur_kernel, 4.0)

    def styled(tk: str, name: str, upsample: bool):
        _modconv(b, f"{tk}.conv", (*syn, name, "conv"))
        if upsample:
            b.constant(f"{tk}.conv.blur.kernel", up_kernel)
        b.tensor(f"{tk}.noise.weight", ("params", *syn, name, "noise", "weight"), VECTOR)
        b.tensor(f"{tk}.activate.bias", ("params", *syn, name, "activate", "bias"), VECTOR)

    def to_output(tk: str, name: str, upsample: bool):
        _modconv(b, f"{tk}.conv", (*syn, name, "conv"))
        b.tensor(f"{tk}.bias", ("params", *syn, name, "bias"), CHANNEL_BIAS)
        if upsample:
            b.constant(f"{tk}.upsample.kernel", up_kernel)

    styled("conv1", "conv1", False)
    to_output("to_rgb1", "to_rgb1", False)
    if seg:
        to_output("to_seg1", "to_seg1", False)
    for j in range(_log2(size) - 2):
        styled(f"convs.{2 * j}", f"convs_{2 * j}", True)
        styled(f"convs.{2 * j + 1}", f"convs_{2 * j + 1}", False)
        to_output(f"to_rgbs.{j}", f"to_rgbs_{j}", True)
        if seg:
            to_output(f"to_segs.{j}", f"to_segs_{j}", True)
    for i in range(num_noise_layers(size)):
        b.tensor(f"noises.noise_{i}", ("noises", f"noise_{i}"), NCHW)
    return b.table()


def image_discriminator_table(size: int, blur_kernel: Sequence[int] = (1, 3, 3, 1)) -> Table:
    """Discriminator (Dr; also rosinality's StyleGAN2 discriminator)."""
    b = _Builder()
    _residual_trunk(b, size, blur_kernel)
    _dense(b, "final_linear.0", ("final_linear_0",))
    _dense(b, "final_linear.1", ("final_linear_1",))
    return b.table()


def mask_discriminator_table(n_layers: int = 3, num_d: int = 3) -> Table:
    """MultiscaleDiscriminator(getIntermFeat=True) (Dm): scale{s}_layer{n} <-> scale{s}/model{n}.

    Layer 0 and the last are plain convs (Sequential index 0); layers 1..n_layers are
    Sequential(Sequential(spectral-norm conv, InstanceNorm), LeakyReLU), hence `.0.0.`.
    """
    b = _Builder()
    for s in range(num_d):
        fp = (f"scale{s}",)
        _conv2d(b, f"scale{s}_layer0.0", (*fp, "model0"))
        for n in range(1, n_layers + 1):
            tk, mp = f"scale{s}_layer{n}.0.0", (*fp, f"model{n}")
            b.tensor(f"{tk}.weight_orig", ("params", *mp, "weight"), CONV)
            b.tensor(f"{tk}.weight_u", ("spectral", *mp, "u"), VECTOR)
            b.tensor(f"{tk}.weight_v", ("spectral", *mp, "v"), VECTOR)
        _conv2d(b, f"scale{s}_layer{n_layers + 1}.0", (*fp, f"model{n_layers + 1}"))
    return b.table()


def _batch_norm(b: _Builder, tk: str, fp: Path):
    b.tensor(f"{tk}.weight", ("params", *fp, "scale"), VECTOR)
    b.tensor(f"{tk}.bias", ("params", *fp, "bias"), VECTOR)
    b.tensor(f"{tk}.running_mean", ("batch_stats", *fp, "mean"), VECTOR)
    b.tensor(f"{tk}.running_var", ("batch_stats", *fp, "var"), VECTOR)
    b.constant(f"{tk}.num_batches_tracked", np.zeros((), np.int64), checked=False)


def fpn_encoder_table(head_convs: Sequence[Sequence[int]],
                      num_blocks: Sequence[int] = (3, 4, 6, 3)) -> Table:
    """FPNEncoder. head_convs: per group (coarse, medium, fine) the conv count of each head,
    read from the Flax template (`FPNEncoder` decides head counts and depths)."""
    b = _Builder()
    fpn = ("fpn",)
    _conv2d(b, "FPN_module.conv1", (*fpn, "conv1"), bias=False)
    _batch_norm(b, "FPN_module.bn1", (*fpn, "bn1"))
    for li, n in enumerate(num_blocks):
        for j in range(n):
            tk, bp = f"FPN_module.layer{li + 1}.{j}", (*fpn, f"layer{li + 1}_{j}")
            for c in (1, 2, 3):
                _conv2d(b, f"{tk}.conv{c}", (*bp, f"conv{c}"), bias=False)
                _batch_norm(b, f"{tk}.bn{c}", (*bp, f"bn{c}"))
            if j == 0:  # first block of each stage changes width or stride: projection shortcut
                _conv2d(b, f"{tk}.shortcut.0", (*bp, "shortcut_conv"), bias=False)
                _batch_norm(b, f"{tk}.shortcut.1", (*bp, "shortcut_bn"))
    for name in ("toplayer", "smooth1", "smooth2", "smooth3", "latlayer1", "latlayer2", "latlayer3"):
        _conv2d(b, f"FPN_module.{name}", (*fpn, name))
    # the reference spells the coarse heads "course_styles"; its convs Sequential interleaves
    # LeakyReLUs, so conv k is at index 2k
    for torch_name, flax_name, convs in zip(("course", "medium", "fine"), ("coarse", "medium", "fine"),
                                            head_convs):
        for i, n_convs in enumerate(convs):
            tk, hp = f"{torch_name}_styles.{i}", (f"{flax_name}_styles_{i}",)
            for k in range(n_convs):
                _conv2d(b, f"{tk}.convs.{2 * k}", (*hp, f"convs_{k}"))
            _dense(b, f"{tk}.linear", (*hp, "linear"))
    return b.table()


def res_encoder_table(size: int, blur_kernel: Sequence[int] = (1, 3, 3, 1)) -> Table:
    """ResEncoder: the discriminator trunk + final_linear to n_latent * style_dim."""
    b = _Builder()
    _residual_trunk(b, size, blur_kernel)
    _dense(b, "final_linear", ("final_linear",))
    return b.table()
