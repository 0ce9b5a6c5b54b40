"""Fused C++ kernels of the learned-scale quantizers (BiT elastic sign / unsigned, LSQ) against
their plain Paddle path, and the first-batch initialisation's Python-side flag.

Forward values and the gradient of x must match bit for bit (signed zeros included). The
gradients of alpha / step and of the shift are sums, accumulated in double by the kernels and in
float32 by Paddle, so they are compared to 1e-5 of the summed magnitudes (the scale of float32
summation error; a shift channel whose terms cancel has a tiny sum, not a tiny error).
"""

import zlib

import numpy as np
import paddle
import pytest

from paddle_bibert._cpu import flush_denormals
from paddle_bibert.quant import fused, get_quantizer
from paddle_bibert.quant import quantizers as qz

# odd sizes, and one above the kernels' 65536-element threading threshold
SHAPES = [(3, 7, 37), (5, 91, 149)]

# (quantizer name, scale, with a shift). Scales are exact binary fractions, so that the planted
# values below sit exactly on the thresholds (q = x / scale exactly 0.5, 1, -qn - 0.5, ...),
# plus one scale (0.3) that is not.
CASES = [
    ("elastic_sign", 0.75, False),
    ("elastic_sign", 0.75, True),
    ("elastic_sign", 0.3, True),
    ("elastic_unsigned", 0.5, False),
    ("elastic_unsigned", 0.5, True),
    ("elastic_unsigned", 0.3, True),
    ("lsq2", 0.25, False),
    ("lsq4", 0.25, False),
    ("lsq2_unsigned", 0.25, False),
    ("lsq4_unsigned", 0.125, False),
    ("lsq4", 0.3, False),
]


@pytest.fixture(autouse=True)
def built():
    assert fused.ops() is not None, "the fused STE kernels failed to build"


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_bitwise(a, b, what):
    diff = bits(a) != bits(b)
    assert not diff.any(), f"{what}: {int(diff.sum())} of {diff.size} differ, e.g. {a[diff][:5]} vs {b[diff][:5]}"


def make_inputs(rng, shape, scale, with_shift):
    """x [..., C] with exact zeros of both signs, values on the quantizers' thresholds and
    rounding halves; the shift b (or None) with exact zeros, and rows where x + b == 0."""
    c = shape[-1]
    x = (rng.standard_normal(shape) * 2 * scale).astype(np.float32)
    rows = x.reshape(-1, c)
    b = None
    if with_shift:
        b = (rng.standard_normal(c) * 0.2 * scale).astype(np.float32)
        b[::4] = 0.0  # -0.0 + 0.0 = +0.0 must keep sign(-0.0)
        rows[::7] = -b  # x + b == 0 exactly, x nonzero: the where() keeps x (gradient to x, not b)
        rows[1::7] = np.float32(scale) - b  # x + b == scale: the clip boundary after the shift (up to rounding)
    # the planted values go to the other rows (all of them without a shift)
    free = np.flatnonzero(np.repeat(np.arange(rows.shape[0]) % 7 >= (2 if with_shift else 0), c))
    # multiples of scale / 2 from -17 to 17: q = 0, +-0.5, +-1, +-1.5, ..., past every clip bound
    # (LSQ: -2 / 1, -8 / 7, 0 / 3, 0 / 15), each at least once, then a third of the free places
    halves = (np.arange(-34, 35, dtype=np.float32) * np.float32(scale / 2)).astype(np.float32)
    flat = x.reshape(-1)
    pos = rng.permutation(free)
    k = max(len(free) // 3, halves.size)
    flat[pos[:halves.size]] = halves
    flat[pos[halves.size:k]] = rng.choice(halves, size=max(k - halves.size, 0))
    m = len(free) // 20
    flat[pos[k:k + m]] = 0.0
    flat[pos[k + m:k + 2 * m]] = -0.0
    flat[pos[k + 2 * m:k + 3 * m]] = np.float32(-scale)  # |s| == |alpha|
    return x, b


def run(name, x, b, scale, g, plain, monkeypatch):
    """Forward + backward of a quantizer already initialised with the given scale (and shift)."""
    with monkeypatch.context() as m:
        if plain:
            m.setattr(fused, "usable", lambda t: False)
        q = get_quantizer(name, channels=x.shape[-1] if b is not None else None)
        q.train()
        q.initialized.set_value(paddle.ones([1], dtype="float32"))
        p = q.step if hasattr(q, "step") else q.alpha
        p.set_value(paddle.to_tensor([scale], dtype="float32"))
        if b is not None:
            q.shift.set_value(paddle.to_tensor(b))
        t = paddle.to_tensor(x, stop_gradient=False)
        y = q(t)
        y.backward(paddle.to_tensor(g))
        return (y.numpy(), t.grad.numpy(), p.grad.numpy(),
                q.shift.grad.numpy() if b is not None else None)


def sum_magnitude(name, g, n, layer_q):
    """A bound on the sum of |terms| behind the scalar gradient (alpha or step)."""
    if name.startswith("lsq"):
        return np.abs(g).astype(np.float64).sum() * max(layer_q.qn, layer_q.qp) / np.sqrt(n * layer_q.qp)
    return np.abs(g).astype(np.float64).sum() / np.sqrt(n)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name,scale,with_shift", CASES,
                         ids=[f"{n}-{s}{'-shift' if b else ''}" for n, s, b in CASES])
def test_fused_matches_plain(name, scale, with_shift, shape, monkeypatch):
    rng = np.random.default_rng(zlib.crc32(repr((name, scale, with_shift, shape)).encode()))
    x, b = make_inputs(rng, shape, scale, with_shift)
    g = rng.standard_normal(shape).astype(np.float32)
    g.reshape(-1)[::9] = 0.0  # zero upstream gradients: dy * mask gives -0.0 / +0.0 by sign
    g.reshape(-1)[::10] *= -1

    yf, dxf, dpf, dbf = run(name, x, b, scale, g, False, monkeypatch)
    yp, dxp, dpp, dbp = run(name, x, b, scale, g, True, monkeypatch)
    assert_bitwise(yf, yp, "forward")
    assert_bitwise(dxf, dxp, "gradient of x")

    mag = sum_magnitude(name, g, x.size, get_quantizer(name))
    assert abs(float(dpf[0]) - float(dpp[0])) <= 1e-5 * mag, (dpf, dpp, mag)
    if with_shift:
        # the shift's gradient per channel sums dx over the leading axes
        mag_b = np.abs(dxp.reshape(-1, shape[-1])).astype(np.float64).sum(0)
        assert np.all(np.abs(dbf.astype(np.float64) - dbp) <= 1e-5 * mag_b), np.abs(dbf - dbp).max()


def test_inputs_hit_the_edge_cases():
    """make_inputs really plants what the comparison is meant to cover."""
    rng = np.random.default_rng(0)
    x, b = make_inputs(rng, SHAPES[0], 0.5, True)
    flat = x.reshape(-1)
    assert (np.signbit(flat) & (flat == 0)).any() and (~np.signbit(flat) & (flat == 0)).any()
    q = x / np.float32(0.5)
    for v in (0.5, 1.0, 1.5, -0.5, 2.5, -2, -8, 3, 7, 15, 16):
        assert (q == v).any(), v
    assert (q == -1).any()  # x == -alpha
    assert ((x + b) == 0).reshape(-1, x.shape[-1])[::7].all()


def test_lsq_rounds_halves_as_paddle_round(monkeypatch):
    """Every x / step on a half, both signs, through the kernel and the plain path."""
    q_half = np.arange(-40, 41, dtype=np.float32) / 2  # -20 .. 20 step 0.5 (beyond both clips)
    x = (q_half * np.float32(0.25)).reshape(1, -1)
    g = np.ones_like(x)
    for name in ("lsq2", "lsq4", "lsq4_unsigned"):
        yf, dxf, _, _ = run(name, x, None, 0.25, g, False, monkeypatch)
        yp, dxp, _, _ = run(name, x, None, 0.25, g, True, monkeypatch)
        assert_bitwise(yf, yp, name)
        assert_bitwise(dxf, dxp, name)
    assert fused.paddle_round_rule() in ("even", "away")


def test_nonfinite_and_subnormal_inputs_match(monkeypatch):
    """inf / NaN propagate as in the plain path; subnormals under flush-to-zero (as training
    runs) are treated alike on the kernel's worker threads."""
    tiny = np.float32(1e-39)  # subnormal
    c = 67
    row = np.array([np.inf, -np.inf, np.nan, tiny, -tiny, 1.2e-38, -1.2e-38, 0.0, -0.0, 1.0], dtype=np.float32)
    x = np.resize(row, (1100, c)).astype(np.float32)  # > 65536 elements: the threaded branch
    b = np.resize(np.array([0.0, -1.3e-38, 1.3e-38, tiny], dtype=np.float32), c)
    g = np.resize(np.array([1.0, -2.0, 0.5, -0.0, tiny], dtype=np.float32), x.shape)
    for flush in (False, True):
        with flush_denormals(flush):
            for name, scale, shift in (("elastic_sign", 0.75, b), ("elastic_unsigned", 0.5, b),
                                       ("elastic_sign", 0.75, None), ("lsq4", 0.25, None)):
                yf, dxf, dpf, _ = run(name, x, shift, scale, g, False, monkeypatch)
                yp, dxp, dpp, _ = run(name, x, shift, scale, g, True, monkeypatch)
                assert_bitwise(yf, yp, f"{name} forward, flush={flush}")
                assert_bitwise(dxf, dxp, f"{name} dx, flush={flush}")
                # the inf / NaN inputs make the scalar gradients NaN in both paths
                assert np.isnan(dpf).all() == np.isnan(dpp).all()


@pytest.mark.parametrize("path", ["fused", "plain"])
@pytest.mark.parametrize("name", ["elastic_sign", "elastic_unsigned", "lsq4"])
def test_first_batch_init_then_no_host_read(name, path, monkeypatch):
    if path == "plain":
        monkeypatch.setattr(fused, "usable", lambda t: False)
    q = get_quantizer(name, channels=8 if name.startswith("elastic") else None)
    q.train()
    reads = []
    tensor_float = paddle.Tensor.__float__

    def counting_float(t):
        if t is q.initialized:
            reads.append(1)
        return tensor_float(t)

    monkeypatch.setattr(paddle.Tensor, "__float__", counting_float)
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32) + 0.5)
    scale = q.step if hasattr(q, "step") else q.alpha
    q(x)
    assert len(reads) == 1  # the first training forward reads the buffer (and the hook sees it)
    first = float(scale)
    assert float(q.initialized) == 1 and first != 1.0
    reads.clear()
    for _ in range(3):
        q(x * 3)
    assert reads == [], "a forward after the initialisation read the initialized buffer"
    assert float(scale) == first  # and did not re-initialise


@pytest.mark.parametrize("name", ["elastic_sign", "elastic_unsigned", "lsq2_unsigned"])
def test_fused_and_plain_first_batch_init_agree(name, monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 11)).astype(np.float32)
    b = (rng.standard_normal(11) * 0.1).astype(np.float32)
    out = {}
    for path in ("fused", "plain"):
        with monkeypatch.context() as m:
            if path == "plain":
                m.setattr(fused, "usable", lambda t: False)
            q = get_quantizer(name, channels=11 if name.startswith("elastic") else None)
            if name.startswith("elastic"):
                q.shift.set_value(paddle.to_tensor(b))
            q.train()
            y = q(paddle.to_tensor(x))
            scale = q.step if hasattr(q, "step") else q.alpha
            out[path] = (y.numpy(), scale.numpy())
    assert_bitwise(out["fused"][1], out["plain"][1], "initial scale")
    assert_bitwise(out["fused"][0], out["plain"][0], "first forward")


@pytest.mark.parametrize("name", ["elastic_sign", "lsq4"])
def test_state_dict_is_the_source_of_truth(name):
    """A layer loaded with initialized=1 keeps its scale; one whose buffer is reset to 0 through
    set_state_dict (of a parent layer, after it had initialised) initialises again; eval forwards
    never do."""
    src = get_quantizer(name)
    scale_name = "step" if hasattr(src, "step") else "alpha"
    getattr(src, scale_name).set_value(paddle.to_tensor([0.3], dtype="float32"))
    src.initialized.set_value(paddle.ones([1], dtype="float32"))
    state = {k: v.numpy() for k, v in src.state_dict().items()}

    x = paddle.to_tensor(np.full((2, 6), 5.0, dtype=np.float32))
    q = get_quantizer(name)
    q.set_state_dict(state)
    q.train()
    q(x)
    assert float(getattr(q, scale_name)) == pytest.approx(0.3) and float(q.initialized) == 1

    # now known initialised (Python flag set); a checkpoint that says "not initialised" wins
    model = paddle.nn.Sequential(q)
    model.set_state_dict({f"0.{k}": v for k, v in dict(state, initialized=np.zeros([1], dtype=np.float32)).items()})
    assert float(q.initialized) == 0
    q.eval()
    q(x)
    assert float(q.initialized) == 0  # eval forwards do not initialise
    q.train()
    q(x)
    assert float(q.initialized) == 1 and float(getattr(q, scale_name)) != pytest.approx(0.3)


def test_first_batch_initialisation_takes_its_reduction_from_the_caller():
    # data parallelism installs a cross-rank mean (paddle_bibert.distributed); the quantizers
    # themselves only apply whatever reduction they were given
    x = paddle.to_tensor(np.array([[1.0, -3.0], [2.0, -2.0]], dtype=np.float32))
    q = get_quantizer("elastic_sign", channels=2)
    q.train()
    q(x)
    assert float(q.alpha) == pytest.approx(2 * 2.0)  # 2 mean|x| of this batch
    try:
        qz.set_first_batch_mean_abs(lambda t: t.abs().max().reshape([1]))
        q2 = get_quantizer("elastic_sign", channels=2)
        q2.train()
        q2(x)
        assert float(q2.alpha) == pytest.approx(2 * 3.0)
    finally:
        qz.set_first_batch_mean_abs(None)
    assert qz.first_batch_mean_abs is not None and float(qz.first_batch_mean_abs(x)) == pytest.approx(2.0)


def test_a_non_editable_install_carries_the_fused_kernels_source(tmp_path):
    """What a wheel or a plain ``pip install .`` copies (setuptools' build_py) includes the
    ``_ops.cc`` that the fused kernels are compiled from on first use."""
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "paddle_bibert" / "quant" / "fused.py").is_file()
    assert (tmp_path / "paddle_bibert" / "quant" / "_ops.cc").is_file()


def test_tensor_sign_matches_exact_arithmetic_and_the_plain_path(monkeypatch):
    """BiT's weight binarizer (one scale per matrix) on a matrix above the threading threshold.

    Dyadic values and a power-of-two size make every mean exact, so the kernel must match the
    float64 formulas bit for bit, edge values included: w == mean (sign +1) and |w - mean| == 1
    (inside the clip window) next to just outside it."""
    rng = np.random.default_rng(7)
    n_in, n_out = 256, 1024  # 2**18 values
    half = (rng.integers(-1536, 1536, size=n_in * n_out // 2) / 1024.0).astype(np.float32)
    step = np.float32(2.0 ** -10)
    half[:4] = [0.0, 1.0, 1.0 + step, 1.0 - step]  # deviations from the mean: 0 and the clip edges
    mean = np.float32(0.25)
    w = np.concatenate([mean + half, mean - half]).astype(np.float32)  # mean exactly 0.25
    w = w[rng.permutation(w.size)].reshape(n_in, n_out)
    g = (rng.integers(-512, 512, size=w.shape) / 256.0).astype(np.float32)

    t = paddle.to_tensor(w, stop_gradient=False)
    y = get_quantizer("tensor_mean_sign")(t)
    y.backward(paddle.to_tensor(g))

    wc = w.astype(np.float64) - 0.25
    assert (wc == 0).any() and (np.abs(wc) == 1).any() and (np.abs(wc) == 1 + 2.0 ** -10).any()
    alpha = np.abs(w.astype(np.float64)).mean()
    assert_bitwise(y.numpy(), np.where(wc < 0, -alpha, alpha).astype(np.float32), "forward")
    m = np.where(np.abs(wc) <= 1, g, 0).astype(np.float64)
    assert_bitwise(t.grad.numpy(), (m - m.mean()).astype(np.float32), "gradient of w")

    with monkeypatch.context() as mp:
        mp.setattr(fused, "usable", lambda x: False)
        tp = paddle.to_tensor(w, stop_gradient=False)
        yp = get_quantizer("tensor_mean_sign")(tp)
        yp.backward(paddle.to_tensor(g))
    np.testing.assert_allclose(yp.numpy(), y.numpy(), rtol=1e-6)
    np.testing.assert_allclose(tp.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-6)
