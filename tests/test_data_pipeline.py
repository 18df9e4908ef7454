"""grain pipelines: scaling, one-hot, aligned flips, sharding, epochs, exact resume, label subsets."""

import numpy as np
import pytest

from semgan_jax.data import datasets, pipeline

H = W = 8
K = 3


class IndexSource:
    """Example i: row 0 of channel 2 holds i (survives flips); the mask is 2 in the left
    three columns, 1 in the next column, 0 elsewhere; channel 0 is 40 * mask (image <-> mask link)."""

    def __init__(self, n, labeled=True):
        self.n, self.labeled = n, labeled

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        mask = np.zeros((H, W), np.uint8)
        mask[:, :3], mask[:, 3] = 2, 1
        image = np.zeros((H, W, 3), np.uint8)
        image[..., 0] = 40 * mask
        image[0, :, 2] = i
        return {"image": image, "mask": mask, "labeled": self.labeled, "name": f"ex{i}".encode()}


def _indices(batch):
    return np.round((batch["image"][:, 0, 0, 2] + 1) * 127.5).astype(int).tolist()


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_labeled_batch_format_and_aligned_flips():
    it = pipeline.make_labeled_iterator(IndexSource(16), batch_size=8, seed=1, num_classes=K)
    flipped = unflipped = 0
    for batch in _take(it, 6):
        assert batch["image"].shape == (8, H, W, 3) and batch["image"].dtype == np.float32
        assert batch["mask"].shape == (8, H, W) and batch["mask"].dtype == np.int32
        assert batch["mask_onehot"].shape == (8, H, W, K) and batch["mask_onehot"].dtype == np.float32
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        assert set(np.unique(batch["mask_onehot"])) == {-1.0, 1.0}
        np.testing.assert_array_equal(batch["mask_onehot"].argmax(-1), batch["mask"])
        # The image channel that encodes the mask moved together with the mask.
        np.testing.assert_array_equal(np.round((batch["image"][..., 0] + 1) * 127.5), 40 * batch["mask"])
        is_flipped = batch["mask"][:, 0, -1] == 2
        assert ((batch["mask"][:, 0, 0] == 2) ^ is_flipped).all()
        flipped += int(is_flipped.sum())
        unflipped += int((~is_flipped).sum())
    assert flipped > 5 and unflipped > 5


def test_no_flip_and_unlabeled_stream():
    it = pipeline.make_unlabeled_iterator(IndexSource(5), batch_size=5, seed=0, flip=False)
    batch = next(it)
    assert set(batch) == {"image"} and batch["image"].shape == (5, H, W, 3)
    # never flipped: the mask-coded (non-zero) columns stay on the left
    assert (batch["image"][:, :, 0, 0] > -1).all() and (batch["image"][:, :, -1, 0] == -1).all()
    assert sorted(_indices(batch)) == [0, 1, 2, 3, 4]


def test_epochs_are_permutations_reshuffled_from_seed():
    it = pipeline.make_unlabeled_iterator(IndexSource(8), batch_size=1, seed=3)
    order = [_indices(b)[0] for b in _take(it, 24)]
    epochs = [order[0:8], order[8:16], order[16:24]]
    assert all(sorted(e) == list(range(8)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    again = pipeline.make_unlabeled_iterator(IndexSource(8), batch_size=1, seed=3)
    assert [_indices(b)[0] for b in _take(again, 24)] == order
    other = pipeline.make_unlabeled_iterator(IndexSource(8), batch_size=1, seed=4)
    assert [_indices(b)[0] for b in _take(other, 8)] != epochs[0]


@pytest.mark.parametrize("count", [2, 3])
def test_process_slices_assemble_the_single_process_batches(count):
    """N processes each read their part of every global batch: disjoint reads, and together the
    same global batches (examples and flips) as one process reading the whole batch."""
    n, b = 10, 2
    single = pipeline.make_labeled_iterator(IndexSource(n), batch_size=b * count, seed=0, num_classes=K)
    parts = [pipeline.make_labeled_iterator(IndexSource(n), batch_size=b, seed=0, num_classes=K,
                                            shard_index=index, shard_count=count) for index in range(count)]
    first_epoch = []
    for step in range(7):  # crosses epoch boundaries
        whole = next(single)
        pieces = [next(it) for it in parts]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), whole[key])
        if step < n // (b * count):
            first_epoch += [i for p in pieces for i in _indices(p)]
    assert len(first_epoch) == len(set(first_epoch)) == n // (b * count) * b * count
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.make_unlabeled_iterator(IndexSource(n), 1, 0, shard_index=count, shard_count=count)


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_restart_from_saved_state_in_process():
    def make():
        return pipeline.make_labeled_iterator(IndexSource(12), batch_size=4, seed=5, num_classes=K)

    it = make()
    _take(it, 7)  # crosses two epoch boundaries
    state = it.get_state()
    expected = [{k: np.array(v) for k, v in b.items()} for b in _take(it, 5)]
    resumed = make()
    resumed.set_state(state)
    for want, got in zip(expected, _take(resumed, 5)):
        _assert_batches_equal(want, got)


def test_restart_from_saved_state_with_workers():
    source = datasets.load_split("synthetic", "test")

    def make(workers):
        return pipeline.make_labeled_iterator(source, batch_size=4, seed=2, num_classes=6,
                                              num_workers=workers, prefetch=1)

    reference = make(0)
    want = [{k: np.array(v) for k, v in b.items()} for b in _take(reference, 6)]
    it = make(2)
    try:
        for batch, expected in zip(_take(it, 3), want[:3]):  # same sequence as in-process
            _assert_batches_equal(expected, batch)
        state = it.get_state()
    finally:
        it.close()
    resumed = make(2)
    try:
        resumed.set_state(state)
        for batch, expected in zip(_take(resumed, 3), want[3:]):
            _assert_batches_equal(expected, batch)
    finally:
        resumed.close()


def test_labeled_stream_rejects_unlabeled_examples():
    it = pipeline.make_labeled_iterator(IndexSource(4, labeled=False), batch_size=2, seed=0, num_classes=K)
    with pytest.raises(ValueError, match="unlabeled example"):
        next(it)


def test_mask_to_onehot_binary_and_range_check():
    mask = np.array([[0, 1], [1, 0]])
    np.testing.assert_array_equal(pipeline.mask_to_onehot(mask, 1)[..., 0], [[-1, 1], [1, -1]])
    assert pipeline.mask_to_onehot(mask, 2).shape == (2, 2, 2)
    with pytest.raises(ValueError, match=r"mask values \[3\] outside 0..2"):
        pipeline.mask_to_onehot(np.array([[3]]), 3)


def test_image_fn_runs_before_scaling():
    it = pipeline.make_unlabeled_iterator(IndexSource(4), batch_size=4, seed=0, flip=False,
                                          image_fn=np.invert)
    assert (next(it)["image"][:, 1:, :, 2] == 1).all()  # channel 2 rows 1.. were 0, inverted -> 255


def test_eval_batches_ordered_and_sharded():
    batches = list(pipeline.make_eval_batches(IndexSource(10), 4, num_classes=K, shard_index=1, shard_count=2))
    assert [len(b["name"]) for b in batches] == [4, 1]
    assert [n for b in batches for n in b["name"]] == ["ex1", "ex3", "ex5", "ex7", "ex9"]
    assert _indices(batches[0]) == [1, 3, 5, 7] and batches[0]["mask_onehot"].shape == (4, H, W, K)
    unlabeled = next(pipeline.make_eval_batches(IndexSource(3), 8))
    assert set(unlabeled) == {"image", "name"}


def test_select_labeled_deterministic_and_nested():
    source = IndexSource(50)
    a = datasets.select_labeled(source, 10, seed=1)
    b = datasets.select_labeled(source, 10, seed=1)
    c = datasets.select_labeled(source, 30, seed=1)
    d = datasets.select_labeled(source, 10, seed=2)
    assert a.indices.tolist() == b.indices.tolist()
    assert set(a.indices) <= set(c.indices) and len(set(c.indices)) == 30
    assert a.indices.tolist() != d.indices.tolist()
    assert int(a[0]["image"][0, 0, 2]) == a.indices[0]
    with pytest.raises(ValueError, match="num_labeled"):
        datasets.select_labeled(source, 51)
    limited = datasets.load_split("synthetic", "train", num_labeled=30, label_seed=0)
    assert len(limited) == 30


def test_shift_scale_rotate_geometry():
    """albumentations' ShiftScaleRotate as cv2 computes it: identity, a quarter turn counter-clockwise
    about the centre, a whole-pixel shift with a zero border, a 2x zoom about the centre."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (12, 12), dtype=np.uint8)
    out = pipeline.shift_scale_rotate(image, mask, 0.0, 1.0, 0.0, 0.0)
    np.testing.assert_array_equal(out[0], image)
    np.testing.assert_array_equal(out[1], mask)
    out = pipeline.shift_scale_rotate(image, mask, 90.0, 1.0, 0.0, 0.0)
    np.testing.assert_array_equal(out[0], np.rot90(image))
    np.testing.assert_array_equal(out[1], np.rot90(mask))
    out = pipeline.shift_scale_rotate(image, mask, 0.0, 1.0, 2 / 12, -3 / 12)
    np.testing.assert_array_equal(out[0][:-3, 2:], image[3:, :-2])
    assert (out[0][-3:] == 0).all() and (out[0][:, :2] == 0).all()
    assert (out[1][-3:] == 0).all() and (out[1][:, :2] == 0).all()
    odd = image[:11, :11]
    out = pipeline.shift_scale_rotate(odd, mask[:11, :11], 0.0, 2.0, 0.0, 0.0)
    # output pixel (y, x) reads input (5 + (y - 5) / 2, ...): odd pixels land on input pixels exactly
    np.testing.assert_array_equal(out[0][1::2, 1::2], odd[3:8, 3:8])
    np.testing.assert_array_equal(out[1][1::2, 1::2], mask[3:8, 3:8])
    assert out[0].dtype == np.uint8 and out[1].dtype == np.uint8


def test_seg_aug_moves_image_and_mask_together():
    """The reference's --seg_aug: about a quarter of the pairs (flip aside) come out warped, with the
    image's mask-coded channel still on the mask; the draws are a function of (seed, position)."""
    size = 32

    class Blob:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            mask = np.zeros((size, size), np.uint8)
            mask[6:18, 4 + i:14 + i] = 2
            image = np.zeros((size, size, 3), np.uint8)
            image[..., 1] = 100 * mask
            return {"image": image, "mask": mask}

    def batches(seg_aug):
        it = pipeline.make_labeled_iterator(Blob(), batch_size=8, seed=5, num_classes=K, seg_aug=seg_aug)
        return _take(it, 6)

    plain, aug = batches(False), batches(True)
    warped = 0
    for p, a in zip(plain, aug):
        same = (p["mask"] == a["mask"]).all(axis=(1, 2))
        warped += int((~same).sum())
        for img, m in zip(a["image"], a["mask"]):
            bright = (img[..., 1] + 1) * 127.5 > 100  # image pixels more than half inside the blob
            assert np.abs(bright.astype(int) - (m == 2)).sum() <= 0.25 * (m == 2).sum() + 2
    assert 8 <= warped <= 40  # p = 0.5 of 48 pairs
    for a, b in zip(aug, batches(True)):
        np.testing.assert_array_equal(a["image"], b["image"])
