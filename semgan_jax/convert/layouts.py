"""Array layouts of the reference (torch, NCHW / OIHW) and of the Flax networks (NHWC / HWIO).

Each `Layout` converts one kind of tensor both ways and maps a Flax shape to the torch shape,
so import, export and the shape checks share a single definition per kind:

  VECTOR        (C,)            <-> (C,)             biases, noise strengths, BN, SN u / v
  DENSE         (out, in)       <-> (in, out)        EqualLinear
  CONV          (O, I, kh, kw)  <-> (kh, kw, I, O)   EqualConv2d, nn.Conv2d, SN weight_orig
  MODCONV       (1, O, I, k, k) <-> (k, k, I, O)     ModulatedConv2d
  CHANNEL_BIAS  (1, C, 1, 1)    <-> (C,)             ToRGB / ToSEG bias
  NCHW          (1, C, H, W)    <-> (1, H, W, C)     ConstantInput, noise buffers
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]
    torch_shape: Callable[[Shape], Shape]


VECTOR = Layout("vector", lambda a: a, lambda a: a, lambda s: tuple(s))
DENSE = Layout("dense", lambda a: a.T, lambda a: a.T, lambda s: (s[1], s[0]))
CONV = Layout("conv", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1),
              lambda s: (s[3], s[2], s[0], s[1]))
MODCONV = Layout("modconv", lambda a: a[0].transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)[None],
                 lambda s: (1, s[3], s[2], s[0], s[1]))
CHANNEL_BIAS = Layout("channel_bias", lambda a: a.reshape(-1), lambda a: a.reshape(1, -1, 1, 1),
                      lambda s: (1, s[0], 1, 1))
NCHW = Layout("nchw", lambda a: a.transpose(0, 2, 3, 1), lambda a: a.transpose(0, 3, 1, 2),
              lambda s: (s[0], s[3], s[1], s[2]))
