"""Packed runtime: compiled kernels vs numpy on odd sizes, and logits vs the Paddle model."""

import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import paddle
import pytest

from paddle_bibert import binarize_model, export_packed
from paddle_bibert.export import pack_bits, pack_signs, unpack_bits
from paddle_bibert.quant.quantizers import ElasticSign
from paddle_bibert.runtime import Kernels, available_isas, compiled_available, load_packed
from paddle_bibert.runtime import reference as ref

from test_export import padded_ids, trained_1bit_model
from test_surgery import IDS, make_model, np_bibert_logits

ISAS = available_isas()
#: the set a runtime starts on: BIBERT_ISA's (the whole suite can run on one set), else the fastest
DEFAULT_ISA = os.environ.get("BIBERT_ISA") or (ISAS[0] if ISAS else "generic")
needs_c = pytest.mark.skipif(not compiled_available(), reason="extension not built")


def test_c_kernels_are_built_where_a_compiler_exists():
    # Otherwise every compiled-kernel test below would skip and the C path would go untested.
    import shutil
    import sysconfig

    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}): the runtime uses its numpy kernels")
    assert compiled_available(), ("the runtime's C kernels did not build although a compiler exists; "
                                  "reinstall with `pip install -e .` and read its build output")
    # the portable kernels always exist; where the CPU has AVX2, the kernels AVX2-only CPUs run
    # are built and offered too, so the tests below exercise them (the kern fixture runs each)
    assert "generic" in ISAS, ISAS
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    if " avx2" in flags:
        assert "avx2" in ISAS, ISAS


def test_a_source_distribution_carries_every_kernel_source(tmp_path):
    """``pip install`` from an sdist compiles the kernels from what the sdist holds: every file
    of ``csrc/``, the headers too (setuptools adds an Extension's .c files, not its headers)."""
    import tarfile

    from conftest import REPO

    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        packed = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    csrc = os.path.join(REPO, "paddle_bibert", "runtime", "csrc")
    sources = {f"paddle_bibert/runtime/csrc/{name}" for name in os.listdir(csrc)}
    assert any(name.endswith(".h") for name in sources) and any(n.endswith(".c") for n in sources)
    assert sources <= packed, sorted(sources - packed)


@pytest.fixture(params=(ISAS + ["avx2-no-tables"] if "avx2" in ISAS else ISAS) or [None])
def kern(request):
    """Compiled kernels of each instruction set this CPU has, and AVX2 without table lookup (the
    AVX-512 set's way: products and attention on XOR and popcount) (process-wide: restored
    after)."""
    if request.param is None:
        pytest.skip("extension not built")
    k = Kernels("c", isa=request.param.split("-")[0])
    k.tables = not request.param.endswith("no-tables")
    yield k
    k.tables = True
    Kernels("c", isa=DEFAULT_ISA)


NUMPY = Kernels("numpy")


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 9, 63), (5, 13, 65), (9, 37, 130),
                                     (6, 8, 64), (4, 33, 200), (9, 100, 130)])
def test_binary_products_match_numpy(kern, rng, m, n, k):
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, 0] = -0.0  # sign -1
    w = rng.standard_normal((n, k)).astype(np.float32)
    a = kern.pack_signs(x)
    np.testing.assert_array_equal(a, pack_signs(x))
    w_il = kern.prepare(pack_signs(w))
    for op in (0, 1):
        np.testing.assert_array_equal(kern.popcount_gemm(a, w_il, n, op),
                                      NUMPY.popcount_gemm(a, w_il, n, op))
    alpha = rng.random(n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = kern.bin_linear(a, w_il, n, k, alpha, bias)
    # bit-identical to the numpy reference, and equal to the float math it stands for
    np.testing.assert_array_equal(y, NUMPY.bin_linear(a, w_il, n, k, alpha, bias))
    # the sign-bit output is exactly the packed sign of y (pad bits 0)
    np.testing.assert_array_equal(kern.bin_linear(a, w_il, n, k, alpha, bias, signs=True),
                                  pack_signs(y))
    sx, sw = np.where(np.signbit(x), -1.0, 1.0), np.where(np.signbit(w), -1.0, 1.0)
    np.testing.assert_allclose(y, (sx @ sw.T) * alpha + bias, rtol=1e-6, atol=1e-6)


def test_binary_linear_output_has_the_exact_sign(kern):
    """A dot product of exactly 0 plus a tiny bias: the output is the bias itself (a float32
    sum of +-alpha terms can leave a residue of ~1e-6 of either sign and flip it)."""
    k, n = 768, 8
    a = pack_signs(np.tile([1.0, -1.0], (4, k // 2)).astype(np.float32))  # dot with +1s = 0
    w_il = kern.prepare(pack_signs(np.ones((n, k), np.float32)))
    alpha = np.full(n, 0.4127, np.float32)
    bias = np.array([3e-9, -3e-9, 2.8e-7, -2.8e-7, 0.0, -1e-45, 1e-30, -1e-30], np.float32)
    y = kern.bin_linear(a, w_il, n, k, alpha, bias)
    np.testing.assert_array_equal(y, np.broadcast_to(bias, y.shape))
    signs = kern.bin_linear(a, w_il, n, k, alpha, bias, signs=True)
    np.testing.assert_array_equal(signs, pack_signs(np.broadcast_to(bias, y.shape)))


def _round_once(d, alpha, bias):
    """The float32 nearest the exact d * alpha + bias (ties to even), by exact fractions."""
    v = Fraction(int(d)) * Fraction(float(alpha)) + Fraction(float(bias))
    x = np.float32(float(v))
    near = [np.nextafter(x, np.float32(-np.inf)), x, np.nextafter(x, np.float32(np.inf))]
    dist = [abs(Fraction(float(c)) - v) for c in near]
    best = [c for c, e in zip(near, dist) if e == min(dist)]
    return min(best, key=lambda c: int(np.array(c).view(np.int32)) & 1)


# (d, alpha, bias) where the exact value lies just off the midpoint of two floats, by less than
# a double's rounding: rounding to double and then to float lands on the wrong one
TIES = [(3, 1 + 2.0 ** -23, -(2.0 ** -60)), (-3, 1 + 2.0 ** -23, 2.0 ** -60),
        (5, 1 + 2.0 ** -22, 2.0 ** -58), (48, 1 + 2.0 ** -23, -(2.0 ** -50)),
        (-1536, 1 + 2.0 ** -23, 2.0 ** -50)]


def test_linear_y_rounds_the_exact_value_once(rng):
    """The binary linear's output is the exact d * alpha + bias rounded once to float32 (as an
    FMA gives it): against exact fractions on random values and on values where rounding to
    double first lands on a float midpoint and rounds again the wrong way."""
    for d, alpha, bias in TIES:
        twice = np.float32(np.float64(d) * np.float32(alpha) + np.float32(bias))
        assert twice != _round_once(d, alpha, bias)  # the case is one that catches double rounding
        assert ref.linear_y(d, np.float32(alpha), np.float32(bias)) == _round_once(d, alpha, bias)
    d = rng.integers(-3072, 3073, 400)
    alpha = (rng.random(400) * 10.0 ** rng.integers(-8, 3, 400)).astype(np.float32)
    bias = (rng.standard_normal(400) * 10.0 ** rng.integers(-12, 3, 400)).astype(np.float32)
    y = ref.linear_y(d, alpha, bias)
    np.testing.assert_array_equal(y, [_round_once(*t) for t in zip(d, alpha, bias)])


@pytest.mark.parametrize("m, n", [(4, 64), (8, 128), (4, 32), (5, 70), (1, 8), (3, 64)])
def test_binary_linear_rounds_once_on_every_route(kern, m, n):
    """Every output route (fused tile pairs, a lone panel, a ragged end, short tiles; with the
    nibble tables and without) gives the once-rounded value where double rounding would not, in
    floats and in the outputs' signs through a quantizer's shift."""
    for d, alpha, bias in TIES[:4]:  # |d| <= k
        k = 67 if d % 2 else 68  # k - d even
        a = pack_signs(np.ones((m, k), np.float32))
        w = np.ones((n, k), np.float32)
        w[:, : (k - d) // 2] = -1.0  # dot with the all-ones rows: d
        w_il = kern.prepare(pack_signs(w))
        al, bi = np.full(n, alpha, np.float32), np.full(n, bias, np.float32)
        want = _round_once(d, alpha, bias)
        shift = np.full(n, -want, np.float32)  # y + shift = 0 only for the once-rounded y
        for tables in (True, False):
            kern.tables = tables
            nib = Kernels.prepare_nibbles(pack_signs(w)) if kern.uses_nibbles else None
            y = kern.bin_linear(a, w_il, n, k, al, bi, nibbles=nib)
            np.testing.assert_array_equal(y, np.full((m, n), want, np.float32))
            bits = kern.bin_linear(a, w_il, n, k, al, bi, nibbles=nib,
                                   quant=(shift, 1.0, ref.Q_SIGN, ref.ACT_NONE))
            np.testing.assert_array_equal(bits, NUMPY.bin_linear(a, w_il, n, k, al, bi,
                                                                 quant=(shift, 1.0, ref.Q_SIGN,
                                                                        ref.ACT_NONE)))
        kern.tables = True


@pytest.mark.parametrize("b, l, h, heads", [(1, 1, 8, 2), (2, 7, 32, 4), (3, 70, 24, 2),
                                            (1, 65, 65, 1), (2, 130, 256, 2), (1, 66, 128, 2),
                                            (1, 128, 768, 12), (1, 128, 384, 12)])
@pytest.mark.parametrize("mode", [0, 1])
def test_attention_matches_numpy(kern, rng, b, l, h, heads, mode):
    """Shapes whose queries, keys and head dimensions fill the kernels' tiles, and leave rows,
    a lone panel of 32 keys, or nibbles of a head over (BERT-base's and MiniLM's heads too)."""
    qkv = rng.standard_normal((b, l, 3 * h)).astype(np.float32)
    keep = rng.random((b, l)) > 0.3
    ctx = kern.attention(pack_signs(qkv), keep, h, heads, mode)
    np.testing.assert_array_equal(ctx, ref.attention(pack_signs(qkv), keep, h, heads, mode))
    # spelled out for one head: A = 1[Qb Kb^T > 0] on kept keys, context = A Vb
    s = np.where(np.signbit(qkv), -1.0, 1.0).reshape(b, l, 3, heads, h // heads)[0, :, :, -1]
    a = ((s[:, 0] @ s[:, 1].T) > 0) & keep[0] if mode == 0 else np.broadcast_to(keep[0], (l, l))
    np.testing.assert_array_equal(ctx[0, :, -(h // heads):], a @ s[:, 2])


def test_embedding_and_layer_norm_match_numpy(kern, rng):
    v, h = 50, 70
    bits = pack_signs(rng.standard_normal((v, h)).astype(np.float32))
    alpha = rng.random(v).astype(np.float32)
    pos, tok = (rng.standard_normal((r, h)).astype(np.float32) for r in (20, 2))
    ids, tt = rng.integers(0, v, (3, 9)), rng.integers(0, 2, (3, 9))
    np.testing.assert_array_equal(kern.embed(ids, tt, bits, alpha, pos, tok),
                                  NUMPY.embed(ids, tt, bits, alpha, pos, tok))
    # 4 x 128 tokens of 256 values: split in row chunks across the threads
    wide = pack_signs(rng.standard_normal((v, 256)).astype(np.float32))
    pos2, tok2 = (rng.standard_normal((r, 256)).astype(np.float32) for r in (128, 2))
    ids2, tt2 = rng.integers(0, v, (4, 128)), rng.integers(0, 2, (4, 128))
    np.testing.assert_array_equal(kern.embed(ids2, tt2, wide, alpha, pos2, tok2),
                                  NUMPY.embed(ids2, tt2, wide, alpha, pos2, tok2))
    x, r = (rng.standard_normal((5, h)).astype(np.float32) for _ in range(2))
    x[0], r[0] = np.resize([1.0, -1.0, 2.0, -2.0], h), 0.0  # a row with mean exactly 0
    x[1] += 300.0  # mean^2 ~ 4e4 times the variance: var as E[s^2] - mean^2 must keep its digits
    g, bt = rng.standard_normal(h).astype(np.float32), rng.standard_normal(h).astype(np.float32)
    np.testing.assert_allclose(kern.layer_norm(x, r, g, bt, 1e-12),
                               NUMPY.layer_norm(x, r, g, bt, 1e-12), rtol=1e-6, atol=1e-6)
    s = (x + r).astype(np.float64)
    z = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(kern.layer_norm(x, r, g, bt, 1e-12), z * g + bt, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("rows, h", [(9, 70), (9, 384), (300, 768)])
def test_layer_norm_gives_the_same_bits_on_every_instruction_set(kern, rng, rows, h):
    """The vector LayerNorms add in the generic code's lane order (the next layer takes signs of
    values near 0, so the kernel sets must agree to the bit, not to a tolerance). 300 rows of 768
    are split in row chunks across the threads, the last one short."""
    x, r = (rng.standard_normal((rows, h)).astype(np.float32) * 3 for _ in range(2))
    # rows of large values that cancel, around small ones: their mean depends on the order of the
    # additions, and the outputs of the small values on the mean
    for row in x[:4]:  # pairs +-2^k that cancel exactly, the small values between them
        k = 2.0 ** rng.integers(36, 44, h // 4)
        row[rng.permutation(h)[: 2 * len(k)]] = np.concatenate([k, -k])
    g, bt = rng.standard_normal(h).astype(np.float32), np.zeros(h, np.float32)
    got = [kern.layer_norm(x, res, g, bt, 1e-12) for res in (r, None)]
    want = [Kernels("c", isa="generic").layer_norm(x, res, g, bt, 1e-12) for res in (r, None)]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("h", [70, 768])
def test_layer_norm_outputs_near_zero_take_the_exact_sign(kern, rng, h):
    """Biases that cancel row 0's outputs to within a float rounding: each output's sign is the
    sign of the exact value (numpy in float64, rounded once), which float arithmetic would get
    wrong about half the time; the next layer binarizes these outputs."""
    x, r = (rng.standard_normal((3, h)).astype(np.float32) for _ in range(2))
    g = rng.standard_normal(h).astype(np.float32)
    s = (x[0] + r[0]).astype(np.float64)
    bt = -((s - s.mean()) / np.sqrt(s.var() + 1e-12) * g).astype(np.float32)
    got, want = kern.layer_norm(x, r, g, bt, 1e-12), ref.layer_norm(x, r, g, bt, 1e-12)
    assert np.abs(want[0]).max() < 1e-6 and np.signbit(want[0]).mean() > 0.2
    np.testing.assert_array_equal(np.signbit(got[0]), np.signbit(want[0]))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows, h", [(9, 70), (300, 768)])
def test_layer_norm_signs_are_the_packed_signs_of_its_output(kern, rng, rows, h):
    """The fused packing gives what packing the output separately gives (pad bits 0), on rows
    split across the threads too, and on outputs that are exactly the bias (0 among them)."""
    x, r = (rng.standard_normal((rows, h)).astype(np.float32) for _ in range(2))
    g, bt = rng.standard_normal(h).astype(np.float32), rng.standard_normal(h).astype(np.float32)
    g[:3], bt[:3] = 0.0, np.array([0.0, -1.0, 2.0], np.float32)  # outputs exactly 0, -1, 2
    for k in (kern, NUMPY):
        out, bits = k.layer_norm(x, r, g, bt, 1e-12, signs=True)
        np.testing.assert_array_equal(out, k.layer_norm(x, r, g, bt, 1e-12))
        np.testing.assert_array_equal(bits, pack_signs(out))


@pytest.mark.parametrize("rows, h", [(9, 70), (300, 384)])
def test_layer_norm_quantizer_bits_are_pack_act_of_its_output(kern, rng, rows, h):
    """The quantizers' bits the LayerNorm writes beside its output (the next products' inputs:
    a shifted sign, BiT's {0, 1} threshold, the plain sign, one of them twice) equal what
    reference.pack_act gives of the output, on rows split across the threads too; outputs that
    are exactly the bias (0 among them) and shifts that cancel them are in the rows."""
    x, r = (rng.standard_normal((rows, h)).astype(np.float32) for _ in range(2))
    g, bt = rng.standard_normal(h).astype(np.float32), rng.standard_normal(h).astype(np.float32)
    g[:3], bt[:3] = 0.0, np.array([0.0, -1.0, 2.0], np.float32)  # outputs exactly 0, -1, 2
    shift = (0.3 * rng.standard_normal(h)).astype(np.float32)
    shift[:3] = [0.0, 1.0, -2.0]  # sums of exactly 0
    quants = [(shift, 1.0, ref.Q_SIGN), (-shift, np.float32(0.7), ref.Q_UNSIGNED), (None, 1.0, ref.Q_SIGN),
              (shift, 1.0, ref.Q_SIGN)]
    for k in (kern, NUMPY):
        out, bits = k.layer_norm(x, r, g, bt, 1e-12, quants=quants)
        np.testing.assert_array_equal(out, k.layer_norm(x, r, g, bt, 1e-12))
        assert len(bits) == len(quants)
        for (sh, scale, kind), b in zip(quants, bits):
            np.testing.assert_array_equal(b, ref.pack_act(out, sh, scale, kind))
        assert k.layer_norm(x, r, g, bt, 1e-12, quants=[])[1] == []


@needs_c
def test_layer_norm_refuses_bad_quantizers():
    """A shift of the wrong length, an unknown kind, too many quantizers, or signs and quantizers
    at once: a one-line error naming it, on both backends; the compiled kernel's own checks
    refuse the kind and the count when the Python checks are skipped."""
    x = np.ones((2, 8), np.float32)
    g, bt = np.ones(8, np.float32), np.zeros(8, np.float32)
    for kern in (Kernels("c"), NUMPY):
        for quants, match in [([(np.zeros(7, np.float32), 1.0, ref.Q_SIGN)], "shift of shape"),
                              ([(None, 1.0, 5)], "unknown kind"),
                              ([(None, 1.0, ref.Q_SIGN)] * 5, "at most 4")]:
            with pytest.raises(ValueError, match=match):
                kern.layer_norm(x, None, g, bt, 1e-12, quants=quants)
        with pytest.raises(ValueError, match="not both"):
            kern.layer_norm(x, None, g, bt, 1e-12, signs=True, quants=[])
    from paddle_bibert.runtime.kernels import _C
    out, bits = np.empty_like(x), np.empty((2, 1), np.uint64)
    for spec, match in [([(None, 1.0, 5, bits)], "kind 5"),
                        ([(None, 1.0, ref.Q_SIGN, bits)] * 5, "at most 4"),
                        ([(np.zeros(7, np.float32), 1.0, ref.Q_SIGN, bits)], "shift"),
                        ([(None, 1.0, ref.Q_SIGN, np.empty(1, np.uint64))], "bits")]:
        with pytest.raises(ValueError, match=match):
            _C.layer_norm(x, None, 2, 8, g, bt, 1e-12, out, spec)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_empty_batch_rejected(backend, tmp_path):
    if backend == "c" and not compiled_available():
        pytest.skip("extension not built")
    k = Kernels(backend)
    with pytest.raises(ValueError, match="empty batch"):
        k.pack_signs(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="empty batch"):
        k.bin_linear(np.zeros((0, 1), np.uint64), k.prepare(np.zeros((8, 1), np.uint64)), 8, 64,
                     np.ones(8), np.zeros(8))
    with pytest.raises(ValueError, match="non-empty"):
        k.attention(np.zeros((0, 4, 1), np.uint64), np.zeros((0, 4), bool), 8, 2)
    model = make_model()
    binarize_model(model)
    export_packed(model, str(tmp_path / "m.bibert"))
    runtime = load_packed(str(tmp_path / "m.bibert"), backend=backend)
    with pytest.raises(ValueError, match="empty batch"):
        runtime(np.zeros((0, 8), np.int64))
    with pytest.raises(ValueError, match="outside"):
        runtime(np.array([[1, 2, 999]]))


@needs_c
def test_attention_refuses_bad_head_counts_and_table_sizes(rng):
    """A head count below 1 is refused before any array is made; the compiled table of
    exponentials refuses a head size whose (dh + 2)(dh + 1) doubles would overflow the size check."""
    from paddle_bibert.runtime.kernels import _C
    qkv = pack_signs(rng.standard_normal((1, 4, 3 * 64)).astype(np.float32))
    for kern in (Kernels("c"), NUMPY):
        with pytest.raises(ValueError, match="split in -2 heads"):
            kern.attention(qkv, np.ones((1, 4), bool), 64, -2)
    for dh in (0, 2 ** 32 - 1):
        with pytest.raises(ValueError, match="head size"):
            _C.softmax_table(dh, 1.0, np.empty(4, np.float64))


@needs_c
def test_unknown_or_unsupported_isa_rejected():
    with pytest.raises(ValueError, match="unknown kernel set"):
        Kernels("c", isa="sse9")


def _ids(rng, b=12, l=16, vocab=60):
    ids = rng.integers(1, vocab, (b, l))
    for i in range(b):
        ids[i, rng.integers(1, l + 1):] = 0  # pad id 0 at the end, lengths 1..l
    return ids


@pytest.mark.parametrize("attention", ["bool", "softmax_sign"])
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_runtime_matches_paddle_binarized_model(tmp_path, rng, attention, backend):
    if backend == "c" and not compiled_available():
        pytest.skip("extension not built")
    for seed in (1, 2):
        model = make_model(seed=seed)
        binarize_model(model, {"attention": attention})
        runtime = _packed_runtime(model, str(tmp_path / f"{seed}.bibert"), backend)
        ids = np.concatenate([IDS, _ids(rng)[:, :8]])
        _assert_runtime_matches(model, runtime, ids, rng, rtol=0)


def test_runtime_matches_the_float64_equations(tmp_path):
    """Independent of Paddle: tests/test_surgery.py's float64 numpy forward of BiBERT."""
    model = make_model(seed=8)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    binarize_model(model)
    export_packed(model, str(tmp_path / "m.bibert"))
    eps = (model.bert.embeddings.layer_norm._epsilon, model.bert.encoder.layers[0].norm1._epsilon)
    want = np_bibert_logits(sd, IDS, model.config, *eps)
    np.testing.assert_allclose(load_packed(str(tmp_path / "m.bibert"))(IDS), want, atol=1e-4)


def test_gelu_underflow_keeps_the_sign_of_h(tmp_path):
    """float32 GELU returns -0.0 for h <= -6 or so; the runtime binarizes sign bits of h, which
    must equal sign(gelu(h)) there, so the two agree on a model where that happens a lot."""
    model = make_model(seed=3)
    binarize_model(model)
    seen = {}

    def keep_h(layer, inp, out):  # returns None: the output is left as it is
        seen["h"] = out.numpy()

    hook = model.bert.encoder.layers[0].linear1.register_forward_post_hook(keep_h)
    with paddle.no_grad():
        want = model(paddle.to_tensor(IDS)).numpy()
    hook.remove()
    h = seen["h"]
    g = paddle.nn.functional.gelu(paddle.to_tensor(h)).numpy()
    underflow = (g == 0) & (h < 0)
    assert underflow.sum() > 10 and np.signbit(g[underflow]).all()  # -0.0 from Paddle's GELU
    np.testing.assert_array_equal(np.signbit(g), np.signbit(h))
    export_packed(model, str(tmp_path / "m.bibert"))
    np.testing.assert_allclose(load_packed(str(tmp_path / "m.bibert"))(IDS), want, atol=1e-4)


def _packed_runtime(model, path, backend):
    export_packed(model, path)
    runtime = load_packed(path, backend=backend)
    assert runtime.backend == ("numpy" if backend == "numpy" else f"c-{DEFAULT_ISA}")
    return runtime


def _assert_runtime_matches(model, runtime, ids, rng, rtol):
    """Same labels and logits to float rounding as the Paddle model, on random token types."""
    tt = (rng.random(ids.shape) > 0.5).astype(np.int64)
    with paddle.no_grad():
        want = model(paddle.to_tensor(ids), paddle.to_tensor(tt)).numpy()
    got = runtime(ids, tt)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=rtol)
    assert np.abs(want).max() > 0.1  # logits are not trivially zero


def _paddle_states(model, ids, embeddings=False, norms=False):
    """Paddle's hidden states of ``model`` on ``ids``, and the outputs of its Q/K/V projections
    and FFN input dense (plus the embedding LayerNorm and each layer's norms if asked), by name."""
    seen = {}

    def tap(name):
        def hook(layer, inp, out):
            seen[name] = out.numpy()
        return hook

    hooks = []
    if embeddings:
        hooks.append(model.bert.embeddings.layer_norm.register_forward_post_hook(tap("embeddings")))
    for i, layer in enumerate(model.bert.encoder.layers):
        subs = [(layer.self_attn.q_proj, "q"), (layer.self_attn.k_proj, "k"), (layer.self_attn.v_proj, "v"),
                (layer.linear1, "ffn_in")]
        if norms:
            subs += [(layer.norm1, "ln1"), (layer.norm2, "ln2")]
        for sub, name in subs:
            hooks.append(sub.register_forward_post_hook(tap(f"layers.{i}.{name}")))
    with paddle.no_grad():
        _, _, states = model.bert(paddle.to_tensor(ids), output_hidden_states=True, return_dict=False)
    for hk in hooks:
        hk.remove()
    return seen, states


def test_hidden_states_and_every_sign_decision_match_paddle(tmp_path):
    model = make_model(seed=6)
    binarize_model(model)
    export_packed(model, str(tmp_path / "m.bibert"))
    runtime = load_packed(str(tmp_path / "m.bibert"))
    seen, states = _paddle_states(model, IDS, embeddings=True, norms=True)
    logits, mine = runtime(IDS, output_hidden_states=True)
    assert len(mine) == len(states) == 3
    for a, b in zip(mine, states):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    trace = runtime.intermediates(IDS)
    for i in range(2):
        seen[f"layers.{i}.qkv"] = np.concatenate([seen.pop(f"layers.{i}.{m}") for m in "qkv"], -1)
    assert set(seen) <= set(trace)
    for name, want in seen.items():  # identical bits wherever the forward takes a sign
        np.testing.assert_array_equal(np.signbit(trace[name]), np.signbit(want), err_msg=name)
    np.testing.assert_array_equal(trace["logits"], logits)


def test_runtime_imports_neither_paddle_nor_paddlenlp(tmp_path):
    model = make_model()
    binarize_model(model)
    path = str(tmp_path / "m.bibert")
    export_packed(model, path)
    code = ("import sys, numpy as np\n"
            "from paddle_bibert.runtime import load_packed\n"
            f"m = load_packed({path!r})\n"
            "print(m(np.array([[2, 3, 4, 0]])).shape, m.backend)\n"
            "bad = [k for k in sys.modules if k.split('.')[0] in ('paddle', 'paddlenlp')]\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "(1, 2)" in out.stdout


# --------------------------------------------- elastic activations, {0,1} inputs, BiT attention


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (5, 13, 65), (9, 37, 130), (6, 8, 64),
                                     (4, 33, 200), (9, 100, 130)])
def test_unsigned_binary_linear_matches_numpy(kern, rng, m, n, k):
    """{0,1} inputs x sign weights: popcount(A) - 2 popcount(A AND w), BiT's FFN output dense."""
    a01 = rng.random((m, k)) > 0.6
    a01[0] = False  # a row of zeros: y = bias
    a = pack_bits(a01)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w_il = kern.prepare(pack_signs(w))
    alpha = rng.random(n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = kern.bin_linear(a, w_il, n, k, alpha, bias, unsigned=True)
    np.testing.assert_array_equal(y, NUMPY.bin_linear(a, w_il, n, k, alpha, bias, unsigned=True))
    np.testing.assert_array_equal(kern.bin_linear(a, w_il, n, k, alpha, bias, signs=True,
                                                  unsigned=True), pack_signs(y))
    sw = np.where(np.signbit(w), -1.0, 1.0)
    np.testing.assert_allclose(y, (a01 @ sw.T) * alpha + bias, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y[0], bias)


@pytest.mark.parametrize("act", [ref.ACT_NONE, ref.ACT_RELU, ref.ACT_GELU])
@pytest.mark.parametrize("kind", [ref.Q_SIGN, ref.Q_UNSIGNED])
@pytest.mark.parametrize("with_shift", [False, True])
def test_pack_act_matches_numpy_and_the_formulas(kern, rng, act, kind, with_shift):
    rows, n, a = 7, 130, np.float32(0.75)
    x = (rng.standard_normal((rows, n)) * 3).astype(np.float32)
    # zeros, GELU underflow, v / a == 0.5, NaN (-NaN too), v + shift == 0 exactly; in the first
    # 8 values (one vector of the AVX2 path) and again in the scalar tail (n = 130)
    # (no NaN through GELU: the sign of erf(NaN) is the C library's choice)
    nan = np.float32(np.nan) if act != ref.ACT_GELU else np.float32(2.0)
    special = np.array([0.0, -0.0, -8.0, -30.0, 0.375, 1e-30, -nan, 0.5], np.float32)
    x[0, :8], x[1, -8:] = special, special
    x[2, 8:16] = nan
    shift = (rng.standard_normal(n) * 0.3).astype(np.float32) if with_shift else None
    if shift is not None:
        shift[:8] = shift[-8:] = [0.0, 0.0, 0.0, -0.0, 0.0, -0.0, 0.1, -0.5]
    got = kern.pack_act(x, shift, a, kind, act)
    np.testing.assert_array_equal(got, NUMPY.pack_act(x, shift, a, kind, act))
    v = {ref.ACT_NONE: x, ref.ACT_RELU: np.where(x > 0, x, np.float32(0)),
         ref.ACT_GELU: ref.gelu32(x)}[act]
    if shift is not None:
        s = v + shift
        v = np.where(s == 0, v, s)  # an exact-zero sum keeps v (and its sign bit)
    want = np.signbit(v) if kind == ref.Q_SIGN else (v / a > np.float32(0.5))
    np.testing.assert_array_equal(unpack_bits(got, n), want)
    if kind == ref.Q_SIGN and act == ref.ACT_NONE:
        assert unpack_bits(got, n)[0, 1]  # -0.0 (+ a zero shift) stays negative
    if kind == ref.Q_UNSIGNED and act == ref.ACT_NONE:
        assert not unpack_bits(got, n)[0, 4]  # 0.375 / 0.75 = 0.5 exactly: rounds down to 0


@pytest.mark.parametrize("act", [ref.ACT_NONE, ref.ACT_RELU, ref.ACT_GELU])
@pytest.mark.parametrize("kind", [ref.Q_SIGN, ref.Q_UNSIGNED])
@pytest.mark.parametrize("unsigned", [False, True])
@pytest.mark.parametrize("m, n, k", [(9, 70, 130), (8, 64, 384)])
def test_binary_linear_through_a_quantizer_gives_pack_act_of_its_output(kern, rng, act, kind,
                                                                        unsigned, m, n, k):
    """The bits of the next layer's elastic quantizer straight from the product (y never
    written) are those pack_act gives y: on full tiles (8 x 64) and ragged ones (9 x 70)."""
    a = pack_bits(rng.random((m, k)) > 0.5) if unsigned else pack_signs(rng.standard_normal((m, k)))
    w_il = kern.prepare(pack_signs(rng.standard_normal((n, k))))
    alpha = (rng.random(n) * 0.1).astype(np.float32)
    bias = (rng.standard_normal(n) * 0.5).astype(np.float32)
    y = kern.bin_linear(a, w_il, n, k, alpha, bias, unsigned=unsigned)
    shift = (rng.standard_normal(n) * 0.3).astype(np.float32)
    if act == ref.ACT_NONE:
        shift[:8] = -y[0, :8]  # exact-zero sums: v keeps its sign bit
    scale = np.float32(0.2)
    np.testing.assert_array_equal(y[0, :8] + shift[:8] == 0, act == ref.ACT_NONE)
    for sh in (shift, None):
        want = NUMPY.pack_act(y, sh, scale, kind, act)
        got = kern.bin_linear(a, w_il, n, k, alpha, bias, unsigned=unsigned,
                              quant=(sh, scale, kind, act))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(
            NUMPY.bin_linear(a, w_il, n, k, alpha, bias, unsigned=unsigned,
                             quant=(sh, scale, kind, act)), want)
        if sh is not None:
            assert 0.1 < unpack_bits(want, n).mean() < 0.9  # both bit values occur


@pytest.mark.parametrize("m, n, k", [(9, 70, 130), (8, 64, 384), (5, 33, 64)])
def test_sign_cut_gives_the_sign_bits_of_the_product(kern, rng, m, n, k):
    """The counts with the sign bit set form one interval per channel (sign_cut, by bisection
    on the product's own expression; checked here at every count); the count compared with it
    gives the bits the float epilogue gives, on full (8 x 64) and ragged tiles, for alpha of
    either sign or (signed) zero and biases that put y = 0 exactly (+0.0 and -0.0)."""
    a = pack_signs(rng.standard_normal((m, k)))
    w_il = kern.prepare(pack_signs(rng.standard_normal((n, k))))
    alpha = (rng.standard_normal(n) * 0.1).astype(np.float32)
    bias = (rng.standard_normal(n) * 0.5).astype(np.float32)
    alpha[:6], bias[:6] = [0.0, 0.0, 0.0, -0.0, 0.0, -0.0], [0.3, -0.3, 0.0, 0.0, -0.0, -0.0]
    bias[6:9] = [0.0, -0.0, 0.0]  # y = +-0 at the middle count
    cut = ref.sign_cut(k, alpha, bias)
    lo, hi = cut
    counts = np.arange(k + 1)[:, None]
    y = ((k - 2 * counts) * alpha.astype(np.float64) + bias.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal((lo <= counts) & (counts <= hi), np.signbit(y))
    want = kern.bin_linear(a, w_il, n, k, alpha, bias, signs=True)
    np.testing.assert_array_equal(kern.bin_linear_cut(a, w_il, n, k, alpha, bias, cut), want)
    np.testing.assert_array_equal(NUMPY.bin_linear_cut(a, w_il, n, k, alpha, bias, cut), want)
    assert 0.1 < unpack_bits(want, n).mean() < 0.9


@pytest.mark.parametrize("act", [ref.ACT_NONE, ref.ACT_RELU, ref.ACT_GELU])
@pytest.mark.parametrize("kind", [ref.Q_SIGN, ref.Q_UNSIGNED])
def test_quantizer_count_cut_gives_the_quantizers_bits(kern, rng, act, kind):
    """A sign-fed product's bits through the next quantizer (act, shift, threshold) are those of
    its counts in one interval per channel (quant_cut, every count evaluated): compared with the
    bits pack_act gives the float output, on full and ragged tiles, alphas of either sign and
    zero, and (the sign) shifts that make exact zero sums (v keeps its sign bit)."""
    m, n, k = 9, 70, 130
    a = pack_signs(rng.standard_normal((m, k)))
    w = pack_signs(rng.standard_normal((n, k)))
    w_il = kern.prepare(w)
    alpha = (rng.standard_normal(n) * 0.05).astype(np.float32)
    alpha[:3] = [0.0, -0.0, 0.0]
    bias = (rng.standard_normal(n) * 0.5).astype(np.float32)
    y = kern.bin_linear(a, w_il, n, k, alpha, bias)
    shift = (rng.standard_normal(n) * 0.3).astype(np.float32)
    if kind == ref.Q_SIGN:  # (unsigned, such a sum can pass one count alone: the test below)
        shift[3:10] = -y[0, 3:10]
    scale = np.float32(0.2)
    nibs = [None] + ([kern.prepare_nibbles(w)] if kern.uses_nibbles else [])
    for sh in (shift, None):
        cut = ref.quant_cut(k, alpha, bias, sh, scale, kind, act)
        if cut is None:  # GELU dips: v > t can hold at both ends of the counts
            assert kind == ref.Q_UNSIGNED and act == ref.ACT_GELU
            continue
        want = NUMPY.pack_act(y, sh, scale, kind, act)
        for nib in nibs:
            got = kern.bin_linear_cut(a, w_il, n, k, alpha, bias, cut, nibbles=nib)
            np.testing.assert_array_equal(got, want)
        if sh is not None:
            assert 0.05 < unpack_bits(want, n).mean() < 0.95


def test_quantizer_count_cut_refuses_bits_that_are_not_an_interval():
    """A shift whose sum with v is exactly 0 keeps v: with y(c) = (16 - 2c) / 4, shift -2 and
    threshold 2 * 0.5, the counts 0 and 1 pass (v + shift = 2, 1.5), 2 and 3 do not (1, 0.5),
    4 does (y = 2 = -shift, kept: 2 / 2 > 0.5) and 5 on do not; no interval holds that."""
    alpha, bias = np.array([0.25], np.float32), np.zeros(1, np.float32)
    shift = np.array([-2.0], np.float32)
    c = np.arange(17)
    y = ((16 - 2 * c) * 0.25).astype(np.float32)[:, None]
    np.testing.assert_array_equal(ref.act_bits(y, shift, 2.0, ref.Q_UNSIGNED)[:, 0],
                                  np.isin(c, [0, 1, 4]))
    assert ref.quant_cut(16, alpha, bias, shift, 2.0, ref.Q_UNSIGNED) is None
    lo, hi = ref.quant_cut(16, alpha, bias, shift, 0.5, ref.Q_UNSIGNED)  # 0..4 pass
    assert (lo[0], hi[0]) == (0, 4)


def _floats_around(c, steps=3):
    """c and the float32 values up to ``steps`` ulps either side of it."""
    out, lo, hi = [c], c, c
    for _ in range(steps):
        lo, hi = np.nextafter(lo, np.float32(-np.inf)), np.nextafter(hi, np.float32(np.inf))
        out += [lo, hi]
    return out


@pytest.mark.parametrize("scale", [1.0, 0.3, 3.1e-5, 7.1e3, 1.3e-37, 1e38, -0.7, 0.0])
def test_unsigned_quantizer_bit_at_the_floats_around_its_threshold(kern, rng, scale):
    """Q_UNSIGNED's bit is v / scale > 0.5 in float32: every kernel set gives numpy's bits at
    the floats around 0.5 scale (where the quotient rounds to 0.5 or just above it), for scales
    of every size, negative and zero, in pack_act and in the binary linear's epilogue (alpha 0
    makes y the bias)."""
    s = np.float32(scale)
    c = np.float32(0.5) * s
    v = _floats_around(c) + _floats_around(np.float32(0.5) * np.float32(abs(scale) or 1.0))
    v += [np.float32(-0.0), np.float32(np.inf), np.float32(-np.inf), np.float32(np.nan)]
    v = np.array(v + list(rng.standard_normal(64 - len(v))), np.float32)
    x = np.stack([v, v[::-1]])
    want = NUMPY.pack_act(x, None, s, ref.Q_UNSIGNED)
    with np.errstate(divide="ignore", invalid="ignore"):  # scale 0; the NaN
        np.testing.assert_array_equal(unpack_bits(want, 64), x / s > np.float32(0.5))
    np.testing.assert_array_equal(kern.pack_act(x, None, s, ref.Q_UNSIGNED), want)
    k = 130
    a = pack_signs(rng.standard_normal((8, k)))
    w = pack_signs(rng.standard_normal((64, k)))
    zero = np.zeros(64, np.float32)
    quant = (None, s, ref.Q_UNSIGNED, ref.ACT_NONE)
    want = NUMPY.pack_act(np.tile(v, (8, 1)), None, s, ref.Q_UNSIGNED)
    for nib in [None] + ([kern.prepare_nibbles(w)] if kern.uses_nibbles else []):
        got = kern.bin_linear(a, kern.prepare(w), 64, k, zero, v, quant=quant, nibbles=nib)
        np.testing.assert_array_equal(got, want)
    if s > 0:
        assert 0 < unpack_bits(want, 64)[0, :7].sum() < 7  # the threshold lies among them


def test_binary_linear_quantizer_rejects_bad_parameters(rng):
    a = pack_signs(rng.standard_normal((2, 64)))
    w_il = NUMPY.prepare(pack_signs(rng.standard_normal((8, 64))))
    one = np.ones(8, np.float32)
    for kern in [NUMPY] + ([Kernels("c")] if compiled_available() else []):
        with pytest.raises(ValueError, match="shift of shape"):
            kern.bin_linear(a, w_il, 8, 64, one, one, quant=(np.ones(3), 1.0, ref.Q_SIGN, 0))
        with pytest.raises(ValueError, match="unknown kind"):
            kern.bin_linear(a, w_il, 8, 64, one, one, quant=(None, 1.0, 7, 0))


def test_gelu32_follows_float32_gelu():
    """Close to the exact GELU, and -0.0 where float32's 1 + erf cancels (as Paddle's GELU)."""
    import math
    x = np.linspace(-5, 5, 2001).astype(np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(ref.gelu32(x), exact, rtol=1e-5, atol=1e-6)
    far = np.array([-6.0, -8.0, -50.0], np.float32)
    assert (ref.gelu32(far) == 0).all() and np.signbit(ref.gelu32(far)).all()
    g = paddle.nn.functional.gelu(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(ref.gelu32(x), g, rtol=1e-3, atol=2e-6)


def test_lane_sum_adds_in_the_kernels_order(rng):
    """The softmax denominator: key j into partial sum j % 8 in key order, then pairwise."""
    for n in (1, 7, 8, 9, 64, 130):
        e = np.exp(rng.standard_normal((3, n)) * 30)  # spread exponents: the order shows
        for row, got in zip(e, ref.lane_sum(e)):
            lane = [0.0] * 8
            for j, x in enumerate(row):
                lane[j % 8] += float(x)
            want = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]))
            assert got == want


@pytest.mark.parametrize("score_scale", [0.31, 0.02, 0.0, -0.05, -0.4])
@pytest.mark.parametrize("map_factor", [0.05, 1.0, 3.0, 40.0])
def test_softmax_map_for_every_sign_of_scale_and_every_cut(kern, rng, score_scale, map_factor):
    """The kernels keep the keys on one side of a count cut; the reference tests every key.
    Negative score scales put the top score at the largest count; tiny and large map scales
    keep every key or none."""
    b, l, h, heads = 3, 70, 128, 2
    qkv = rng.standard_normal((b, l, 3 * h)).astype(np.float32)
    keep = rng.random((b, l)) > 0.3
    keep[-1] = False
    map_scale = np.float32(map_factor / l)
    args = (pack_signs(qkv), keep, h, heads, ref.MODE_SOFTMAX, score_scale, map_scale)
    np.testing.assert_array_equal(kern.attention(*args), NUMPY.attention(*args))


@pytest.mark.parametrize("b, l, h, heads", [(1, 1, 8, 2), (2, 7, 32, 4), (3, 70, 24, 2),
                                            (1, 65, 65, 1), (2, 130, 256, 2)])
def test_softmax_map_attention_matches_numpy(kern, rng, b, l, h, heads):
    """BiT's attention: S = Qb Kb^T a_q a_k / sqrt(d), p = softmax over kept keys,
    A = 1[p / a_p > 0.5], context = A Vb (integers; the runtime scales them by a_p a_v)."""
    qkv = rng.standard_normal((b, l, 3 * h)).astype(np.float32)
    keep = rng.random((b, l)) > 0.3
    keep[0, 0] = True
    if b > 1:
        keep[-1] = False  # no key kept: the mask cancels in the softmax, every key counts
    dh = h // heads
    score_scale, map_scale = 1.7 * 2.1 / np.sqrt(dh), np.float32(4.0 / max(l, 2))
    ctx = kern.attention(pack_signs(qkv), keep, h, heads, ref.MODE_SOFTMAX, score_scale,
                         map_scale)
    np.testing.assert_array_equal(ctx, NUMPY.attention(pack_signs(qkv), keep, h, heads,
                                                       ref.MODE_SOFTMAX, score_scale, map_scale))
    # spelled out for the last head of each sequence, in float64
    s = np.where(np.signbit(qkv), -1.0, 1.0).reshape(b, l, 3, heads, dh)[:, :, :, -1]
    for i in range(b):
        kept = keep[i] if keep[i].any() else np.ones(l, bool)
        sc = np.where(kept, s[i, :, 0] @ s[i, :, 1].T * score_scale, -np.inf)
        p = np.exp(sc - sc.max(1, keepdims=True))
        p = (p / p.sum(1, keepdims=True)).astype(np.float32)
        a = (p / map_scale > 0.5) & kept
        np.testing.assert_array_equal(ctx[i, :, -dh:], a @ s[i, :, 2])

def test_softmax_attention_keeps_a_table_per_head_size_and_scale(kern, rng):
    """The kernels keep BiT's table of exponentials between calls: calls alternating two score
    scales and two head sizes each still give numpy's map (a table reused for another scale or
    head size would not)."""
    b, l, h = 2, 40, 64
    qkv = pack_signs(rng.standard_normal((b, l, 3 * h)).astype(np.float32))
    keep = rng.random((b, l)) > 0.2
    for _ in range(2):
        for heads, score_scale in [(2, 0.9), (2, 0.35), (4, 0.9), (4, -0.5)]:
            args = (qkv, keep, h, heads, ref.MODE_SOFTMAX, score_scale, np.float32(0.05))
            np.testing.assert_array_equal(kern.attention(*args), NUMPY.attention(*args))



@needs_c
@pytest.mark.parametrize("dh, score_scale", [(32, 0.4), (32, -0.3), (64, 1e-300), (7, 2.5)])
def test_softmax_table_flags_the_rows_monotone_over_every_count(dh, score_scale):
    """The table's last row flags each row m that falls (rises, for a negative scale) from count
    m over all dh + 1 counts; the exponentials are exp(s(c) - s(m)), s(c) = (dh - 2c) scale,
    the C library's exp (math.exp): numpy's own SIMD exp, where it has one (AVX-512 CPUs), may
    differ from it in the last bit."""
    from paddle_bibert.runtime.kernels import _C
    table = np.full((dh + 2, dh + 1), np.nan)
    _C.softmax_table(dh, score_scale, table)
    c = np.arange(dh + 1)
    s = (dh - 2 * c).astype(np.float64) * score_scale
    np.testing.assert_array_equal(table[:-1], np.vectorize(math.exp)(s[None, :] - s[:, None]))
    steps = np.diff(table[:-1], axis=1)
    mono = (steps <= 0).all(1) if score_scale >= 0 else (steps >= 0).all(1)
    np.testing.assert_array_equal(table[-1], mono.astype(np.float64))
    assert mono.any()


@needs_c
def test_softmax_map_without_the_tables_flags_checks_each_row(rng):
    """With every flag cleared the map checks each row's counts itself (the path of a row
    whose exponentials are not monotone), with keys padded and with none: still numpy's map."""
    from paddle_bibert.runtime.kernels import _C
    b, l, h, heads = 2, 70, 128, 4
    qkv = pack_signs(rng.standard_normal((b, l, 3 * h)).astype(np.float32))
    for keep, score_scale in [(rng.random((b, l)) > 0.3, 0.45), (rng.random((b, l)) > 0.3, -0.2),
                              (np.ones((b, l)), 0.45)]:  # padded keys, and none
        keep = keep.astype(np.uint8)
        table = np.empty((h // heads + 2, h // heads + 1))
        _C.softmax_table(h // heads, score_scale, table)
        assert table[-1].all()
        table[-1] = 0.0
        out = np.empty((b, l, h), np.float32)
        _C.attention(qkv, keep, b, l, h, heads, ref.MODE_SOFTMAX, out, score_scale, 0.04, 1.0,
                     table)
        np.testing.assert_array_equal(out, NUMPY.attention(qkv, keep, h, heads, ref.MODE_SOFTMAX,
                                                           score_scale, np.float32(0.04)))


@pytest.mark.parametrize("mode", [ref.MODE_BOOL, ref.MODE_SOFTMAX])
def test_attention_scales_its_context_in_double(kern, rng, mode):
    """context_scale s: each count c comes out as float32(float64(c) * s), as the model's trace
    computes it in numpy; s = a_p a_v is a double that float32 does not hold."""
    b, l, h, heads = 2, 70, 128, 2
    qkv = pack_signs(rng.standard_normal((b, l, 3 * h)).astype(np.float32))
    keep = rng.random((b, l)) > 0.3
    s = float(np.float32(0.61)) * float(np.float32(1.37))
    scales = (0.5, np.float32(0.03)) if mode == ref.MODE_SOFTMAX else (1.0, 1.0)
    counts = NUMPY.attention(qkv, keep, h, heads, mode, *scales)
    got = kern.attention(qkv, keep, h, heads, mode, *scales, context_scale=s)
    np.testing.assert_array_equal(got, (counts.astype(np.float64) * s).astype(np.float32))
    assert np.abs(counts).max() > 0 and not np.array_equal(got, counts)


@needs_c
@pytest.mark.parametrize("threads", [1, 3])
def test_kernels_match_numpy_at_any_thread_count(rng, threads):
    """The threads split every kernel by rows (the attention by blocks of 64 queries, a whole
    sequence at one thread) and take each other's chunks when done: three threads on fewer
    cores, with chunk counts that do not divide among them, still give numpy's numbers."""
    before = Kernels("c").num_threads
    kern = Kernels("c", num_threads=threads)
    try:
        b, l, heads = 3, 130, 2
        for h in (48, 128):  # heads of 24 and 64 dimensions
            qkv = pack_signs(rng.standard_normal((b, l, 3 * h)).astype(np.float32))
            keep = rng.random((b, l)) > 0.3
            for mode, scales in [(ref.MODE_BOOL, ()), (ref.MODE_SOFTMAX, (0.5, np.float32(0.03)))]:
                np.testing.assert_array_equal(kern.attention(qkv, keep, h, heads, mode, *scales),
                                              NUMPY.attention(qkv, keep, h, heads, mode, *scales))
        m, n, k = 390, 77, 700
        a = pack_signs(rng.standard_normal((m, k)).astype(np.float32))
        w = pack_signs(rng.standard_normal((n, k)).astype(np.float32))
        alpha, bias = rng.random(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        args = (a, Kernels.prepare(w), n, k, alpha, bias)
        np.testing.assert_array_equal(kern.bin_linear(*args), NUMPY.bin_linear(*args))
        x, res = (rng.standard_normal((m, 300)).astype(np.float32) for _ in range(2))
        g, beta = rng.standard_normal(300).astype(np.float32), rng.standard_normal(300).astype(np.float32)
        out, bits = kern.layer_norm(x, res, g, beta, 1e-12, signs=True)
        np.testing.assert_allclose(out, ref.layer_norm(x, res, g, beta, 1e-12), atol=1e-6)
        np.testing.assert_array_equal(bits, pack_signs(out))
        shift = rng.standard_normal(300).astype(np.float32)
        for rows in (390, 40):  # chunks of 32 rows (GELU: 16), a last one short
            for kind, act in [(ref.Q_UNSIGNED, ref.ACT_RELU), (ref.Q_SIGN, ref.ACT_GELU)]:
                np.testing.assert_array_equal(kern.pack_act(x[:rows], shift, 0.7, kind, act),
                                              NUMPY.pack_act(x[:rows], shift, 0.7, kind, act))
    finally:
        Kernels("c", num_threads=before)


@needs_c
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("n, k", [(77, 700), (700, 3072)])  # weights under and over 256 KiB
def test_short_products_cut_finer_give_numpy_numbers(rng, threads, n, k):
    """A product of a few rows is cut into at least two chunks a thread: by rows where its
    weights are small, by channels where they are not (both with the nibble panels and
    without); row counts from 1 to 40 give numpy's counts, floats and bits."""
    before = Kernels("c").num_threads
    kern = Kernels("c", num_threads=threads)
    try:
        w = pack_signs(rng.standard_normal((n, k)).astype(np.float32))
        w_il, nib = Kernels.prepare(w), Kernels.prepare_nibbles(w)
        alpha = rng.random(n).astype(np.float32)
        bias = (0.3 * rng.standard_normal(n)).astype(np.float32)
        for m in (1, 3, 4, 9, 13, 32, 40):
            a = pack_signs(rng.standard_normal((m, k)).astype(np.float32))
            want = NUMPY.popcount_gemm(a, w_il, n)
            for tables in (True, False):
                kern.tables = tables
                panels = nib if kern.uses_nibbles else None
                np.testing.assert_array_equal(kern.popcount_gemm(a, w_il, n, nibbles=panels), want)
                args = (a, w_il, n, k, alpha, bias)
                np.testing.assert_array_equal(kern.bin_linear(*args, nibbles=panels),
                                              NUMPY.bin_linear(*args))
                np.testing.assert_array_equal(kern.bin_linear(*args, signs=True, nibbles=panels),
                                              NUMPY.bin_linear(*args, signs=True))
    finally:
        kern.tables = True
        Kernels("c", num_threads=before)


@needs_c
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_a_last_tile_of_fewer_rows_gives_numpy_numbers(rng, isa, threads):
    """Where the rows do not fill the last tile of four, that tile runs through the full tiles'
    fused kernels with zero rows added and only its own rows copied out: every remainder (1-3
    rows, alone and after whole tiles), channels in fused pairs, a lone panel and a ragged end,
    gives numpy's floats, sign bits, quantizer bits, count-cut bits and {0,1}-input outputs,
    with the nibble panels and without."""
    before = Kernels("c").num_threads
    kern = Kernels("c", isa=isa, num_threads=threads)
    n, k = 110, 384  # 64 + 32 channels fused, then 14 more
    w = pack_signs(rng.standard_normal((n, k)).astype(np.float32))
    w_il, nib = Kernels.prepare(w), Kernels.prepare_nibbles(w)
    alpha = (rng.random(n) + 0.1).astype(np.float32)
    bias = (0.3 * rng.standard_normal(n)).astype(np.float32)
    cut = ref.sign_cut(k, alpha, bias)
    quant = ((0.2 * rng.standard_normal(n)).astype(np.float32), 0.7, ref.Q_UNSIGNED, ref.ACT_RELU)
    try:
        for m in (1, 2, 3, 5, 6, 7, 11):
            a = pack_signs(rng.standard_normal((m, k)).astype(np.float32))
            a01 = pack_bits(rng.random((m, k)) > 0.6)
            for tables in (True, False):
                kern.tables = tables
                panels = nib if kern.uses_nibbles else None
                for x, unsigned in ((a, False), (a01, True)):
                    args = (x, w_il, n, k, alpha, bias)
                    for extra in ({}, {"signs": True}, {"quant": quant}):
                        np.testing.assert_array_equal(
                            kern.bin_linear(*args, unsigned=unsigned, nibbles=panels, **extra),
                            NUMPY.bin_linear(*args, unsigned=unsigned, **extra))
                np.testing.assert_array_equal(
                    kern.bin_linear_cut(a, w_il, n, k, alpha, bias, cut, nibbles=panels),
                    NUMPY.bin_linear_cut(a, w_il, n, k, alpha, bias, cut))
    finally:
        kern.tables = True
        Kernels("c", isa=DEFAULT_ISA, num_threads=before)


@needs_c
def test_products_of_no_rows_at_two_threads_return():
    """The compiled products of an empty batch (the Python wrappers refuse one first) return at
    two threads instead of dividing by an empty job's chunk count (a signal, so in a process
    of its own)."""
    code = """
import numpy as np
from paddle_bibert.export import pack_signs
from paddle_bibert.runtime import Kernels
from paddle_bibert.runtime.kernels import _C
Kernels("c", num_threads=2)
rng = np.random.default_rng(0)
for n, k in ((77, 700), (700, 3072)):  # weights under and over the split size
    w = pack_signs(rng.standard_normal((n, k)).astype(np.float32))
    a = np.zeros((0, w.shape[1]), np.uint64)
    for nib in (None, Kernels.prepare_nibbles(w)):
        _C.popcount_gemm(a, 0, a.shape[1], Kernels.prepare(w), n, 0, np.empty((0, n), np.int32), nib)
print("returned")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "returned", (r.returncode, r.stderr[-500:])


@pytest.mark.parametrize("recipe", ["bibert_elastic", "bit"])
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_runtime_matches_paddle_on_elastic_recipes(rng, tmp_path, recipe, backend):
    """Elastic scales initialised by a training-mode forward, shifts moved off 0; logits of the
    packed runtime = logits of the Paddle model in eval mode, on padded batches of 8 and 70
    tokens (70: not a multiple of 64, so keys span two words with pad bits)."""
    if backend == "c" and not compiled_available():
        pytest.skip("extension not built")
    for seed in (1, 2):
        model = trained_1bit_model(recipe, seed=seed)
        batches = [IDS, padded_ids(rng, 10, 70)]
        runtime = _packed_runtime(model, str(tmp_path / f"{seed}.bibert"), backend)
        for ids in batches:
            _assert_runtime_matches(model, runtime, ids, rng, rtol=1e-5)
        # the shifts matter: moving them back to 0 changes the model's logits
        for _, q in model.named_sublayers():
            if isinstance(q, ElasticSign) and q.shift is not None:
                q.shift.set_value(np.zeros(q.shift.shape, np.float32))
        with paddle.no_grad():
            unshifted = model(paddle.to_tensor(batches[1])).numpy()
        assert np.abs(unshifted - runtime(batches[1])).max() > 1e-2


@pytest.mark.parametrize("recipe", ["bibert", "bibert_elastic", "bit"])
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_products_writing_quantized_bits_match_the_float_route(rng, tmp_path, recipe, backend):
    """Hidden 64: Q/K/V rows fill whole words, so each projection writes its shifted sign bits
    and the FFN's first product the bits of the second one's quantizer, no floats in between
    (sign-fed products: from the count compared with sign_cut's interval).
    Tracing takes the float route (y written, then packed); the logits are the same bit for bit
    (both exact: no CPU-dependent arithmetic is compared)."""
    if backend == "c" and not compiled_available():
        pytest.skip("extension not built")
    model = trained_1bit_model(recipe, seed=3, hidden_size=64, intermediate_size=128)
    runtime = _packed_runtime(model, str(tmp_path / "m.bibert"), backend)
    ids = padded_ids(rng, 6, 70)
    fused = runtime(ids)
    traced, _ = runtime(ids, output_hidden_states=True)
    np.testing.assert_array_equal(fused, traced)
    assert np.ptp(fused[:, 0]) > 0  # the inputs are told apart


def test_bit_hidden_states_and_sign_decisions_match_paddle(tmp_path):
    model = trained_1bit_model("bit", seed=5)
    export_packed(model, str(tmp_path / "m.bibert"))
    runtime = load_packed(str(tmp_path / "m.bibert"))
    ids = padded_ids(np.random.default_rng(5), 6, 70)
    seen, states = _paddle_states(model, ids)
    logits, mine = runtime(ids, output_hidden_states=True)
    for a, b in zip(mine, states):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    trace = runtime.intermediates(ids)
    for i, layer in enumerate(model.bert.encoder.layers):
        qkv = np.concatenate([seen[f"layers.{i}.{m}"] for m in "qkv"], -1)
        np.testing.assert_allclose(trace[f"layers.{i}.qkv"], qkv, atol=1e-4)
        # the {0, a} input of the FFN output dense: 1[(relu(h) + b) / a > 0.5]
        q = layer.linear2.act_quantizer
        h = seen[f"layers.{i}.ffn_in"]
        want = (np.maximum(h, 0) + q.shift.numpy()) / np.float32(float(q.alpha)) > 0.5
        mine = (np.maximum(trace[f"layers.{i}.ffn_in"], 0) + q.shift.numpy()) \
            / np.float32(float(q.alpha)) > 0.5
        np.testing.assert_array_equal(mine, want)
        assert 0.02 < want.mean() < 0.98  # both values occur


def test_nibble_panels_hold_each_channels_nibbles_in_order(rng):
    """[p, k, c] = bits 4k..4k+3 of channel 32p + c, read off the unpacked bits; zero channels
    past N."""
    n, k = 37, 130
    bits = rng.random((n, k)) > 0.5
    nib = Kernels.prepare_nibbles(pack_bits(bits))
    assert nib.shape == (2, 16 * 3, 32) and nib.dtype == np.uint8
    padded = np.zeros((n, 3 * 64), bool)
    padded[:, :k] = bits
    want = (padded.reshape(n, -1, 4) * [1, 2, 4, 8]).sum(2)  # [n, 48]
    got = nib.transpose(0, 2, 1).reshape(64, 48)
    np.testing.assert_array_equal(got[:n], want)
    assert not got[n:].any()


# rows not a multiple of the 4-row tile, channels not a multiple of the 32-channel panels or of
# their pairs, inputs that end mid-word, and more than 63 nibbles (the byte sums' limit)
TABLE_SHAPES = [(1, 1, 1), (3, 33, 70), (5, 64, 64), (7, 100, 260), (9, 96, 768), (4, 160, 1100),
                (13, 200, 3072)]


@pytest.mark.parametrize("m, n, k", TABLE_SHAPES)
def test_table_lookup_products_match_numpy(kern, rng, m, n, k):
    """With the weights' nibble panels, every product gives what numpy gives: the counts of both
    operations, the float and sign outputs, the unsigned ({0,1} input) form, the bits through a
    quantizer and through sign_cut. On kernel sets without table lookup the panels are unused."""
    a = pack_signs(rng.standard_normal((m, k)))
    a01 = pack_bits(rng.random((m, k)) > 0.6)
    w = pack_signs(rng.standard_normal((n, k)))
    w_il, nib = kern.prepare(w), kern.prepare_nibbles(w)
    alpha = (rng.random(n) + 0.1).astype(np.float32)
    bias = (rng.standard_normal(n) * 0.3).astype(np.float32)
    for op in (0, 1):
        np.testing.assert_array_equal(kern.popcount_gemm(a, w_il, n, op, nibbles=nib),
                                      NUMPY.popcount_gemm(a, w_il, n, op))
    for x, unsigned in ((a, False), (a01, True)):
        for signs in (False, True):
            np.testing.assert_array_equal(
                kern.bin_linear(x, w_il, n, k, alpha, bias, signs=signs, unsigned=unsigned, nibbles=nib),
                NUMPY.bin_linear(x, w_il, n, k, alpha, bias, signs=signs, unsigned=unsigned))
        quant = (np.full(n, 0.05, np.float32), 0.7, ref.Q_UNSIGNED, ref.ACT_RELU)
        np.testing.assert_array_equal(
            kern.bin_linear(x, w_il, n, k, alpha, bias, unsigned=unsigned, quant=quant, nibbles=nib),
            NUMPY.bin_linear(x, w_il, n, k, alpha, bias, unsigned=unsigned, quant=quant))
    cut = ref.sign_cut(k, alpha, bias)
    np.testing.assert_array_equal(kern.bin_linear_cut(a, w_il, n, k, alpha, bias, cut, nibbles=nib),
                                  NUMPY.bin_linear_cut(a, w_il, n, k, alpha, bias, cut))


def test_nibbles_of_another_shape_rejected(rng):
    a = pack_signs(rng.standard_normal((4, 130)))
    w = pack_signs(rng.standard_normal((40, 130)))
    wrong = Kernels.prepare_nibbles(pack_signs(rng.standard_normal((40, 64))))
    for kern in (NUMPY, *([Kernels("c")] if compiled_available() else [])):
        with pytest.raises(ValueError, match="nibble panels"):
            kern.popcount_gemm(a, kern.prepare(w), 40, nibbles=wrong)


@pytest.mark.parametrize("recipe", ["bibert", "bit"])
def test_every_instruction_set_gives_the_same_logits(rng, tmp_path, recipe, kern):
    """The whole forward on each kernel set (AVX2: the table-lookup products, whose nibble
    panels the model makes on first use) equals the portable C kernels' bit for bit, and the
    numpy backend's to float rounding."""
    model = trained_1bit_model(recipe, seed=4)
    path = str(tmp_path / "m.bibert")
    export_packed(model, path)
    ids = padded_ids(rng, 9, 70)
    isa = kern.name[2:]
    np_logits = load_packed(path, backend="numpy")(ids)
    want = load_packed(path, backend="c", isa="generic")(ids)  # sets the process's kernel set
    runtime = load_packed(path, backend="c", isa=isa)
    runtime.kernels.tables = kern.tables
    np.testing.assert_allclose(want, np_logits, atol=1e-5)
    np.testing.assert_array_equal(runtime(ids), want)
    looked_up = [lin._nibbles is not None for layer in runtime.layers for lin in layer.values()
                 if hasattr(lin, "_nibbles")]
    assert any(looked_up) == kern.uses_nibbles, looked_up


def test_unsigned_products_of_more_rows_than_one_call_counts_at_once(kern, rng):
    """{0,1} inputs keep each row's popcount; past 4,096 rows the product goes in slabs of rows:
    every output (floats, bits through a quantizer) still numpy's."""
    m, n, k = 4100, 40, 130
    a01 = pack_bits(rng.random((m, k)) > 0.6)
    w = pack_signs(rng.standard_normal((n, k)))
    w_il, nib = kern.prepare(w), kern.prepare_nibbles(w)
    alpha = (rng.random(n) + 0.1).astype(np.float32)
    bias = (rng.standard_normal(n) * 0.3).astype(np.float32)
    quant = (np.full(n, 0.05, np.float32), 0.7, ref.Q_UNSIGNED, ref.ACT_RELU)
    for kw in ({}, {"quant": quant}):
        np.testing.assert_array_equal(
            kern.bin_linear(a01, w_il, n, k, alpha, bias, unsigned=True, nibbles=nib, **kw),
            NUMPY.bin_linear(a01, w_il, n, k, alpha, bias, unsigned=True, **kw))


def test_table_lookup_sign_cut_past_15_bits_stays_exact(kern):
    """A sign-fed product on the table path compares its 16-bit sums with sign_cut's interval; with
    counts above 32,767 (signed 16 bits' end) the bits must still be numpy's."""
    k, n = 40000, 64
    a = pack_signs(-np.ones((4, k), np.float32))
    signs = np.ones((n, k), np.float32)
    for j in range(n):
        signs[j, :320 * j] = -1  # channel j agrees on 320 j bits: count 40,000 - 320 j
    w = pack_signs(signs)
    alpha, bias = np.ones(n, np.float32), np.full(n, 20000, np.float32)  # sign bit set above 30,000
    cut = ref.sign_cut(k, alpha, bias)
    got = kern.bin_linear_cut(a, kern.prepare(w), n, k, alpha, bias, cut, nibbles=kern.prepare_nibbles(w))
    want = NUMPY.bin_linear_cut(a, NUMPY.prepare(w), n, k, alpha, bias, cut)
    np.testing.assert_array_equal(got, want)
    assert 0 < np.unpackbits(want.view(np.uint8)).sum() < 4 * n  # both signs occur


def test_table_lookup_counts_past_16_bits_stay_exact(kern):
    """The table path sums counts in 16 bits; an input of 65,600 bits whose every bit differs from
    the weights' (count 65,600 > 65,535) must still come out exact (it takes XOR and popcount)."""
    k, n = 65600, 8
    a = pack_signs(-np.ones((2, k), np.float32))
    w = pack_signs(np.ones((n, k), np.float32))
    w[3, :10] = ~np.uint64(0)  # channel 3 agrees on 640 bits
    counts = kern.popcount_gemm(a, kern.prepare(w), n, nibbles=kern.prepare_nibbles(w))
    want = np.full((2, n), k, np.int32)
    want[:, 3] = k - 640
    np.testing.assert_array_equal(counts, want)
