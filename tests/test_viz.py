"""viz: grids written as PNG read back into their examples and columns."""

import numpy as np
from PIL import Image

from semgan_jax import viz


def test_ungrid_reads_back_what_grid_and_save_png_wrote(tmp_path):
    rng = np.random.default_rng(0)
    cols = [rng.integers(0, 256, (7, 6, 5, 3), dtype=np.uint8) for _ in range(3)]
    path = tmp_path / "g.png"
    viz.save_png(path, viz.grid(cols, ncol=3), scale=4)
    back = viz.ungrid(np.asarray(Image.open(path)), n=7, n_columns=3, size=(6, 5), ncol=3, scale=4)
    assert len(back) == 3
    for a, b in zip(cols, back):
        np.testing.assert_array_equal(a, b)
    first = viz.ungrid(np.asarray(Image.open(path)), n=2, n_columns=3, size=(6, 5), ncol=3, scale=4)
    np.testing.assert_array_equal(first[1], cols[1][:2])
