"""Synthetic faces: determinism, class content, out-of-domain shift, TFDS build == in-memory."""

import sys

import numpy as np
import pytest

from semgan_jax.data import datasets, synthetic


def test_same_seed_same_bytes_and_prefix_stable():
    a_img, a_mask = synthetic.generate(70, 32, seed=3)
    b_img, b_mask = synthetic.generate(70, 32, seed=3)
    assert a_img.tobytes() == b_img.tobytes() and a_mask.tobytes() == b_mask.tobytes()
    c_img, c_mask = synthetic.generate(10, 32, seed=3)  # fewer examples: same first ten
    assert c_img.tobytes() == a_img[:10].tobytes() and c_mask.tobytes() == a_mask[:10].tobytes()
    d_img, _ = synthetic.generate(10, 32, seed=4)
    assert d_img.tobytes() != c_img.tobytes()


def test_shapes_dtypes_and_classes():
    images, masks = synthetic.generate(64, 64, seed=0)
    assert images.shape == (64, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (64, 64, 64) and masks.dtype == np.uint8
    assert len(synthetic.CLASS_NAMES) >= 5 and synthetic.PALETTE.shape == (len(synthetic.CLASS_NAMES), 3)
    freq = np.bincount(masks.ravel(), minlength=len(synthetic.CLASS_NAMES)) / masks.size
    assert len(freq) == len(synthetic.CLASS_NAMES) and (freq > 0.002).all(), freq
    # Every face has skin, two eye regions and a mouth.
    assert all((m == 1).any() and (m == 3).any() and (m == 5).any() for m in masks)


def test_geometry_is_resolution_free():
    _, m32 = synthetic.generate(8, 32, seed=1)
    _, m64 = synthetic.generate(8, 64, seed=1)
    coarse = m64[:, ::2, ::2]  # 64 px pixel centres nearest to the 32 px ones
    assert (coarse == m32).mean() > 0.9


def test_domain_shift_changes_images_not_masks():
    img, mask = synthetic.generate(128, 32, seed=5)
    ood_img, ood_mask = synthetic.generate(128, 32, seed=5, ood=True)
    assert ood_mask.tobytes() == mask.tobytes()
    same_seed_again, _ = synthetic.generate(128, 32, seed=5, ood=True)
    assert same_seed_again.tobytes() == ood_img.tobytes()

    def stats(x):
        x = x.astype(np.float64) / 255
        grad = np.abs(np.diff(x, axis=2)).mean()  # local contrast / edges
        return np.array([*x.mean(axis=(0, 1, 2)), x.std(), grad])

    s_in, s_ood = stats(img), stats(ood_img)
    assert s_ood[3] < 0.8 * s_in[3]  # lower contrast
    assert np.abs(s_ood - s_in).max() > 0.03
    # Per-face colour moves: the mean skin colour differs in most faces.
    skin_in = np.array([img[i][mask[i] == 1].mean(0) for i in range(len(img))])
    skin_ood = np.array([ood_img[i][mask[i] == 1].mean(0) for i in range(len(img))])
    assert (np.abs(skin_in - skin_ood).max(axis=1) > 20).mean() > 0.8


def test_source_and_load_split():
    src = synthetic.SyntheticSource(20, 32, seed=0)
    ex = src[3]
    assert len(src) == 20 and ex["image"].shape == (32, 32, 3) and ex["labeled"] and ex["name"] == "00003"
    test = datasets.load_split("synthetic", "test_ood")
    assert len(test) == synthetic.SPLITS["test_ood"][0]
    unlabeled = datasets.load_split("synthetic", "unlabeled", resolution=64)
    assert unlabeled[0]["image"].shape == (64, 64, 3)
    with pytest.raises(ValueError, match="unknown synthetic split"):
        synthetic.synthetic_split("validation")


def test_tfds_build_matches_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "SPLITS", {"train": (40, 0, False), "test_ood": (12, 2, True)})
    builder = datasets.get_builder("synthetic", 32, str(tmp_path))
    builder.download_and_prepare(file_format="array_record")
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 40, "test_ood": 12}
    for split in ("train", "test_ood"):
        built = datasets.load_split("synthetic", split, data_dir=str(tmp_path), resolution=32)
        memory = synthetic.synthetic_split(split, 32)
        for i in range(len(memory)):
            assert built[i]["image"].tobytes() == memory[i]["image"].tobytes()
            assert built[i]["mask"].tobytes() == memory[i]["mask"].tobytes()
    assert "tensorflow" not in sys.modules
