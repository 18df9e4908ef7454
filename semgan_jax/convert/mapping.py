"""Table-driven conversion of one network: torch state dict (dict[str, np.ndarray]) <-> Flax
variables. Plain NumPy; only reading and writing .pt files needs torch (torch_io.py)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from semgan_jax.convert.errors import ConversionError
from semgan_jax.convert.tables import Path, Table

_LISTED = 8


def _listing(keys: list[str]) -> str:
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def _path(path: Path) -> str:
    return "/".join(path)


def import_state_dict(state_dict: Mapping[str, np.ndarray], table: Table, template,
                      network: str) -> dict[Path, np.ndarray]:
    """Torch state dict -> flat {Flax path: array}, with every key and shape checked.

    template: the network's variables (arrays or jax.ShapeDtypeStruct), giving the expected
    shapes. Raises ConversionError naming missing / unexpected torch keys, or the torch key, its
    shape and the expected one.
    """
    expected = table.torch_keys()
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        parts = [f"missing keys: {_listing(missing)}"] if missing else []
        parts += [f"unexpected keys: {_listing(unexpected)}"] if unexpected else []
        raise ConversionError(f"{network}: the state dict does not fit this network ({'; '.join(parts)})")
    shapes = {path: tuple(leaf.shape) for path, leaf in flatten_dict(template).items()}
    flat = {}
    for t in table.tensors:
        value = np.asarray(state_dict[t.torch_key])
        want = t.layout.torch_shape(shapes[t.flax_path])
        if value.shape != want:
            raise ConversionError(f"{network}: torch key '{t.torch_key}' has shape {value.shape}, expected "
                                  f"{want} (Flax {_path(t.flax_path)} {shapes[t.flax_path]})")
        flat[t.flax_path] = np.ascontiguousarray(t.layout.to_flax(value), dtype=np.float32)
    for c in table.constants:
        value = np.asarray(state_dict[c.torch_key])
        if value.shape != c.value.shape:
            raise ConversionError(f"{network}: torch key '{c.torch_key}' has shape {value.shape}, "
                                  f"expected {c.value.shape}")
        if c.checked and not np.allclose(value, c.value, rtol=0, atol=1e-6):
            raise ConversionError(f"{network}: torch key '{c.torch_key}' holds {value.tolist()}, but the Flax "
                                  f"network is built with {c.value.tolist()} (blur kernel (1, 3, 3, 1))")
    return flat


def assemble(flat: Mapping[Path, np.ndarray], template, network: str) -> dict[str, Any]:
    """Flat {path: array} -> nested variables, checking that every leaf of `template` is there."""
    missing = [_path(p) for p in flatten_dict(template) if p not in flat]
    if missing:
        raise ConversionError(f"{network}: no value for Flax variables {_listing(missing)}")
    return unflatten_dict(dict(flat))


def export_state_dict(variables, table: Table, network: str) -> dict[str, np.ndarray]:
    """Flax variables -> torch state dict (NumPy arrays in torch layouts, plus constant buffers)."""
    flat = flatten_dict(variables)
    missing = [_path(t.flax_path) for t in table.tensors if t.flax_path not in flat]
    if missing:
        raise ConversionError(f"{network}: the variables lack {_listing(missing)}")
    out = {t.torch_key: np.ascontiguousarray(t.layout.to_torch(np.asarray(flat[t.flax_path])))
           for t in table.tensors}
    out.update({c.torch_key: c.value.copy() for c in table.constants})
    return out
