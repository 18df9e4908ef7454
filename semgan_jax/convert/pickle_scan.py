"""A .pt file checked before anything unpickles it, with the standard library alone (no torch).

A pickle refers to functions and classes by "module.name" (opcodes GLOBAL, INST, STACK_GLOBAL,
and the extension registry's EXT1/2/4) and calls them while it loads: that is how a pickle runs
code. `pickletools.genops` parses the opcodes without executing any, so the names a file would
import can be listed and compared with what torch.save writes for a checkpoint of state dicts
(tensor rebuild functions, storage types, OrderedDict, argparse.Namespace for the args, and
_codecs.encode for bytes). The pickles of a file are: every *.pkl member of a zip archive (the
format of torch.save since 1.6, data.pkl), or the pickles at the start of a raw file (the legacy
torch.save format: five in a row, then the tensor bytes; or one plain pickle).

`check_checkpoint(path)` raises ConversionError saying which of these the file is not: empty,
neither zip nor pickle (random bytes), a damaged zip or pickle, or a pickle naming anything else
(a file that would run code when loaded).
"""

from __future__ import annotations

import os
import pickletools
import re
import zipfile
from pathlib import Path

from semgan_jax.convert.errors import ConversionError

ALLOWED = frozenset({
    "collections.OrderedDict", "argparse.Namespace", "_codecs.encode", "torch.Size", "torch.device",
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
})
STORAGE = re.compile(r"torch\.[A-Za-z0-9]*Storage")  # torch.FloatStorage, torch.BFloat16Storage, ...
LEGACY_PICKLES = 5  # magic number, protocol version, system info, the object, storage keys
LINE_MAX = 1 << 20  # longest text line of a protocol-0 opcode argument read
COMPUTED = "<a name computed while loading>"

_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
            "BINUNICODE8"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


class _Clamped:
    """A binary stream of `size` bytes whose read(n) never asks for more than what is left:
    pickletools reads a length field's worth at once, and a forged length would allocate it."""

    def __init__(self, stream, size: int):
        self.stream, self.size = stream, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.stream.tell())
        return self.stream.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.stream.readline(LINE_MAX)

    def tell(self) -> int:
        return self.stream.tell()


def referenced_names(stream) -> list[str]:
    """The "module.name"s one pickle read from `stream` would import, in order (COMPUTED for a
    STACK_GLOBAL whose strings are not plain pushes or memo reads). ValueError if the bytes are
    not a complete pickle. Only the values of the last pure pushes are tracked: any opcode that
    pops or rearranges the stack makes the top unknown, which can only make a name COMPUTED."""
    names: list[str] = []
    top: list = []  # values of the pushes since the stack was last popped (None: not a string)
    memo: dict = {}
    for op, arg, _ in pickletools.genops(stream):
        kind = op.name
        if kind in ("GLOBAL", "INST"):
            names.append(".".join(arg.split(" ", 1)))
        elif kind == "STACK_GLOBAL":
            known = len(top) >= 2 and all(isinstance(v, str) for v in top[-2:])
            names.append(f"{top[-2]}.{top[-1]}" if known else COMPUTED)
        elif kind.startswith("EXT"):
            names.append(f"<copyreg extension {arg}>")
        if kind in _STRINGS:
            top.append(arg)
        elif kind in _GETS:
            top.append(memo.get(arg))
        elif kind == "MEMOIZE":
            memo[len(memo)] = top[-1] if top else None
        elif kind in _PUTS:
            memo[arg] = top[-1] if top else None
        elif not op.stack_before and len(op.stack_after) == 1:
            top.append(None)
        elif op.stack_before or op.stack_after:
            top = []
    return names


def allowed(name: str) -> bool:
    """Whether torch.save writes `name` for a checkpoint of state dicts and plain arguments."""
    return name in ALLOWED or STORAGE.fullmatch(name) is not None


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".pkl")]
            if not any(m.filename.rsplit("/", 1)[-1] == "data.pkl" for m in members):
                raise ConversionError(f"{path}: not a PyTorch checkpoint: a zip archive without the data.pkl "
                                      "that torch.save writes")
            names = []
            for member in members:
                with archive.open(member) as stream:
                    try:
                        names += referenced_names(_Clamped(stream, member.file_size))
                    except ValueError as err:
                        raise ConversionError(f"{path}: damaged PyTorch checkpoint: {member.filename} in the zip "
                                              f"archive is not a complete pickle ({err})") from None
            return names
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ConversionError(f"{path}: damaged or truncated PyTorch checkpoint: a zip archive that does not "
                              f"read ({err})") from None


def _raw_names(path: Path, head: bytes) -> list[str]:
    names = []
    size = path.stat().st_size
    with open(path, "rb") as f:
        stream = _Clamped(f, size)
        for i in range(LEGACY_PICKLES):
            try:
                names += referenced_names(stream)
            except ValueError as err:
                if i:  # the tensor bytes after the pickles of the legacy format
                    break
                if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO 2..5
                    raise ConversionError(f"{path}: damaged or truncated PyTorch checkpoint: a pickle that "
                                          f"does not parse ({err})") from None
                raise ConversionError(
                    f"{path}: not a PyTorch checkpoint: neither a zip archive (what torch.save writes) nor a "
                    f"pickle (the legacy format); it starts with bytes {head[:8].hex(' ')}") from None
            if f.tell() >= size:
                break
    return names


def check_checkpoint(path: str | os.PathLike) -> None:
    """Raise ConversionError unless every pickle of the file at `path` parses and names only
    what torch.save writes for state dicts (`allowed`); nothing in the file is executed."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ConversionError(f"{path}: empty file (0 bytes), not a PyTorch checkpoint")
    with open(path, "rb") as f:
        head = f.read(8)
    names = _zip_names(path) if head.startswith(b"PK") else _raw_names(path, head)
    refused = list(dict.fromkeys(n for n in names if not allowed(n)))
    if refused:
        shown = ", ".join(f"'{n}'" for n in refused[:3]) + (f" and {len(refused) - 3} more" if len(refused) > 3 else "")
        raise ConversionError(
            f"{path}: refused: loading this file would import and call {shown}: a pickle that runs code when "
            f"it is loaded. Nothing from it was executed; semgan never loads such objects. Checkpoints of "
            f"SemanticGAN / StyleGAN2 hold only tensors, containers, numbers, strings and argparse.Namespace; "
            f"if this is a whole pickled model, load it where you trust it and save its state_dict() instead.")
