"""The metfaces40 builder, built from fake download trees written here (no TensorFlow)."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from semgan_jax.data import celebamask_hq, common, datasets, metfaces40

R = 256  # smallest config; fakes are 8 px, so each fake pixel becomes a 32-px block
RNG = np.random.default_rng(0)


def labels_8px(seed: int) -> np.ndarray:
    """An 8x8 class map using every class 0..7."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(8, dtype=np.uint8), 8)).reshape(8, 8)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_metfaces(root: Path, image_dir="image", label_dir="label") -> dict[str, np.ndarray]:
    """Three portraits with their label maps in the three accepted encodings; {stem: 8x8 classes}."""
    expected = {}
    for n, (stem, encoding) in enumerate([("met_a", "index"), ("met_b", "palette"), ("met_c", "half_grey_rgb")]):
        classes = labels_8px(n)
        expected[stem] = classes
        size = 16 if encoding == "half_grey_rgb" else 8  # labels at half the image size are accepted
        save(root / image_dir / f"{stem}.{'jpg' if n == 1 else 'png'}",
             RNG.integers(0, 256, (size, size, 3), dtype=np.uint8))
        if encoding == "index":
            label = classes
        elif encoding == "palette":
            label = celebamask_hq.PALETTE[classes]
        else:
            label = np.repeat(classes[..., None], 3, axis=-1)
        save(root / label_dir / f"{stem}.png", label)
    return expected


def build(tmp_path, manual_dir):
    builder = datasets.get_builder("metfaces40", R, str(tmp_path / "out"), num_threads=2)
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def stored(source) -> dict[str, np.ndarray]:
    """{name: mask sampled at the centres of the 32-px blocks}."""
    out = {}
    for i in range(len(source)):
        ex = source[i]
        assert ex["image"].shape == (R, R, 3) and ex["image"].dtype == np.uint8 and ex["labeled"]
        name = ex["name"].decode() if isinstance(ex["name"], bytes) else ex["name"]
        out[name] = ex["mask"][16::32, 16::32]
    return out


def test_metfaces40_builds_every_label_encoding(tmp_path):
    expected = write_metfaces(tmp_path / "dl" / "MetFaces40")
    builder = build(tmp_path, tmp_path / "dl")
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"test": 3}
    masks = stored(builder.as_data_source(split="test"))
    assert list(masks) == sorted(expected)
    for stem, classes in expected.items():
        np.testing.assert_array_equal(masks[stem], classes, err_msg=stem)
    info = datasets.get_dataset_info("metfaces40")
    assert info.class_names == datasets.get_dataset_info("celebamask_hq").class_names
    assert info.channels == 3 and info.resolutions == (256, 512, 1024) and info.ood_splits == ("test",)
    # loaded as `semgan evaluate` does
    source = datasets.load_split("metfaces40", "test", data_dir=str(tmp_path / "out"), resolution=R)
    assert len(source) == 3


def test_list_file_and_other_folder_names(tmp_path):
    root = tmp_path / "dl" / "label_data"
    write_metfaces(root, image_dir="images", label_dir="masks")
    (root / "test_list.txt").write_text("met_c.png\nmet_a.png\n")
    pairs = metfaces40.labeled_pairs(tmp_path / "dl")
    assert [p.key for p in pairs] == ["met_c", "met_a"]


@pytest.mark.parametrize("problem, match", [
    ("no_label_dir", r"label: missing directory \(the label maps"),
    ("missing_label", r"label/met_b.png: missing file"),
    ("missing_image", r"image/met_b: missing image for the label map"),
    ("listed_missing", r"image/met_x: missing image \(named in .*test_list.txt\)"),
    ("off_palette", r"label/met_b.png: label colours \[\(1, 2, 3\)\] are not in the celebamask_hq palette"),
    ("index_too_large", r"label/met_a.png: label values \[9\] outside the class set 0..7"),
    ("grey_rgb_too_large", r"label/met_c.png: label values \[8\] outside the class set 0..7"),
    ("size", r"label/met_a.png: mask size 8x8 does not match image size 24x24"),
    ("two_images", r"image/met_a.png: two files for 'met_a'"),
])
def test_bad_download_names_the_file(tmp_path, problem, match):
    root = tmp_path / "dl"
    write_metfaces(root)
    label = {stem: root / "label" / f"{stem}.png" for stem in ("met_a", "met_b", "met_c")}
    if problem == "no_label_dir":
        for p in label.values():
            p.unlink()
        (root / "label").rmdir()
    elif problem == "missing_label":
        label["met_b"].unlink()
    elif problem == "missing_image":
        (root / "image" / "met_b.jpg").unlink()
    elif problem == "listed_missing":
        (root / "test_list.txt").write_text("met_a.png met_x.png\n")
    elif problem == "off_palette":
        colours = celebamask_hq.PALETTE[labels_8px(1)]
        colours[0, 0] = (1, 2, 3)
        save(label["met_b"], colours)
    elif problem == "index_too_large":
        save(label["met_a"], np.full((8, 8), 9, np.uint8))
    elif problem == "grey_rgb_too_large":
        save(label["met_c"], np.full((8, 8, 3), 8, np.uint8))
    elif problem == "size":
        save(root / "image" / "met_a.png", RNG.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    else:
        save(root / "image" / "met_a.jpg", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    with pytest.raises(common.BadExampleError, match=match):
        build(tmp_path, root)
    assert not list((tmp_path / "out").rglob("dataset_info.json"))


def test_prepare_command_names_the_missing_folder(tmp_path, capsys):
    from semgan_jax import cli

    (tmp_path / "dl").mkdir()
    code = cli.main(["prepare", "metfaces40", "--manual-dir", str(tmp_path / "dl"), "--data-dir", str(tmp_path / "o")])
    assert code == 1 and f"error: manual_dir {tmp_path / 'dl'} is empty" in capsys.readouterr().err
    (tmp_path / "dl" / "notes.txt").write_text("the portraits are elsewhere")
    code = cli.main(["prepare", "metfaces40", "--manual-dir", str(tmp_path / "dl"), "--data-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and f"error: {tmp_path / 'dl' / 'image'}: missing directory (the portraits" in err


@pytest.mark.parametrize("name", [n for n in datasets.DATASET_NAMES if n != "synthetic"])
def test_every_download_builder_gives_its_download_guide(name):
    """TFDS shows MANUAL_DOWNLOAD_INSTRUCTIONS for a missing download: the module's guide (where
    to get the data, licence, layout), not the builder's one-line class docstring."""
    import importlib

    cls = datasets.builder_class(name)
    guide = cls.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert guide == importlib.import_module(cls.__module__).__doc__
    assert "http" in guide and len(guide.splitlines()) > 10
