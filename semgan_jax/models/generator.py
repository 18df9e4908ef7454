"""SemanticGAN generator G(w+) -> (image, seg): StyleGAN2 with a segmentation skip branch (NHWC).

Structure (reference `GeneratorSeg`): mapping net (pixel norm + n_mlp equalised dense layers,
lr_mul 0.01) -> synthesis net (constant 4x4 input, two styled convs per resolution, ToRGB and
ToSEG skip outputs upsampled and summed). ToSEG is a modulated 1x1 conv without demodulation plus
a bias; its summed output is returned as raw logits with `seg_dim` channels.

Variables: 'params' = {'mapping', 'synthesis'}; 'noises' = the fixed per-layer noise maps
noise_i of shape (1, r, r, 1), r = 2 ** ((i + 5) // 2), used with randomize_noise=False.
Random streams: 'noise' (per-layer noise when randomize_noise=True and no noise is given) and
'mixing' (inject index when two styles are given without one).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from semgan_jax.models.widths import channels_at, log2_size
from semgan_jax.nn.layers import ConstantInput, EqualDense, FusedLeakyReLU, NoiseInjection, pixel_norm
from semgan_jax.nn.modconv import ModulatedConv
from semgan_jax.nn.upfirdn import upsample_2x


class MappingNetwork(nn.Module):
    """z (N, style_dim) -> w (N, style_dim): pixel norm then n_mlp lrelu EqualDense layers."""
    style_dim: int = 512
    n_mlp: int = 8
    lr_mul: float = 0.01

    @nn.compact
    def __call__(self, z):
        x = pixel_norm(z.astype(jnp.float32))
        for i in range(self.n_mlp):
            x = EqualDense(self.style_dim, lr_mul=self.lr_mul, activation="lrelu", name=f"dense_{i}")(x)
        return x


class StyledConv(nn.Module):
    """Modulated conv -> noise injection -> bias + lrelu. (N, H, W, Cin) -> (N, H', W', features)."""
    features: int
    kernel_size: int = 3
    upsample: bool = False
    blur_kernel: Sequence[int] = (1, 3, 3, 1)
    impl: str = "input_scaling"
    dtype: Any = jnp.float32
    upsample_form: str = "phases"

    @nn.compact
    def __call__(self, x, style, noise):
        x = ModulatedConv(self.features, self.kernel_size, upsample=self.upsample, blur_kernel=self.blur_kernel,
                          impl=self.impl, dtype=self.dtype, upsample_form=self.upsample_form, name="conv")(x, style)
        x = NoiseInjection(name="noise")(x, noise)
        return FusedLeakyReLU(name="activate")(x)


class ToOutput(nn.Module):
    """ToRGB / ToSEG: modulated 1x1 conv (no demodulation) + bias, plus the upsampled previous skip.

    (N, H, W, Cin), style, skip (N, H/2, W/2, features) or None -> (N, H, W, features).
    """
    features: int
    blur_kernel: Sequence[int] = (1, 3, 3, 1)
    impl: str = "input_scaling"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, style, skip=None):
        y = ModulatedConv(self.features, 1, demodulate=False, impl=self.impl, dtype=self.dtype,
                          name="conv")(x, style)
        y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        if skip is not None:
            y = y + upsample_2x(skip, self.blur_kernel)
        return y


def num_noise_layers(size: int) -> int:
    """Styled convs in the synthesis net: 2 * (log2(size) - 2) + 1."""
    return 2 * (log2_size(size) - 2) + 1


def noise_shapes(size: int, batch: int = 1) -> list[tuple[int, int, int, int]]:
    """Shapes (batch, r, r, 1) of the per-layer noise maps, r = 2 ** ((i + 5) // 2)."""
    return [(batch, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), 1) for i in range(num_noise_layers(size))]


class SynthesisNetwork(nn.Module):
    """w+ (N, n_latent, style_dim), noise list -> image (N, size, size, C), seg logits (N, size, size, seg_dim)."""
    size: int
    seg_dim: int = 8
    image_channels: int = 3
    channel_multiplier: int = 2
    channel_base: int | None = None
    channel_max: int = 512
    blur_kernel: Sequence[int] = (1, 3, 3, 1)
    impl: str = "input_scaling"
    dtype: Any = jnp.float32
    upsample_form: str = "phases"

    @nn.compact
    def __call__(self, latent, noise):
        ch = lambda r: channels_at(r, self.channel_multiplier, self.channel_base, self.channel_max)  # noqa: E731
        kw = dict(blur_kernel=self.blur_kernel, impl=self.impl, dtype=self.dtype)
        up = dict(kw, upsample_form=self.upsample_form)
        out = ConstantInput(ch(4), name="input")(latent.shape[0]).astype(self.dtype)
        out = StyledConv(ch(4), name="conv1", **kw)(out, latent[:, 0], noise[0])
        skip_rgb = ToOutput(self.image_channels, name="to_rgb1", **kw)(out, latent[:, 1])
        skip_seg = ToOutput(self.seg_dim, name="to_seg1", **kw)(out, latent[:, 1])
        for j in range(log2_size(self.size) - 2):
            res, i = 2 ** (j + 3), 2 * j + 1
            out = StyledConv(ch(res), upsample=True, name=f"convs_{2 * j}", **up)(out, latent[:, i], noise[i])
            out = StyledConv(ch(res), name=f"convs_{2 * j + 1}", **kw)(out, latent[:, i + 1], noise[i + 1])
            skip_rgb = ToOutput(self.image_channels, name=f"to_rgbs_{j}", **kw)(out, latent[:, i + 2], skip_rgb)
            skip_seg = ToOutput(self.seg_dim, name=f"to_segs_{j}", **kw)(out, latent[:, i + 2], skip_seg)
        return skip_rgb.astype(jnp.float32), skip_seg.astype(jnp.float32)


class Generator(nn.Module):
    """SemanticGAN generator (reference `GeneratorSeg`).

    Attributes mirror the reference: size, style_dim=512, n_mlp=8, seg_dim, image_channels
    (3 = 'RGB', 1 = 'L'), channel_multiplier=2, lr_mlp=0.01, blur_kernel; plus channel_base /
    channel_max (width cap), `impl` (modulated-conv form), `dtype` (compute dtype; params f32) and
    `upsample_form` (the upsampling convs' form, nn.modconv.UPSAMPLE_FORMS: same numbers).
    """
    size: int = 256
    style_dim: int = 512
    n_mlp: int = 8
    seg_dim: int = 8
    image_channels: int = 3
    channel_multiplier: int = 2
    channel_base: int | None = None
    channel_max: int = 512
    lr_mlp: float = 0.01
    blur_kernel: Sequence[int] = (1, 3, 3, 1)
    impl: str = "input_scaling"
    dtype: Any = jnp.float32
    upsample_form: str = "phases"

    @property
    def n_latent(self) -> int:
        """Number of w vectors in w+: 2 * log2(size) - 2."""
        return 2 * log2_size(self.size) - 2

    @property
    def num_layers(self) -> int:
        return num_noise_layers(self.size)

    def setup(self):
        self.mapping = MappingNetwork(self.style_dim, self.n_mlp, self.lr_mlp)
        self.synthesis = SynthesisNetwork(
            self.size, self.seg_dim, self.image_channels, self.channel_multiplier, self.channel_base,
            self.channel_max, self.blur_kernel, self.impl, self.dtype, self.upsample_form)
        self.const_noise = []  # optional: applying with 'params' alone is fine with fresh noise
        if self.is_initializing() or self.has_variable("noises", "noise_0"):
            self.const_noise = [
                self.variable("noises", f"noise_{i}", lambda s=s: jax.random.normal(self.make_rng("params"), s))
                for i, s in enumerate(noise_shapes(self.size))]

    def get_latent(self, z):
        """Mapping network: z (N, style_dim) -> w (N, style_dim)."""
        return self.mapping(z)

    def mean_latent(self, key, n: int = 4096):
        """Mean of w over n random z: (1, style_dim) (reference `mean_latent`)."""
        return jnp.mean(self.mapping(jax.random.normal(key, (n, self.style_dim))), axis=0, keepdims=True)

    def make_noise(self, key, batch: int = 1) -> list[jax.Array]:
        """Fresh per-layer noise maps, shapes `noise_shapes(size, batch)`."""
        keys = jax.random.split(key, self.num_layers)
        return [jax.random.normal(k, s) for k, s in zip(keys, noise_shapes(self.size, batch))]

    def w_plus(self, styles, *, input_is_latent=False, inject_index=None, truncation=1.0,
               truncation_latent=None):
        """Styles -> w+ (N, n_latent, style_dim).

        styles: one array, z or w (N, style_dim) or w+ (N, n_latent, style_dim) with
        input_is_latent; or a pair of (N, style_dim) arrays for style mixing, switching from the
        first to the second at `inject_index` (a traced int is fine; drawn uniformly from
        [1, n_latent) with the 'mixing' rng when None).
        """
        styles = list(styles) if isinstance(styles, (list, tuple)) else [styles]
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"expected 1 or 2 style inputs, got {len(styles)}")
        if not input_is_latent:
            styles = [self.mapping(s) for s in styles]
        if truncation != 1.0:
            if truncation_latent is None:
                raise ValueError("truncation != 1 needs truncation_latent (see mean_latent)")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        n_latent = self.n_latent
        if len(styles) == 1:
            s = styles[0]
            if s.ndim == 3:
                if s.shape[1] != n_latent:
                    raise ValueError(f"w+ has {s.shape[1]} latents, the generator needs {n_latent}")
                return s
            return jnp.broadcast_to(s[:, None, :], (s.shape[0], n_latent, s.shape[-1]))
        if inject_index is None:
            inject_index = jax.random.randint(self.make_rng("mixing"), (), 1, n_latent)
        first = (jnp.arange(n_latent) < inject_index)[None, :, None]
        return jnp.where(first, styles[0][:, None, :], styles[1][:, None, :])

    def __call__(self, styles, *, input_is_latent=False, inject_index=None, truncation=1.0,
                 truncation_latent=None, noise=None, randomize_noise=True, return_latents=False):
        """Generate (image (N, size, size, C) in ~[-1, 1], seg logits (N, size, size, seg_dim)).

        noise: list of per-layer maps (N or 1, r, r, 1); None draws fresh noise from the 'noise'
        rng (randomize_noise=True) or uses the stored noise_i maps (randomize_noise=False).
        return_latents: also return the w+ used, (N, n_latent, style_dim).
        """
        latent = self.w_plus(styles, input_is_latent=input_is_latent, inject_index=inject_index,
                             truncation=truncation, truncation_latent=truncation_latent)
        if self.is_initializing():
            _ = [v.value for v in self.const_noise]
        if noise is None:
            if randomize_noise:
                noise = self.make_noise(self.make_rng("noise"), latent.shape[0])
            elif self.const_noise:
                noise = [v.value for v in self.const_noise]
            else:
                raise ValueError("randomize_noise=False needs the 'noises' collection from init")
        if len(noise) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} noise maps, got {len(noise)}")
        image, seg = self.synthesis(latent, noise)
        return (image, seg, latent) if return_latents else (image, seg)


def init_generator(model: Generator, key, batch: int = 1):
    """Initialise all variables ('params', 'noises') with a dummy z batch (one compiled program)."""
    k_params, k_noise = jax.random.split(key)
    z = jnp.zeros((batch, model.style_dim), jnp.float32)
    return jax.jit(model.init)({"params": k_params, "noise": k_noise}, z)

