"""TFDS builders built from small fake download trees in each real layout (no TensorFlow)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from semgan_jax.data import celebamask_hq, chest_xray, common, datasets, prepare

R = 256  # smallest config; fakes are 8-16 px, so each fake pixel becomes a block
RNG = np.random.default_rng(0)


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _rgb(h=16, w=16):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _binary(h=16, w=16):
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 4: w // 2] = 255
    return mask


def _blocks(mask: np.ndarray, small: int) -> np.ndarray:
    """Values at the centres of the (R/small)-px blocks of a mask upscaled from small px."""
    step = R // small
    return mask[step // 2::step, step // 2::step]


def _build(name, tmp_path, manual_dir, **kwargs):
    builder = datasets.get_builder(name, R, str(tmp_path / "out"), num_threads=2, **kwargs)
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _sizes(builder):
    return {s: i.num_examples for s, i in builder.info.splits.items()}


def _assert_nothing_finished(out: Path):
    assert not list(out.rglob("dataset_info.json")), "a failed build left a finished-looking dataset"


# ----------------------------------------------------------------------------- CelebAMask-HQ

PARTS_8PX = {  # part -> (rows, cols) painted with 255 in an 8x8 annotation
    "skin": (slice(1, 7), slice(1, 7)),
    "hair": (slice(0, 2), slice(0, 8)),       # covers the top of the skin
    "hat": (slice(0, 1), slice(0, 2)),        # -> background, over the hair
    "l_eye": (slice(3, 4), slice(2, 3)),
    "eye_g": (slice(3, 4), slice(5, 6)),      # glasses -> eye
    "nose": (slice(4, 5), slice(3, 5)),
    "u_lip": (slice(5, 6), slice(3, 5)),      # -> mouth
    "l_ear": (slice(3, 5), slice(0, 1)),
    "l_brow": (slice(2, 3), slice(2, 3)),
    "neck": (slice(7, 8), slice(2, 6)),       # -> background
}


def _expected_celeba_8px():
    exp = np.zeros((8, 8), np.uint8)
    for part in celebamask_hq.PAINT_ORDER:
        if part in PARTS_8PX:
            exp[PARTS_8PX[part]] = celebamask_hq.MERGE[part]
    return exp


def write_celebamask_raw(root: Path, partitions=(0, 0, 0, 1, 2)):
    base = root / "CelebAMask-HQ"
    mapping = ["idx orig_idx orig_file"]
    partition_lines = ["000001.jpg 0"]  # CelebA images outside CelebA-HQ are listed too
    for idx, part in enumerate(partitions):
        orig = f"{1000 + idx:06d}.jpg"
        mapping.append(f"{idx} {999 + idx} {orig}")
        partition_lines.append(f"{orig} {part}")
        _save(base / "CelebA-HQ-img" / f"{idx}.jpg", _rgb())
        for name, region in PARTS_8PX.items():
            mask = np.zeros((8, 8), np.uint8)
            mask[region] = 255
            _save(base / "CelebAMask-HQ-mask-anno" / str(idx // 2000) / f"{idx:05d}_{name}.png", mask)
    (base / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition_lines) + "\n")
    return base


def write_celebamask_semanticgan(root: Path):
    label_dir, unlabel_dir = root / "label_data", root / "unlabel_data"
    names = [f"{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        _save(label_dir / "image" / name, _rgb())
        _save(label_dir / "label" / name, np.full((16, 16), i % 8, np.uint8), "L")
    (label_dir / "train_full_list.txt").write_text("0.png\n1.png\n2.png\n3.png\n")
    (label_dir / "train_2_list.txt").write_text("0.png\n1.png\n")
    (label_dir / "val_full_list.txt").write_text("4.png\n")
    (label_dir / "test_list.txt").write_text("5.png")
    for i in range(3):
        _save(unlabel_dir / "image" / f"u{i}.jpg", _rgb())
    (unlabel_dir / "unlabel_list.txt").write_text("u0.jpg u1.jpg u2.jpg\n")
    return label_dir


def test_merge_parts_table():
    parts = {"skin": np.ones((2, 2)), "hair": np.array([[1, 0], [0, 0]]), "eye_g": np.array([[0, 1], [0, 0]])}
    merged = celebamask_hq.merge_parts(parts)
    assert merged.tolist() == [[7, 3], [1, 1]]
    assert set(celebamask_hq.MERGE.values()) == set(range(len(celebamask_hq.CLASS_NAMES)))
    assert set(celebamask_hq.MERGE) == set(celebamask_hq.PAINT_ORDER)
    with pytest.raises(ValueError, match="unknown parts"):
        celebamask_hq.merge_parts({"beard": np.ones((2, 2))})


def test_celebamask_raw_layout(tmp_path):
    write_celebamask_raw(tmp_path / "dl")
    builder = _build("celebamask_hq", tmp_path, tmp_path / "dl")
    assert _sizes(builder) == {"train": 3, "val": 1, "test": 1}
    train = builder.as_data_source("train")
    ex = train[0]
    assert ex["image"].shape == (R, R, 3) and ex["image"].dtype == np.uint8
    assert ex["mask"].shape == (R, R) and ex["mask"].dtype == np.uint8 and ex["labeled"]
    assert [train[i]["name"] for i in range(3)] == [b"0", b"1", b"2"]
    np.testing.assert_array_equal(_blocks(ex["mask"], 8), _expected_celeba_8px())
    # No unlabeled split is stored for this layout: load_split serves train's images.
    unlabeled = datasets.load_split("celebamask_hq", "unlabeled", data_dir=str(tmp_path / "out"))
    assert len(unlabeled) == 3
    limited = datasets.load_split("celebamask_hq", "train", data_dir=str(tmp_path / "out"),
                                  num_labeled=2, label_seed=7)
    assert len(limited) == 2 and limited[0]["name"] in {b"0", b"1", b"2"}
    assert "tensorflow" not in sys.modules


def test_celebamask_semanticgan_layout(tmp_path):
    write_celebamask_semanticgan(tmp_path / "dl")
    builder = _build("celebamask_hq", tmp_path, tmp_path / "dl")
    assert _sizes(builder) == {"train": 4, "val": 1, "test": 1, "train_2": 2, "unlabeled": 3}
    train = builder.as_data_source("train")
    assert [int(train[i]["mask"][0, 0]) for i in range(4)] == [0, 1, 2, 3]
    unl = builder.as_data_source("unlabeled")[1]
    assert not unl["labeled"] and not unl["mask"].any() and unl["name"] == b"u1.jpg"


@pytest.mark.parametrize("problem, match", [
    ("corrupt", "corrupt or truncated image"),
    ("truncated", "corrupt or truncated image"),
    ("mask_size", "does not match image size"),
    ("label_value", "outside the class set"),
    ("missing", "missing file"),
])
def test_celebamask_bad_input(tmp_path, problem, match):
    label_dir = write_celebamask_semanticgan(tmp_path / "dl")
    bad = label_dir / "image" / "2.png"
    if problem == "corrupt":
        bad.write_bytes(b"definitely not a png")
    elif problem == "truncated":
        data = (label_dir / "image" / "3.png").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif problem == "mask_size":
        bad = _save(label_dir / "label" / "2.png", np.zeros((10, 10), np.uint8), "L")
    elif problem == "label_value":
        bad = _save(label_dir / "label" / "2.png", np.full((16, 16), 9, np.uint8), "L")
    else:
        bad.unlink()
    with pytest.raises(common.BadExampleError, match=match) as err:
        _build("celebamask_hq", tmp_path, tmp_path / "dl")
    assert err.value.path == str(bad)
    _assert_nothing_finished(tmp_path / "out")

    result = prepare.prepare("celebamask_hq", manual_dir=str(tmp_path / "dl"), resolution=R,
                             data_dir=str(tmp_path / "out2"), skip_bad=True)
    assert result.split_sizes["train"] == 3 and result.split_sizes["train_2"] == 2
    assert [e.path for e in result.skipped["train"]] == [str(bad)]


def test_all_bad_split_fails_and_empty_split_is_dropped(tmp_path):
    label_dir = write_celebamask_semanticgan(tmp_path / "dl")
    (label_dir / "val_5_list.txt").write_text("")
    builder = _build("celebamask_hq", tmp_path, tmp_path / "dl")
    assert "val_5" not in _sizes(builder)
    (label_dir / "image" / "5.png").write_bytes(b"broken")  # the only test image
    with pytest.raises(common.BadExampleError, match="every example of split 'test' is bad"):
        _build("celebamask_hq", tmp_path / "again", tmp_path / "dl", skip_bad=True)


def test_celebamask_missing_partition_file(tmp_path):
    write_celebamask_raw(tmp_path / "dl")
    (tmp_path / "dl" / "list_eval_partition.txt").unlink()
    with pytest.raises(common.BadExampleError, match="list_eval_partition.txt: missing file"):
        _build("celebamask_hq", tmp_path, tmp_path / "dl")


# ----------------------------------------------------------------------------- ISIC 2018

def write_isic(root: Path):
    for split, n in (("Training", 3), ("Validation", 1)):
        for i in range(n):
            stem = f"ISIC_{split[0]}{i:06d}"
            _save(root / f"ISIC2018_Task1-2_{split}_Input" / f"{stem}.jpg", _rgb(12, 16))
            _save(root / f"ISIC2018_Task1_{split}_GroundTruth" / f"{stem}_segmentation.png", _binary(12, 16))
    (root / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("cc-by-nc")
    _save(root / "ISIC2018_Task1-2_Test_Input" / "ISIC_T000000.jpg", _rgb())  # no test ground truth
    for stem in ("ISIC_U000000", "ISIC_V000000"):  # the second is the validation image: left out
        _save(root / "nested" / "ISIC_2019_Training_Input" / f"{stem}.jpg", _rgb())
    for case in ("IMD002", "IMD003"):
        case_dir = root / "PH2Dataset" / "PH2 Dataset images" / case
        _save(case_dir / f"{case}_Dermoscopic_Image" / f"{case}.bmp", _rgb(12, 16))
        _save(case_dir / f"{case}_lesion" / f"{case}_lesion.bmp", _binary(12, 16))
    for group, atlas, name in (("melanoma", "dermIS", "a"), ("notmelanoma", "dermquest", "b"),
                               ("notmelanoma", "dermIS", "c")):
        folder = root / "Skin Image Data Set" / "skin_data" / group / atlas
        _save(folder / f"{name}_orig.jpg", _rgb())
        _save(folder / f"{name}_contour.png", _binary())


def test_isic2018_layout(tmp_path):
    write_isic(tmp_path / "dl")
    builder = _build("isic2018", tmp_path, tmp_path / "dl")
    assert _sizes(builder) == {"train": 3, "val": 1, "unlabeled": 1, "ph2": 2, "dermis": 2, "dermquest": 1}
    ex = builder.as_data_source("train")[0]
    assert ex["image"].shape == (R, R, 3) and set(np.unique(ex["mask"])) == {0, 1}
    ph2 = builder.as_data_source("ph2")[0]
    assert ph2["name"] == b"IMD002" and ph2["mask"].max() == 1
    assert not builder.as_data_source("unlabeled")[0]["labeled"]
    info = datasets.get_dataset_info("isic2018")
    assert info.num_classes == 2 and info.ood_splits == ("ph2", "dermis", "dermquest")


def test_isic2018_bad_mask_values_and_skip(tmp_path):
    write_isic(tmp_path / "dl")
    bad = _save(tmp_path / "dl" / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_T000001_segmentation.png",
                np.full((12, 16), 128, np.uint8))
    with pytest.raises(common.BadExampleError, match=r"label values \[128\] outside the binary set") as err:
        _build("isic2018", tmp_path, tmp_path / "dl")
    assert err.value.path == str(bad)
    _assert_nothing_finished(tmp_path / "out")
    builder = _build("isic2018", tmp_path, tmp_path / "dl", skip_bad=True)
    assert _sizes(builder)["train"] == 2 and len(builder.skipped["train"]) == 1


# ----------------------------------------------------------------------------- chest X-ray

JSRT_PX = 16


def _write_jsrt(path: Path, value: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = np.full((JSRT_PX, JSRT_PX), value, ">u2")
    raw[0, 0] = 0  # darkest raw value -> brightest grey after inversion
    raw.tofile(path)


def write_chest_xray(root: Path):
    for fold, stems in (("fold1", ("JPCLN001", "JPCNN002")), ("fold2", ("JPCLN003",))):
        for k, stem in enumerate(stems):
            _write_jsrt(root / "All247images" / f"{stem}.IMG", 1000 * (k + 1))
            for side, cols in (("left lung", slice(1, 3)), ("right lung", slice(5, 7))):
                mask = np.zeros((8, 8), np.uint8)
                mask[2:6, cols] = 255
                _save(root / "scr" / fold / "masks" / side / f"{stem}.gif", mask, "L")
    mc = root / "MontgomerySet"
    for i in range(2):
        name = f"MCUCXR_000{i}_0.png"
        grey16 = np.full((12, 10), 4095, np.uint16)  # 12-bit data in a 16-bit PNG
        grey16[0, 0] = 0
        _save(mc / "CXR_png" / name, grey16)
        left, right = np.zeros((12, 10), np.uint8), np.zeros((12, 10), np.uint8)
        left[2:8, 1:4], right[2:8, 6:9] = 255, 1  # both {0, 255} and {0, 1} masks are accepted
        _save(mc / "ManualMask" / "leftMask" / name, left)
        _save(mc / "ManualMask" / "rightMask" / name, right)
    for i in range(3):
        _save(root / "ChinaSet_AllFiles" / "CXR_png" / f"CHNCXR_000{i}_0.png", _rgb()[..., 0])
    for i in range(2):  # masks exist for two of the three images
        _save(root / "shcxr-lung-mask" / "mask" / f"CHNCXR_000{i}_0_mask.png", _binary())


def test_chest_xray_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(chest_xray, "JSRT_SIZE", JSRT_PX)
    write_chest_xray(tmp_path / "dl")
    builder = _build("chest_xray", tmp_path, tmp_path / "dl")
    assert _sizes(builder) == {"train": 2, "test": 1, "montgomery": 2, "shenzhen": 2}
    ex = builder.as_data_source("train")[0]
    assert ex["name"] == b"JPCLN001" and ex["image"].shape == (R, R, 1) and ex["image"].dtype == np.uint8
    assert ex["image"][0, 0, 0] == 255 and ex["image"][R // 2, R // 2, 0] == round(255 - 1000 * 255 / 4095)
    expected = np.zeros((8, 8), np.uint8)
    expected[2:6, 1:3] = expected[2:6, 5:7] = 1  # union of both lungs
    np.testing.assert_array_equal(_blocks(ex["mask"], 8), expected)
    mc = builder.as_data_source("montgomery")[0]
    assert mc["image"][-1, -1, 0] == 255 and mc["image"][0, 0, 0] == 0  # 12-bit scaled, not clipped
    assert mc["mask"].max() == 1 and mc["mask"][:, : R // 2].any() and mc["mask"][:, R // 2:].any()
    assert datasets.get_dataset_info("chest_xray").channels == 1


def test_chest_xray_truncated_raw_and_missing_side(tmp_path, monkeypatch):
    monkeypatch.setattr(chest_xray, "JSRT_SIZE", JSRT_PX)
    write_chest_xray(tmp_path / "dl")
    raw = tmp_path / "dl" / "All247images" / "JPCNN002.IMG"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(common.BadExampleError, match="truncated raw image") as err:
        _build("chest_xray", tmp_path, tmp_path / "dl")
    assert err.value.path == str(raw)
    (tmp_path / "dl" / "scr" / "fold2" / "masks" / "right lung" / "JPCLN003.gif").unlink()
    with pytest.raises(common.BadExampleError, match="right lung/JPCLN003.gif: missing file"):
        _build("chest_xray", tmp_path, tmp_path / "dl")


def test_reference_preprocess():
    # 16 equally frequent grey levels in a narrow band, 4 columns each
    image = np.tile(np.repeat(np.arange(100, 116, dtype=np.uint8), 4), (64, 1))[..., None]
    out = chest_xray.reference_preprocess(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    levels = out[0, ::4, 0].astype(int)
    assert levels[0] == 0 and levels[-1] == 255 and (np.diff(levels) > 0).all()
    assert levels[4] == 132  # equalised to 68, then gamma 0.5: floor(255.999 * (68 / 255) ** 0.5)


def test_dataset_info_and_unprepared(tmp_path):
    for name in datasets.DATASET_NAMES:
        info = datasets.get_dataset_info(name)
        assert info.palette.shape == (info.num_classes, 3) and info.palette.dtype == np.uint8
    assert datasets.get_dataset_info("celebamask_hq").resolutions == (256, 512, 1024)
    assert datasets.get_dataset_info("celebamask_hq").num_classes == 8
    with pytest.raises(FileNotFoundError, match="semgan prepare isic2018"):
        datasets.load_split("isic2018", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no 128 px config"):
        datasets.get_builder("isic2018", 128)
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.get_dataset_info("cityscapes")
