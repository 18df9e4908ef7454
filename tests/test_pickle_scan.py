"""`semgan convert` checks a .pt file's pickles before anything unpickles them (no torch needed):
files that would run code are refused naming what they would call, and empty, random and damaged
files each get their own message, without torch's advice to load with weights_only=False."""

import argparse
import collections
import io
import os
import pickle
import struct
import sys
import zipfile

import numpy as np
import pytest

from semgan_jax import cli
from semgan_jax.convert import ConversionError
from semgan_jax.convert.pickle_scan import COMPUTED, check_checkpoint, referenced_names

SYSTEM = f"{os.system.__module__}.system"  # posix.system on Linux and macOS


class RunsCommand:
    """Unpickling this would run `touch marker` (it must never happen)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def torch_like_zip(path, obj, protocol=2):
    """The layout torch.save writes (ARCHIVE/data.pkl, version, data/N), made without torch."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(obj, protocol=protocol))
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/data/0", b"\0" * 16)


def legacy_like(path, obj):
    """The legacy torch.save layout: magic number, protocol, system info, the object, storage keys."""
    parts = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, obj, []]
    path.write_bytes(b"".join(pickle.dumps(p, protocol=2) for p in parts) + b"\x07" * 32)


def convert(path, capsys, monkeypatch) -> tuple[int, str]:
    """`semgan convert PATH` with torch unimportable: the check must not need it."""
    monkeypatch.setitem(sys.modules, "torch", None)
    out = path.parent / "run"
    code = cli.main(["convert", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert not out.exists() and "Traceback" not in err and "weights_only" not in err
    return code, err


@pytest.mark.parametrize("layout", ["zip", "plain-2", "plain-5", "legacy"])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(layout, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "created-by-the-pickle"
    payload = {"g_ema": {"w": [0.0, 1.0]}, "args": RunsCommand(marker)}
    path = tmp_path / "evil.pt"
    if layout == "zip":
        torch_like_zip(path, payload)
    elif layout == "legacy":
        legacy_like(path, payload)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(layout[-1])))
    code, err = convert(path, capsys, monkeypatch)
    assert code == 1
    assert f"error: {path}: refused: loading this file would import and call '{SYSTEM}'" in err
    assert "runs code when it is loaded" in err and "Nothing from it was executed" in err
    assert not marker.exists()
    # the same bytes really would have created it: the test's payload is live
    pickle.loads(pickle.dumps(RunsCommand(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind, message", [
    ("empty", "empty file (0 bytes), not a PyTorch checkpoint"),
    ("random", "not a PyTorch checkpoint: neither a zip archive (what torch.save writes) nor a pickle"),
    ("text", "it starts with bytes 68 65 6c 6c 6f"),
    ("truncated_zip", "damaged or truncated PyTorch checkpoint: a zip archive that does not read"),
    ("zip_without_pickle", "a zip archive without the data.pkl that torch.save writes"),
    ("truncated_pickle", "damaged or truncated PyTorch checkpoint: a pickle that does not parse"),
    ("forged_length", "damaged or truncated PyTorch checkpoint: a pickle that does not parse"),
])
def test_files_that_are_no_checkpoint_get_their_own_message(kind, message, tmp_path, capsys, monkeypatch):
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(b"\x01" + np.random.default_rng(0).bytes(255))  # 0x01 is no pickle opcode
    elif kind == "text":
        path.write_text("hello, this is not a checkpoint\n")
    elif kind == "truncated_zip":
        torch_like_zip(tmp_path / "whole.pt", {"g_ema": {}})
        path.write_bytes((tmp_path / "whole.pt").read_bytes()[:60])
    elif kind == "zip_without_pickle":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hi")
    elif kind == "truncated_pickle":
        path.write_bytes(pickle.dumps({"g_ema": {"w": list(range(50))}}, protocol=2)[:40])
    else:  # a BINUNICODE8 claiming 2**62 bytes: read without allocating them
        path.write_bytes(b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b"abc")
    code, err = convert(path, capsys, monkeypatch)
    assert code == 1 and f"error: {path}: " in err and message in err, err


def test_what_torch_save_writes_passes(tmp_path):
    """State dicts, OrderedDict, argparse.Namespace args (with bytes: _codecs.encode), storages."""
    args = argparse.Namespace(size=256, name="celeba-mask", tag=b"\x00\x01", flags=[1, 2], pair=(1, 2))
    obj = {"g_ema": collections.OrderedDict(w=[0.0]), "args": args}
    torch_like_zip(tmp_path / "a.pt", obj)
    legacy_like(tmp_path / "b.pt", obj)
    for name in ("a.pt", "b.pt"):
        check_checkpoint(tmp_path / name)
    names = referenced_names(io.BytesIO(pickle.dumps(obj, protocol=2)))
    assert {"collections.OrderedDict", "argparse.Namespace", "_codecs.encode"} <= set(names)


def test_a_real_torch_checkpoint_passes(tmp_path):
    torch = pytest.importorskip("torch")
    sd = collections.OrderedDict(w=torch.zeros(2), b=torch.ones(2, dtype=torch.float64),
                                 i=torch.zeros(2, dtype=torch.long), h=torch.zeros(2, dtype=torch.bfloat16))
    ckpt = {"g_ema": sd, "p": torch.nn.Parameter(torch.zeros(2)), "args": argparse.Namespace(size=16)}
    torch.save(ckpt, tmp_path / "new.pt")
    torch.save(ckpt, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    for name in ("new.pt", "old.pt"):
        check_checkpoint(tmp_path / name)


def test_stack_global_names_are_resolved_or_refused():
    # protocol 4 names classes with STACK_GLOBAL on two strings, the second time from the memo
    # (the module name of the second function read back from the memo)
    names = referenced_names(io.BytesIO(pickle.dumps([os.system, os.getcwd, collections.OrderedDict()], protocol=4)))
    assert names == [SYSTEM, f"{os.getcwd.__module__}.getcwd", "collections.OrderedDict"]
    # strings that are not plain pushes (here: DUP'd) cannot be named: refused as computed
    crafted = b"\x80\x04\x8c\x02os\x8c\x06system\x32\x93."  # ..., DUP, STACK_GLOBAL
    assert referenced_names(io.BytesIO(crafted)) == [COMPUTED]


def test_refusal_names_a_computed_name(tmp_path):
    path = tmp_path / "computed.pt"
    path.write_bytes(b"\x80\x04\x8c\x05posix\x8c\x06system\x32\x93.")
    with pytest.raises(ConversionError, match="refused.*computed while loading"):
        check_checkpoint(path)
