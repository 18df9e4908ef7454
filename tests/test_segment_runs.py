"""`semgan segment` / `evaluate` over many images: a progress bar, results written as they go,
`--resume` after an interruption, and `evaluate --dataset` (a model scored on another dataset of
the same classes). The inverter is a stand-in (no JAX): these are the commands' bookkeeping."""

import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from semgan_jax import cli, segment
from semgan_jax.data import datasets, synthetic
from semgan_jax.metrics import confusion_matrices


def fake_labels(images: np.ndarray, k: int) -> np.ndarray:
    """The stand-in's prediction: classes from the first channel's brightness."""
    return np.clip(((images[..., 0] + 1) / 2 * k).astype(np.int64), 0, k - 1)


class FakeInverter:
    """Stands in for segment.BatchedInverter: seg logits from the image, a record of the batch
    start indices it saw, and a KeyboardInterrupt at call number `interrupt_at` (1-based)."""

    data = "synthetic"
    size = resolution = 16
    channels = 3
    interrupt_at = 0
    calls: list = []

    def __init__(self, checkpoint, cfg, *args):
        self.cfg = cfg
        self.stage1 = SimpleNamespace(data=SimpleNamespace(name=self.data, data_dir="", resolution=self.resolution))
        self.k = datasets.get_dataset_info(self.data).num_classes

    def __call__(self, images: np.ndarray, index: int) -> dict:
        FakeInverter.calls.append((index, len(images)))
        if len(FakeInverter.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        seg = np.eye(self.k, dtype=np.float32)[fake_labels(images, self.k)]
        return {"seg": seg, "image": images, "w_plus": np.zeros((len(images), 4, 8), np.float32)}


def run(argv, capsys, **inverter) -> tuple[int, str]:
    FakeInverter.calls = []
    fake = type("Fake", (FakeInverter,), inverter)
    with mock.patch.object(segment, "BatchedInverter", fake):
        code = cli.main([*argv, "--checkpoint", "unused"])
    out = capsys.readouterr()
    return code, out.out + out.err


def scores(path: Path) -> dict:
    r = json.loads(path.read_text())
    return {k: r[k] for k in ("num_images", "confusion", "dataset", "per_image")}


# ---- evaluate -------------------------------------------------------------------------------------

def test_evaluate_resumes_to_the_scores_of_one_run(tmp_path, capsys):
    args = ["evaluate", "--split", "test", "--limit", "7", "--batch", "3"]
    whole = tmp_path / "whole.json"
    code, text = run([*args, "--out", str(whole)], capsys)
    assert code == 0 and [c[0] for c in FakeInverter.calls] == [0, 3, 6]
    assert "img/s" in text  # the progress bar's rate
    lines = whole.with_suffix(".images.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["settings"]["source"] == "synthetic/test" and len(lines) == 8

    cut = tmp_path / "cut.json"
    code, text = run([*args, "--out", str(cut)], capsys, interrupt_at=2)
    assert code == 130 and "interrupted: 3 of 7 images scored" in text and "--resume" in text
    assert not cut.exists()
    records = cut.with_suffix(".images.jsonl")
    with open(records, "a") as f:
        f.write('{"index": 3, "name": "x", "confusion": [[1')  # a line cut by a kill
    code, text = run([*args, "--out", str(cut), "--resume"], capsys)
    assert code == 0 and [c[0] for c in FakeInverter.calls] == [3, 6]  # the first batch is not redone
    assert scores(cut) == scores(whole)
    result = json.loads(cut.read_text())
    assert result["images_resumed"] == 3 and result["images_inverted"] == 4
    # the expected numbers, independently: the stand-in's prediction against the split's masks
    src = synthetic.synthetic_split("test", 16)
    conf = sum(confusion_matrices(fake_labels(src[i]["image"][None] / 127.5 - 1.0, 6), src[i]["mask"][None], 6)[0]
               for i in range(7))
    assert result["confusion"] == conf.tolist()


def test_evaluate_resume_refuses_records_of_other_settings(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert run(["evaluate", "--limit", "2", "--batch", "2", "--out", str(out)], capsys)[0] == 0
    code, text = run(["evaluate", "--limit", "2", "--batch", "2", "--out", str(out), "--resume", "--seed", "3"],
                     capsys)
    assert code == 1 and "other settings (seed: 0 then, 3 now)" in text and "Traceback" not in text
    assert FakeInverter.calls == []


@pytest.fixture(scope="module")
def metfaces_dir(tmp_path_factory):
    from test_data_metfaces40 import build, write_metfaces

    root = tmp_path_factory.mktemp("metfaces")
    write_metfaces(root / "dl")
    build(root, root / "dl")
    return root / "out"


def test_evaluate_a_celebamask_model_on_metfaces40(metfaces_dir, tmp_path, capsys):
    out = tmp_path / "met.json"
    code, text = run(["evaluate", "--dataset", "metfaces40", "--split", "test", "--data-dir", str(metfaces_dir),
                      "--batch", "2", "--out", str(out), "--no-progress", "--grid", str(tmp_path / "g.png")],
                     capsys, data="celebamask_hq", size=256, resolution=256)
    assert code == 0, text
    result = json.loads(out.read_text())
    assert result["source"] == "metfaces40/test" and result["num_images"] == 3
    assert result["class_names"] == list(datasets.get_dataset_info("celebamask_hq").class_names)
    src = datasets.load_split("metfaces40", "test", data_dir=str(metfaces_dir), resolution=256)
    conf = sum(confusion_matrices(fake_labels(src[i]["image"][None] / 127.5 - 1.0, 8),
                                  src[i]["mask"][None].astype(np.int64), 8)[0] for i in range(3))
    assert result["confusion"] == conf.tolist()
    assert Image.open(tmp_path / "g.png").size[0] > 256


@pytest.mark.parametrize("model, extra, message", [
    ({"data": "synthetic"}, [], "--dataset metfaces40 has the classes background, skin, nose"),
    ({"data": "celebamask_hq", "channels": 1, "size": 256, "resolution": 256}, [],
     "--dataset metfaces40 has 3-channel images; the model takes 1"),
    ({"data": "celebamask_hq"}, [], "metfaces40 has no 16 px config"),
    ({"data": "celebamask_hq", "size": 256, "resolution": 256}, ["--split", "train"],
     "metfaces40 has no split 'train'"),
])
def test_evaluate_refuses_a_dataset_the_model_cannot_be_scored_on(model, extra, message, metfaces_dir, tmp_path,
                                                                   capsys):
    code, text = run(["evaluate", "--dataset", "metfaces40", "--data-dir", str(metfaces_dir), *extra,
                      "--out", str(tmp_path / "s.json")], capsys, **model)
    assert code == 1 and message in text and "Traceback" not in text, text
    assert FakeInverter.calls == [] and not (tmp_path / "s.json").exists()


def test_evaluate_names_an_unprepared_dataset(tmp_path, capsys):
    code, text = run(["evaluate", "--dataset", "metfaces40", "--data-dir", str(tmp_path), "--out",
                      str(tmp_path / "s.json")], capsys, data="celebamask_hq", size=256, resolution=256)
    assert code == 1 and "semgan prepare metfaces40" in text and "Traceback" not in text


# ---- segment --------------------------------------------------------------------------------------

def test_segment_resume_skips_the_finished_images(tmp_path, capsys):
    src = synthetic.synthetic_split("test", 16)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(src[i]["image"]).save(images / f"im{i}.png")
    out = tmp_path / "out"
    args = ["segment", str(images), "--out", str(out), "--batch", "2", "--save-latent"]
    code, text = run(args, capsys, interrupt_at=2)
    assert code == 130 and "interrupted: 2 of 5 images" in text
    assert sorted(p.name for p in (out / "mask").iterdir()) == ["im0.png", "im1.png"]
    first = (out / "mask" / "im0.png").stat().st_mtime_ns
    code, text = run([*args, "--resume"], capsys)
    assert code == 0 and [c[0] for c in FakeInverter.calls] == [2, 4]
    assert "segmented 3 images" in text and "2 done earlier (--resume)" in text and "img/s" in text
    for sub in ("mask", "mask_rgb", "recon", "overlay"):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"im{i}.png" for i in range(5)]
    assert (out / "mask" / "im0.png").stat().st_mtime_ns == first
    labels = np.asarray(Image.open(out / "mask" / "im3.png"))
    np.testing.assert_array_equal(labels, fake_labels(src[3]["image"] / 127.5 - 1.0, 6))
    # an image missing any output (here its latent) is done again
    (out / "latent" / "im4.npy").unlink()
    code, text = run([*args, "--resume", "--no-progress"], capsys)
    assert code == 0 and FakeInverter.calls == [(4, 1)] and "img/s" not in text  # no bar
