"""Input robustness (issue 11, item 4), property-based: hostile bytes, image modes, sizes and file
names for `semgan prepare` and `semgan segment`, hostile .pt files for `semgan convert`. Each input
is read correctly or refused with an error naming the file (and, for checkpoints, the torch key
or argument); a run never dies of a traceback.

Nothing here compiles with JAX: `segment` runs with a stand-in for the inverter (the real
inversion is tested in test_encoder_infer.py) and the converter reuses network templates between
examples. CLI output goes through UTF-8 streams as on an en_US.UTF-8 terminal: stdout strict
(printing an undecodable file name unescaped raises), stderr with backslash escapes.
"""

import argparse
import contextlib
import functools
import io
import json
import os
import pickle
import re
import struct
import tempfile
import threading
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from semgan_jax import cli, segment
from semgan_jax.data import common, datasets
from semgan_jax.data.common import BadExampleError, printable
from test_convert import load_case
from test_data_builders import _assert_nothing_finished, _binary, _save


def fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """cli.main(argv) -> (exit code, stdout, stderr), printed as to an en_US.UTF-8 terminal."""
    streams = [io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=e) for e in ("strict", "backslashreplace")]
    with contextlib.redirect_stdout(streams[0]), contextlib.redirect_stderr(streams[1]):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
    for s in streams:
        s.flush()
    return code, *(s.buffer.getvalue().decode("utf-8") for s in streams)


def assert_clean_error(code: int, err: str, path) -> str:
    """A failed command: exit code 1, 'error: PATH: PROBLEM' on stderr (on one line unless the file
    name holds a newline), no traceback. Returns PROBLEM."""
    assert code == 1, err
    assert "Traceback" not in err
    head = f"error: {printable(str(path))}: "
    found = re.search(r"(?:^|[\r\n])" + re.escape(head) + r"(.*)", err)
    assert found, err
    return found.group(1)


# ---- file names ---------------------------------------------------------------------------------

NAME_MAX = 255  # bytes in a file name (ext4, tmpfs)
SPECIAL_NAMES = ["-rf", "--out=x", " spaced  name ", "quo'te\"s", "new\nline", "tab\there", "ünïcødé 画像",
                 "*?[glob]", "$(x)`y`", "back\\slash", "\u202eRTL", "²", ".", "..", ".hidden", "1" * 300, "x" * 300,
                 "é" * 200]


def fit(name: str, max_bytes: int) -> str:
    """`name` cut to max_bytes bytes (a cut inside a UTF-8 sequence leaves undecodable bytes)."""
    return os.fsdecode(os.fsencode(name)[:max_bytes])


def hostile_names(max_bytes: int):
    """File name stems of at most max_bytes bytes: unicode, spaces, leading dashes, quotes,
    newlines, non-UTF-8 bytes, names at the file system's length limit."""
    return st.one_of(
        st.sampled_from(SPECIAL_NAMES),
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="/\x00"), min_size=1, max_size=24),
        st.binary(min_size=1, max_size=24).map(lambda b: os.fsdecode(b.replace(b"/", b"_").replace(b"\0", b"_"))),
    ).map(lambda name: fit(name, max_bytes))


# ---- image bytes --------------------------------------------------------------------------------

MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F")
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF\0\0\0\0WEBPVP8 "]


def make_image(mode: str, w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 4096, (h, w), dtype=np.uint16))  # 12-bit data, as X-rays
    if mode == "I":
        return Image.fromarray(rng.integers(-10, 70000, (h, w), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.normal(0, 100, (h, w)).astype(np.float32))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _savable() -> list[tuple[str, str]]:
    out = []
    for fmt in common.IMAGE_FORMATS:
        for mode in MODES:
            with contextlib.suppress(OSError, ValueError, KeyError):
                encode(make_image(mode, 2, 2), fmt)
                out.append((fmt, mode))
    return out


SAVABLE = _savable()


@st.composite
def valid_images(draw, max_side: int = 40):
    """(format, mode, (w, h), seed, file bytes) of a decodable image of any savable mode and size."""
    fmt, mode = draw(st.sampled_from(SAVABLE))
    w, h, seed = draw(st.integers(1, max_side)), draw(st.integers(1, max_side)), draw(st.integers(0, 2**16))
    return fmt, mode, (w, h), seed, encode(make_image(mode, w, h, seed), fmt)


@st.composite
def damaged_images(draw):
    """Bytes that are no longer, or never were, a valid image."""
    kind = draw(st.sampled_from(["random", "magic", "truncated", "flipped"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "magic":
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=300))
    data = draw(valid_images())[-1]
    if kind == "truncated":
        return data[:draw(st.integers(0, len(data) - 1))]
    flipped = bytearray(data)
    for i in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4)):
        flipped[i] = draw(st.integers(0, 255))
    return bytes(flipped)


def png_header(w: int, h: int) -> bytes:
    """A PNG declaring a w x h RGB image that holds almost no pixel data."""
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


PNG_8PX = encode(make_image("RGB", 8, 8), "PNG")
JPEG_8PX = encode(make_image("RGB", 8, 8), "JPEG")
SEGMENT_SIZE = 16
READERS = {"rgb": common.read_rgb, "grey": common.read_grey, "binary": common.read_binary_mask,
           "labels": lambda p: common.read_label_map(p, 8)}


def read_all(path: Path) -> dict:
    """Every reader `prepare` and `segment` use, on `path`: {reader: array or the error}. Arrays
    are uint8 (prepare) / float32 in [-1, 1] (segment) of consistent shapes; errors are
    BadExampleError / ValueError naming the file; anything else fails the test."""
    shown = printable(str(path))
    results = {}
    for name, reader in READERS.items():
        try:
            results[name] = reader(path)
        except BadExampleError as err:
            assert err.path == str(path) and str(err).startswith(f"{shown}: "), str(err)
            results[name] = err
    arrays = {k: v for k, v in results.items() if isinstance(v, np.ndarray)}
    assert all(a.dtype == np.uint8 for a in arrays.values())
    assert all(a.ndim == (3 if k == "rgb" else 2) for k, a in arrays.items())
    assert len({a.shape[:2] for a in arrays.values()}) <= 1
    if "rgb" in arrays:
        assert arrays["rgb"].shape[2] == 3
    for channels, source in ((3, "rgb"), (1, "grey")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                x = segment.read_image(path, SEGMENT_SIZE, channels)
            except ValueError as err:
                assert str(err).startswith(f"{shown}: ") and not isinstance(results[source], np.ndarray), str(err)
                continue
        # segment decodes as prepare does, then resizes to the model's size with a warning
        assert isinstance(results[source], np.ndarray)
        assert x.shape == (SEGMENT_SIZE, SEGMENT_SIZE, channels) and x.dtype == np.float32
        assert np.all(np.abs(x) <= 1.0)
        resized = results[source].shape[:2] != (SEGMENT_SIZE, SEGMENT_SIZE)
        caught = [str(w.message) for w in caught if "resized to the model's" in str(w.message)]
        assert [w.startswith(f"{shown}: ") for w in caught] == ([True] if resized else [])
    return results


# ---- image readers --------------------------------------------------------------------------------

@fast(60)
@given(image=valid_images())
def test_readers_decode_every_mode_and_size(image):
    fmt, mode, (w, h), seed, data = image
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"image.{fmt.lower()}"
        path.write_bytes(data)
        results = read_all(path)
    assert isinstance(results["rgb"], np.ndarray), results["rgb"]
    assert results["rgb"].shape == (h, w, 3)
    if (fmt, mode) == ("PNG", "RGB"):  # lossless: the very pixels
        np.testing.assert_array_equal(results["rgb"], np.asarray(make_image(mode, w, h, seed)))


@fast(100)
@given(data=damaged_images())
def test_readers_refuse_damaged_bytes_naming_the_file(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "input.png"
        path.write_bytes(data)
        read_all(path)


@fast(15)
@given(w=st.integers(2**14, 2**31 - 1), h=st.integers(2**14, 2**31 - 1))
def test_oversized_images_are_refused_before_decoding(w, h):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bomb.png"
        path.write_bytes(png_header(w, h))
        results = read_all(path)
    assert all(isinstance(r, BadExampleError) and "image too large" in str(r) for r in results.values())


@fast(40)
@given(name=hostile_names(NAME_MAX - 4), good=st.booleans())
def test_readers_take_hostile_file_names(name, good):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{name}.png"
        path.write_bytes(PNG_8PX if good else b"\0 not an image")
        results = read_all(path)
    assert isinstance(results["rgb"], np.ndarray) == good


def test_directories_and_missing_files_are_named():
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "folder.png"
        folder.mkdir()
        assert all("not a file" in str(r) for r in read_all(folder).values())
        assert all("missing file" in str(r) for r in read_all(Path(d) / "gone.png").values())


def test_16bit_grey_is_scaled_by_bit_depth_in_prepare_and_segment():
    """12-bit X-ray data in a 16-bit PNG: scaled to 0..255 by both, not clipped at 255 (segment
    used to clip it, so a chest X-ray model saw a different image than it was trained on)."""
    raw = np.tile(np.array([0, 1000, 4095], np.uint16), (SEGMENT_SIZE, 6))[:, :SEGMENT_SIZE]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "xray.png"
        Image.fromarray(raw).save(path)
        grey = common.read_grey(path)
        x = segment.read_image(path, SEGMENT_SIZE, 1)
    np.testing.assert_array_equal(grey[0, :3], [0, 62, 255])
    np.testing.assert_allclose(x[..., 0], grey / 127.5 - 1.0, atol=1e-6)


def test_unconvertible_modes_are_named():
    """LAB images have no grey conversion in Pillow: a clear error, not Pillow's bare ValueError."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "lab.tif"
        make_image("LAB", 8, 8).save(path)
        results = read_all(path)
    assert isinstance(results["rgb"], np.ndarray)
    assert "cannot convert image mode LAB to L" in str(results["grey"])


# ---- prepare ------------------------------------------------------------------------------------

ISIC_IMAGES, ISIC_MASKS = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"


def write_isic_pair(root: Path, stem: str) -> tuple[Path, Path]:
    """One ISIC 2018 training example (8 px image, {0, 255} mask) under root."""
    image = root / ISIC_IMAGES / f"{stem}.jpg"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(JPEG_8PX)
    return image, _save(root / ISIC_MASKS / f"{stem}_segmentation.png", _binary(8, 8))


def prepare_args(root: Path) -> list[str]:
    return ["prepare", "isic2018", "--manual-dir", str(root / "dl"), "--data-dir", str(root / "out"), "--threads", "2"]


def split_names(root: Path) -> list[str]:
    source = datasets.load_split("isic2018", "train", data_dir=str(root / "out"))
    return [source[i]["name"].decode() for i in range(len(source))]


@fast(15)
@given(names=st.lists(hostile_names(NAME_MAX - len("ISIC__segmentation.png")), min_size=1, max_size=3,
                      unique_by=printable))
def test_prepare_reads_files_with_hostile_names(names):
    stems = [f"ISIC_{n}" for n in names]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for stem in stems:
            write_isic_pair(root / "dl", stem)
        code, out, err = run_cli(prepare_args(root))
        assert code == 0, err
        assert f"train: {len(stems)} examples" in out
        # names are stored as UTF-8 text: undecodable bytes of a file name become \xNN
        assert sorted(split_names(root)) == sorted(printable(s) for s in stems)


def _write_defect(kind: str, image: Path, mask: Path, data) -> Path | None:
    """Damages one written example; returns the file it makes bad (None: still a good example)."""
    if kind == "image_junk":
        image.write_bytes(b"\0" + data.draw(st.binary(max_size=64)))
    elif kind == "image_truncated":
        image.write_bytes(JPEG_8PX[:data.draw(st.integers(0, len(JPEG_8PX) // 2))])
    elif kind == "image_oversized":
        image.write_bytes(png_header(30000, 30000))
    elif kind == "image_cmyk":  # converted to RGB: fine
        image.write_bytes(encode(make_image("CMYK", 8, 8), "JPEG"))
        return None
    elif kind == "mask_values":
        _save(mask, np.full((8, 8), 128, np.uint8))
    elif kind == "mask_size":
        _save(mask, _binary(4, 4))
    elif kind == "mask_missing":
        mask.unlink()
    elif kind == "mask_lab":
        mask.write_bytes(encode(make_image("LAB", 8, 8), "TIFF"))
    elif kind == "mask_la":  # grey + alpha, {0, 255}: fine
        mask.write_bytes(encode(Image.fromarray(_binary(8, 8)).convert("LA"), "PNG"))
        return None
    else:
        return None
    return image if kind.startswith("image") else mask


GOOD_KINDS = ("good", "image_cmyk", "mask_la")
BAD_KINDS = ("image_junk", "image_truncated", "image_oversized", "mask_values", "mask_size", "mask_missing",
             "mask_lab")


@fast(12)
@given(goods=st.lists(st.sampled_from(GOOD_KINDS), min_size=1, max_size=3),
       bads=st.lists(st.sampled_from(BAD_KINDS), min_size=1, max_size=3), data=st.data())
def test_prepare_fails_atomically_or_skips_exactly_the_bad_files(goods, bads, data):
    kinds = data.draw(st.permutations(goods + bads))
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        stems, bad_files, good_stems = [f"ISIC_{i:03d}" for i in range(len(kinds))], [], []
        for stem, kind in zip(stems, kinds):
            bad = _write_defect(kind, *write_isic_pair(root / "dl", stem), data)
            bad_files.append(bad) if bad else good_stems.append(stem)

        # without --skip-bad: a one-line error naming the first bad file, no dataset, no loader threads left
        threads = set(threading.enumerate())
        code, out, err = run_cli(prepare_args(root))
        assert_clean_error(code, err, bad_files[0])
        assert not [t for t in set(threading.enumerate()) - threads if t.name.startswith("ThreadPoolExecutor")]
        assert "--skip-bad" in err
        _assert_nothing_finished(root / "out")
        assert not [p for p in (root / "out").rglob("*") if p.is_file() and "array_record" in p.name]
        with pytest.raises(FileNotFoundError, match="semgan prepare isic2018"):
            datasets.load_split("isic2018", "train", data_dir=str(root / "out"))

        # with --skip-bad: exactly the bad files skipped and reported, the good ones kept
        code, out, err = run_cli(prepare_args(root) + ["--skip-bad"])
        assert code == 0, err
        assert f"train: {len(good_stems)} examples" in out
        assert f"skipped {len(bad_files)} bad examples in train:" in out
        reported = [line.strip() for line in out.splitlines() if line.startswith("    ")]
        assert [r.split(": ")[0] for r in reported] == [str(p) for p in bad_files]
        assert split_names(root) == good_stems


@pytest.mark.parametrize("layout, problem", [
    ("list_bytes", "not a UTF-8 text file"),
    ("mapping_index", "image index 'x' is not a number"),
    ("mapping_bytes", "not a UTF-8 text file"),
])
def test_prepare_names_broken_index_files(tmp_path, layout, problem):
    from test_data_builders import write_celebamask_raw, write_celebamask_semanticgan

    if layout == "list_bytes":
        bad = write_celebamask_semanticgan(tmp_path / "dl") / "train_full_list.txt"
        bad.write_bytes(b"\xff\xfe0.png 1.png")
    else:
        bad = write_celebamask_raw(tmp_path / "dl") / "CelebA-HQ-to-CelebA-mapping.txt"
        bad.write_bytes(b"idx orig_idx orig_file\nx 1 a.jpg\n" if layout == "mapping_index" else b"\x80\x81")
    code, _, err = run_cli(["prepare", "celebamask_hq", "--manual-dir", str(tmp_path / "dl"),
                            "--data-dir", str(tmp_path / "out")])
    assert problem in assert_clean_error(code, err, bad)


# ---- segment ------------------------------------------------------------------------------------

class FakeInverter:
    """Stands in for segment.BatchedInverter (no JAX): `semgan segment`'s file handling only."""

    size, channels, made = SEGMENT_SIZE, 3, 0
    stage1 = SimpleNamespace(data=SimpleNamespace(name="synthetic"))

    def __init__(self, *args):
        FakeInverter.made += 1

    def __call__(self, images: np.ndarray, index: int) -> dict:
        seg = np.concatenate([images[..., :1], -images[..., :1]], axis=-1)
        return {"seg": seg, "image": images, "w_plus": np.zeros((len(images), 4, 8), np.float32)}


def run_segment(argv: list[str]) -> tuple[int, str, str]:
    with mock.patch.object(segment, "BatchedInverter", FakeInverter), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_cli(["segment", "--checkpoint", "unused", "--batch", "2", *argv])


SEGMENT_INPUTS = {  # kind -> (suffix, bytes or None for a directory, readable)
    "png": (".png", PNG_8PX, True),
    "jpeg": (".jpeg", encode(make_image("RGB", 24, 20), "JPEG"), True),
    "grey16": (".png", encode(make_image("I;16", 16, 16), "PNG"), True),
    "rgba": (".webp", encode(make_image("RGBA", 16, 16), "WEBP"), True),
    "cmyk": (".jpg", encode(make_image("CMYK", 16, 16), "JPEG"), True),
    "junk": (".png", b"\0 junk", False),
    "empty": (".tif", b"", False),
    "truncated": (".png", PNG_8PX[:60], False),
    "oversized": (".bmp", png_header(30000, 30000), False),
    "folder": (".png", None, False),
}
OUTPUTS = ("mask", "mask_rgb", "recon", "overlay")


@fast(40)
@given(inputs=st.lists(st.tuples(hostile_names(NAME_MAX - 5), st.sampled_from(sorted(SEGMENT_INPUTS))),
                       min_size=1, max_size=5, unique_by=lambda t: t[0]))
def test_segment_skips_unusable_images_and_segments_the_rest(inputs):
    with tempfile.TemporaryDirectory() as d:
        folder, out = Path(d) / "images", Path(d) / "out"
        folder.mkdir()
        good, bad = [], []
        for name, kind in inputs:
            suffix, data, readable = SEGMENT_INPUTS[kind]
            path = folder / f"{name}{suffix}"
            path.mkdir() if data is None else path.write_bytes(data)
            # outputs are named STEM.png, written as STEM.png.tmp first: longer stems cannot be written
            (good if readable and len(os.fsencode(name)) <= NAME_MAX - 8 else bad).append(path)
        code, stdout, err = run_segment([str(folder), "--out", str(out)])
        assert code == (0 if good else 1), err
        assert "Traceback" not in err + stdout
        for sub in OUTPUTS:
            assert sorted(os.listdir(out / sub)) == sorted(f"{p.stem}.png" for p in good)
        for path in bad:
            assert f"skipped: {printable(str(path))}: " in err
        for path in good:
            assert f"skipped: {printable(str(path))}: " not in err
        assert f"segmented {len(good)} images" in stdout and (f"{len(bad)} skipped" in stdout) == bool(bad)


def test_segment_refuses_inputs_that_would_overwrite_each_other(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG_8PX)
    (tmp_path / "a.jpg").write_bytes(encode(make_image("RGB", 8, 8), "JPEG"))
    made = FakeInverter.made
    code, _, err = run_segment([str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2 and "a.jpg" in err and "a.png" in err and "would both write a.png" in err
    assert FakeInverter.made == made and not (tmp_path / "out").exists()


def test_segment_explicit_files_with_a_leading_dash(tmp_path, monkeypatch):
    """After `--` a relative name may start with a dash; a missing file is skipped and named."""
    monkeypatch.chdir(tmp_path)
    Path("-lead.png").write_bytes(PNG_8PX)
    code, stdout, err = run_segment(["--out", "out", "--", "-lead.png", "missing.png"])
    assert code == 0, err
    assert os.listdir("out/mask") == ["-lead.png"]
    assert "skipped: missing.png: missing file" in err and "1 skipped: missing.png" in stdout


# ---- convert ------------------------------------------------------------------------------------

NETWORKS = ("g", "g_ema", "d_img", "d_seg")


@functools.cache
def stage1() -> dict:
    """The 16-px stage-1 checkpoint dict of test_convert.py (NumPy state dicts, args as a dict);
    not a fixture, so that hypothesis does not print its 234 MB with every example."""
    return load_case("stage1_s16_rgb_seg8_cm2")[2]


@pytest.fixture(scope="module")
def cached_templates():
    """networks.template memoised: each network is traced once, not once per example."""
    from semgan_jax.convert import networks

    original, cache = networks.template, {}

    def template(name, config):
        key = (name, json.dumps(config["model"], sort_keys=True), json.dumps(config.get("encoder"), sort_keys=True))
        if key not in cache:
            cache[key] = original(name, config)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(networks, "template", template)
        yield


def save_light_pt(path: Path, ckpt: dict) -> None:
    """torch.save a checkpoint dict with its large tensors as stride-0 views of one zero: the
    right shapes in a few KB instead of 234 MB (small ones, e.g. blur kernels, keep their values)."""
    import torch

    def tensor(a):
        a = np.asarray(a)
        return torch.from_numpy(a.copy()) if a.size <= 64 else torch.zeros((), dtype=torch.float32).expand(a.shape)

    out = {}
    for name, value in ckpt.items():
        if name == "args":
            value = argparse.Namespace(**value)
        elif isinstance(value, dict):
            value = {k: tensor(v) if isinstance(v, np.ndarray) else v for k, v in value.items()}
        out[name] = value
    torch.save(out, path)


@functools.cache
def light_pt() -> bytes:
    """The bytes of stage1() saved by save_light_pt."""
    with tempfile.TemporaryDirectory() as d:
        save_light_pt(Path(d) / "stage1.pt", stage1())
        return (Path(d) / "stage1.pt").read_bytes()


def run_convert(path: Path) -> tuple[int, str]:
    """`semgan convert PATH --out DIR` that must fail: (exit code, stderr); DIR is not created."""
    out = path.parent / "run"
    code, _, err = run_cli(["convert", str(path), "--out", str(out)])
    assert not out.exists()
    return code, err


PICKLABLE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                     max_size=3), max_leaves=8)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@fast(40)
@given(name=hostile_names(NAME_MAX - 3), kind=st.sampled_from(["random", "truncated", "torch_object", "pickle"]),
       data=st.data())
def test_convert_refuses_files_that_are_not_checkpoints(cached_templates, name, kind, data):
    torch = pytest.importorskip("torch")

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{name}.pt"
        if kind == "random":
            path.write_bytes(data.draw(st.binary(max_size=200)))
        elif kind == "truncated":
            path.write_bytes(light_pt()[:data.draw(st.integers(0, len(light_pt()) - 1))])
        elif kind == "torch_object":
            torch.save(data.draw(PICKLABLE), path)
        else:
            path.write_bytes(pickle.dumps(data.draw(PICKLABLE)))
        code, err = run_convert(path)
        assert_clean_error(code, err, path)


@fast(30)
@given(network=st.sampled_from(NETWORKS), op=st.sampled_from(["missing", "unexpected", "shape", "value", "key"]),
       data=st.data())
def test_convert_names_the_file_and_the_offending_key(cached_templates, network, op, data):
    pytest.importorskip("torch")
    sd = dict(stage1()[network])
    key = data.draw(st.sampled_from(sorted(sd)))
    if op == "missing":
        del sd[key]
    elif op == "unexpected":
        key += data.draw(st.sampled_from([".x", "_extra", ".weight", ".0.bias"]))
        sd[key] = np.zeros(3, np.float32)
    elif op == "shape":
        sd[key] = np.zeros(data.draw(st.lists(st.integers(1, 5), max_size=5).map(tuple).filter(
            lambda s: s != sd[key].shape)), np.float32)
    elif op == "value":
        sd[key] = data.draw(st.none() | st.text(max_size=4) | st.integers() | st.lists(st.integers(), max_size=3))
    else:
        bad_key = data.draw(st.integers())
        sd[bad_key] = np.zeros(1, np.float32)
        key = f"state dict key {bad_key!r} is not a string"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "000100.pt"
        save_light_pt(path, {**stage1(), network: sd})
        code, err = run_convert(path)
    line = assert_clean_error(code, err, path)
    assert f"{network}: " in line and key in line


@fast(25)
@given(arg=st.sampled_from(["size", "latent", "n_mlp", "seg_dim", "channel_multiplier", "iter", "lr", "batch"]),
       value=st.one_of(st.text(max_size=4), st.lists(st.integers(), max_size=2), st.integers(-5, 0),
                       st.sampled_from([float("inf"), float("nan"), -float("inf"), 2.5, True])),
       data=st.data())
def test_convert_names_the_bad_argument(cached_templates, arg, value, data):
    pytest.importorskip("torch")
    if arg == "size":  # also integers that are no image size
        value = data.draw(st.just(value) | st.sampled_from([12, 24, 2**40 + 1]))
    if arg in ("iter", "lr", "batch"):  # training numbers: only non-finite ones are refused
        value = data.draw(st.sampled_from([float("inf"), float("nan"), -float("inf")]))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ckpt.pt"
        save_light_pt(path, {**stage1(), "args": {**stage1()["args"], arg: value}})
        code, err = run_convert(path)
    assert re.search(rf"args\.{arg}\b", assert_clean_error(code, err, path))


@pytest.mark.parametrize("stem, iteration", [("000123", 123), ("²", None), ("9" * 250, None)])
def test_convert_iteration_from_hostile_file_names(cached_templates, tmp_path, stem, iteration):
    """A number in the file name is the step; one that is no step (superscript digits, beyond
    int32) is ignored instead of crashing int() or the checkpoint writer."""
    pytest.importorskip("torch")
    from semgan_jax.convert import convert_file

    path = tmp_path / f"{stem}.pt"
    path.write_bytes(light_pt())
    config, _ = convert_file(path)
    assert config["iteration"] == iteration
