"""`semgan prepare`: synthetic without a download, real data from a manual dir, --skip-bad."""

import numpy as np
import pytest
from PIL import Image

from semgan_jax import cli
from semgan_jax.data import datasets, synthetic


def _write_small_celebamask(root):
    """SemanticGAN layout, 3 train images; 1.png is corrupt."""
    label_dir = root / "label_data"
    (label_dir / "image").mkdir(parents=True)
    (label_dir / "label").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(label_dir / "image" / f"{i}.png")
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(label_dir / "label" / f"{i}.png")
    (label_dir / "image" / "1.png").write_bytes(b"\x89PNG broken")
    (label_dir / "train_full_list.txt").write_text("0.png 1.png 2.png")
    (label_dir / "val_full_list.txt").write_text("0.png")
    (label_dir / "test_list.txt").write_text("2.png")
    return label_dir / "image" / "1.png"


def test_prepare_synthetic_needs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synthetic, "SPLITS", {"train": (20, 0, False), "test_ood": (6, 2, True)})
    assert cli.main(["prepare", "synthetic", "--data-dir", str(tmp_path), "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    assert "synthetic 64px" in out and "train: 20 examples" in out and "test_ood: 6 examples" in out
    source = datasets.load_split("synthetic", "train", data_dir=str(tmp_path), resolution=64)
    assert len(source) == 20 and source[0]["image"].shape == (64, 64, 3)


def test_prepare_reports_bad_file_or_skips_it(tmp_path, capsys):
    bad = _write_small_celebamask(tmp_path / "dl")
    args = ["prepare", "celebamask_hq", "--manual-dir", str(tmp_path / "dl"), "--data-dir", str(tmp_path / "out")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert f"{bad}: corrupt or truncated image" in err and "--skip-bad" in err
    assert not list((tmp_path / "out").rglob("dataset_info.json"))

    assert cli.main(args + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "train: 2 examples" in out and "skipped 1 bad examples in train" in out and str(bad) in out
    assert len(datasets.load_split("celebamask_hq", "train", data_dir=str(tmp_path / "out"))) == 2


def test_prepare_requires_manual_dir(tmp_path, capsys):
    assert cli.main(["prepare", "isic2018", "--data-dir", str(tmp_path)]) == 1
    assert "--manual-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["prepare", "mnist"])
