"""Experiment configs: Python files in experiments/ defining `get_config() -> ConfigDict`, with
command-line overrides `--config.a.b=value` (as flax examples and big_vision use them)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ml_collections


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Import `path` and call its `get_config()`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"semgan_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    return module.get_config()


def _coerce(old, text: str):
    """Parse `text` as the type of the field's current value (None fields take a literal)."""
    if isinstance(old, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(old, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if old is None:
            return text
        raise ValueError(f"cannot parse {text!r}") from None
    if isinstance(old, float) and isinstance(value, int):
        return float(value)
    if old is not None and not isinstance(value, type(old)):
        raise ValueError(f"expected {type(old).__name__}, got {text!r}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Apply `config.a.b=value` / `--config.a.b=value` strings; unknown fields are an error."""
    for item in overrides:
        key, sep, text = item.lstrip("-").partition("=")
        if not sep or not key.startswith("config."):
            raise ValueError(f"override {item!r} is not of the form --config.field=value")
        *parents, leaf = key[len("config."):].split(".")
        node = config
        for name in parents:
            if name not in node:
                raise ValueError(f"override {item!r}: no field {name!r}")
            node = node[name]
        if leaf not in node:
            raise ValueError(f"override {item!r}: no field {leaf!r} (known: {', '.join(sorted(node.keys()))})")
        try:
            with node.ignore_type():
                node[leaf] = _coerce(node[leaf], text)
        except ValueError as err:
            raise ValueError(f"override {item!r}: {err}") from None
    return config
