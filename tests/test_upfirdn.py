"""upfirdn2d against a direct NumPy implementation of its definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semgan_jax.nn.upfirdn import downsample_2x, make_kernel, upfirdn2d, upsample_2x


def upfirdn2d_numpy(x, k, up, down, pad):
    """Definition, loop by loop: zero-insert, pad/crop, true 2-D convolution, decimate. NHWC."""
    (uy, ux), (dy, dx) = up, down
    py0, py1, px0, px1 = pad
    k = np.asarray(k, np.float64)
    if k.ndim == 1:
        k = np.outer(k, k)
    n, h, w, c = x.shape
    z = np.zeros((n, h * uy, w * ux, c))
    z[:, ::uy, ::ux] = x
    hh, ww = h * uy, w * ux
    p = np.zeros((n, hh + max(py0, 0) + max(py1, 0), ww + max(px0, 0) + max(px1, 0), c))
    p[:, max(py0, 0):max(py0, 0) + hh, max(px0, 0):max(px0, 0) + ww] = z
    p = p[:, max(-py0, 0):p.shape[1] - max(-py1, 0), max(-px0, 0):p.shape[2] - max(-px1, 0)]
    kh, kw = k.shape
    oh, ow = p.shape[1] - kh + 1, p.shape[2] - kw + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            win = p[:, i:i + kh, j:j + kw, :]
            out[:, i, j] = np.einsum("nhwc,hw->nc", win, k[::-1, ::-1])
    return out[:, ::dy, ::dx]


CASES = [
    # kernel, up, down, pad
    ([1, 3, 3, 1], (1, 1), (1, 1), (1, 2, 1, 2)),
    ([1, 3, 3, 1], (2, 2), (1, 1), (2, 1, 2, 1)),
    ([1, 3, 3, 1], (1, 1), (2, 2), (1, 1, 1, 1)),
    ([1, 2, 1], (2, 2), (2, 2), (1, 1, 1, 1)),                 # odd kernel, up and down
    ([1, 2, 3, 2, 1], (1, 1), (2, 2), (3, 0, -1, 2)),          # odd kernel, asymmetric and negative pads
    (np.arange(12, dtype=np.float32).reshape(3, 4) + 1, (2, 1), (1, 2), (2, 3, 0, 1)),  # 2-D, anisotropic
    ([1, 3, 3, 1], (2, 2), (2, 2), (-1, 0, 0, -1)),
    ([1, 2, 3, 2, 1], (2, 3), (1, 1), (-1, 2, 3, -2)),       # polyphase with crops, up 3
    ([1, 3, 3, 1], (1, 1), (1, 1), (0, 0, 0, 0)),              # plain FIR, no padding
]


@pytest.mark.parametrize("kernel,up,down,pad", CASES)
def test_upfirdn2d_matches_numpy_definition(kernel, up, down, pad):
    x = np.random.RandomState(0).randn(2, 7, 6, 3).astype(np.float32)
    k = make_kernel(kernel)
    got = np.asarray(jax.jit(lambda a: upfirdn2d(a, k, up=up, down=down, pad=pad))(x))
    want = upfirdn2d_numpy(x, k, up, down, pad)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_separable_kernel_equals_its_2d_outer_product():
    x = np.random.RandomState(1).randn(1, 8, 8, 2).astype(np.float32)
    k1 = make_kernel([1, 3, 3, 1])
    k2 = make_kernel([1, 3, 3, 1], separable=False)
    assert k2.shape == (4, 4) and abs(k2.sum() - 1) < 1e-6
    a = upfirdn2d(x, k1 * 2, up=2, pad=(2, 1))
    b = upfirdn2d(x, k2 * 4, up=2, pad=(2, 1))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_up_and_downsample_shapes_and_dc_gain():
    x = jnp.ones((2, 8, 8, 3))
    up = upsample_2x(x)
    down = downsample_2x(x)
    assert up.shape == (2, 16, 16, 3) and down.shape == (2, 4, 4, 3)
    # interior of a constant image keeps its value (DC gain 1)
    np.testing.assert_allclose(np.asarray(up)[:, 4:12, 4:12], 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(down)[:, 1:3, 1:3], 1.0, atol=1e-6)


def test_gradient_is_the_adjoint():
    """<upfirdn(x), y> == <x, grad_x <upfirdn(x), y>>: the VJP is the exact adjoint (linear op)."""
    rs = np.random.RandomState(2)
    x = rs.randn(1, 5, 6, 2).astype(np.float32)
    k = make_kernel([1, 3, 3, 1])
    f = lambda a: upfirdn2d(a, k, up=2, down=1, pad=(2, 1))  # noqa: E731
    y = rs.randn(*f(x).shape).astype(np.float32)
    g = jax.grad(lambda a: jnp.sum(f(a) * y))(x)
    np.testing.assert_allclose(float(jnp.sum(f(x) * y)), float(jnp.sum(g * x)), rtol=1e-4)
