"""The reference's channel table, with a cap and a base width (as stylegan2-ada's channel_base /
channel_max): channels(res) = min(channel_max, channel_base // res), channel_base = 16384 ·
channel_multiplier by default, which reproduces 512 up to 32 px, then 256·cm, 128·cm, 64·cm, ..."""

from __future__ import annotations


def channels_at(res: int, channel_multiplier: int = 2, channel_base: int | None = None,
                channel_max: int = 512) -> int:
    """Feature channels of the StyleGAN2 networks at resolution `res` (a power of two >= 4)."""
    base = channel_base if channel_base is not None else 16384 * channel_multiplier
    return max(1, min(channel_max, base // res))


def log2_size(size: int) -> int:
    """log2 of a power-of-two image size >= 8, with a clear error otherwise."""
    log = size.bit_length() - 1
    if size < 8 or (1 << log) != size:
        raise ValueError(f"image size must be a power of two >= 8, got {size}")
    return log
