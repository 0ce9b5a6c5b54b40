"""Quantizers: forward values against numpy formulas, gradients against the stated STE rules."""

import numpy as np
import paddle
import pytest

from paddle_bibert.quant import QUANTIZERS, fused, get_quantizer


@pytest.fixture(autouse=True, params=["fused", "plain"])
def kernel_path(request, monkeypatch):
    """Every quantizer test runs on the fused C++ kernels and on the plain Paddle ops."""
    if request.param == "fused":
        assert fused.ops() is not None, "the fused STE kernels failed to build"
    else:
        monkeypatch.setattr(fused, "usable", lambda x: False)
    return request.param


def np_sign(x):
    return np.where(np.signbit(x), -1.0, 1.0)


def fwd_bwd(q, x, g):
    t = paddle.to_tensor(x, dtype="float32", stop_gradient=False)
    y = q(t)
    (y * paddle.to_tensor(g, dtype="float32")).sum().backward()
    return y.numpy(), t.grad.numpy()


def test_ste_sign_values_zero_convention_and_clipped_gradient():
    x = np.array([-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 1.0001, 3.0], dtype=np.float32)
    g = np.arange(1, 10, dtype=np.float32)
    y, gx = fwd_bwd(get_quantizer("ste_sign"), x, g)
    np.testing.assert_array_equal(y, [-1, -1, -1, -1, 1, 1, 1, 1, 1])
    # gradient passes where |x| <= 1, boundaries included
    np.testing.assert_array_equal(gx, g * np.array([0, 1, 1, 1, 1, 1, 1, 0, 0]))
    assert set(np.unique(y)) == {-1.0, 1.0}


def test_ste_sign_keeps_sign_of_gelu_underflow():
    # float32 GELU of a very negative h returns -0.0 or a tiny negative (subnormal included);
    # where it switches from one to the other depends on the CPU's math library, so both cases
    # are built here rather than found. Either way sign(gelu(h)) must equal sign(h) = -1.
    tiny = np.array([-0.0, -1.64e-07, -1e-30, -1e-40, 0.0, 1e-40], dtype=np.float32)
    assert np.signbit(tiny[:4]).all() and tiny[3] != 0  # -1e-40 is a (negative) subnormal
    np.testing.assert_array_equal(get_quantizer("ste_sign")(paddle.to_tensor(tiny)).numpy(),
                                  [-1, -1, -1, -1, 1, 1])
    # and through Paddle's GELU, whatever this CPU returns for these h (-0.0 or a tiny negative)
    h = paddle.to_tensor([-10.0, -6.0, -5.5, -0.1, 0.0, 0.1])
    y = get_quantizer("ste_sign")(paddle.nn.functional.gelu(h)).numpy()
    np.testing.assert_array_equal(y, [-1, -1, -1, -1, 1, 1])


def test_channel_mean_sign_matches_numpy_and_centred_clipped_ste(rng):
    w = (rng.standard_normal((7, 5)) * 1.2).astype(np.float32)  # Paddle layout [in, out]
    w[:, 0] = [1.0, -1.0, 0.0, 2.0, -2.0, 0.5, -0.5]  # mean 0: |wc| == 1 on the boundary
    g = rng.standard_normal((7, 5)).astype(np.float32)
    y, gw = fwd_bwd(get_quantizer("channel_mean_sign"), w, g)

    wc = w - w.mean(axis=0, keepdims=True)
    alpha = np.abs(w).mean(axis=0, keepdims=True)  # per output channel, un-centred
    np.testing.assert_allclose(y, alpha * np_sign(wc), rtol=1e-6)
    assert all(len(np.unique(np.abs(y[:, j]))) == 1 for j in range(5))  # one scale per column
    # d/dW of clip(W - mean_0 W): mask, then the centring Jacobian (subtract the column mean)
    m = (np.abs(wc) <= 1).astype(np.float32)
    expect = g * m - (g * m).mean(axis=0, keepdims=True)
    np.testing.assert_allclose(gw, expect, rtol=1e-5, atol=1e-6)
    assert m[:2, 0].all() and not m[3:5, 0].any()  # boundary passes, beyond is cut


def test_channel_mean_sign_zero_centred_weight_is_plus_one():
    w = np.array([[1.0, 2.0], [1.0, -2.0]], dtype=np.float32)  # column 0 centres to exact zeros
    y, _ = fwd_bwd(get_quantizer("channel_mean_sign"), w, np.ones_like(w))
    np.testing.assert_array_equal(y[:, 0], [1.0, 1.0])
    np.testing.assert_array_equal(y[:, 1], [2.0, -2.0])


def test_row_mean_sign_per_row(rng):
    e = rng.standard_normal((4, 6)).astype(np.float32)
    g = rng.standard_normal((4, 6)).astype(np.float32)
    y, ge = fwd_bwd(get_quantizer("row_mean_sign"), e, g)
    ec = e - e.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(y, np.abs(e).mean(axis=1, keepdims=True) * np_sign(ec), rtol=1e-6)
    m = (np.abs(ec) <= 1).astype(np.float32)
    np.testing.assert_allclose(ge, g * m - (g * m).mean(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_bool_function_values_and_strict_window():
    s = np.array([-1e4, -2.0, -1.0, -0.99, -0.0, 0.0, 0.5, 1.0, 1.5], dtype=np.float32)
    g = np.arange(1, 10, dtype=np.float32)
    y, gs = fwd_bwd(get_quantizer("bool"), s, g)
    np.testing.assert_array_equal(y, [0, 0, 0, 0, 0, 0, 1, 1, 1])  # S == 0 -> 0
    np.testing.assert_array_equal(gs, g * np.array([0, 0, 0, 1, 1, 1, 1, 0, 0]))  # |s| < 1


def test_registry_names_and_errors():
    assert {"ste_sign", "channel_mean_sign", "row_mean_sign", "bool"} <= set(QUANTIZERS)
    assert get_quantizer("none") is None and get_quantizer(None) is None
    with pytest.raises(ValueError, match="unknown quantizer 'stesign'.*ste_sign"):
        get_quantizer("stesign")
    with pytest.raises(TypeError):
        get_quantizer(3)
