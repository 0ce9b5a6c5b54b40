"""Numpy reference for every compiled kernel (``csrc/``), plain math on unpacked signs.

These are the definitions the kernels are tested against, and the runtime's fallback backend
when the extension is not built. Integer results are exact in float32 here because every
partial sum is an integer below 2**24. Float epilogues use the same operations in the same
order as the C code (FMA only where named: the binary linear's output, ``linear_y``), so
results agree bit for bit (LayerNorm: to float rounding).
"""

from __future__ import annotations

import math

import numpy as np

from ..export.pack import pack_bits, pack_signs, unpack_bits

__all__ = ["interleave8", "deinterleave8", "popcount_gemm", "bin_linear", "linear_y", "attention", "embed",
           "layer_norm", "pack_signs", "pack_act", "act_bits", "quant_cut", "sign_cut", "gelu32"]

OP_XOR, OP_AND = 0, 1
MODE_BOOL, MODE_KEEP, MODE_SOFTMAX = 0, 1, 2
#: how ``pack_act`` binarizes: the sign bit ({-a, +a}) or ``1[v / a > 0.5]`` ({0, a})
Q_SIGN, Q_UNSIGNED = 0, 1
#: the activation ``pack_act`` applies first
ACT_NONE, ACT_RELU, ACT_GELU = 0, 1, 2
_F32 = np.float32


def interleave8(words: np.ndarray) -> np.ndarray:
    """``[N, kw]`` packed rows -> ``[ceil(N/8), kw, 8]``: word w of channels 8j..8j+7 adjacent.

    Channels past N are zero rows; their outputs are never written.
    """
    n, kw = words.shape
    nb = (n + 7) // 8
    pad = np.zeros((nb * 8, kw), np.uint64)
    pad[:n] = words
    return np.ascontiguousarray(pad.reshape(nb, 8, kw).transpose(0, 2, 1))


def nibble_panels(words: np.ndarray) -> np.ndarray:
    """``[N, kw]`` packed rows -> ``[ceil(N/32), 16 kw, 32]`` uint8: ``[p, k, c]`` is nibble k
    (bits 4k..4k+3) of channel 32p + c, one per byte: the operand of the kernels that count
    four bits at a time by table lookup. Channels past N are zero."""
    n, kw = words.shape
    npn = (n + 31) // 32
    b = np.zeros((npn * 32, kw * 8), np.uint8)
    b[:n] = np.ascontiguousarray(words, np.uint64).view(np.uint8).reshape(n, kw * 8)
    nib = np.stack([b & 15, b >> 4], axis=2).reshape(npn, 32, kw * 16)  # low nibble first
    return np.ascontiguousarray(nib.transpose(0, 2, 1))


def deinterleave8(il: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`interleave8`."""
    return np.ascontiguousarray(il.transpose(0, 2, 1)).reshape(-1, il.shape[1])[:n]


def _bits(words, n):
    return unpack_bits(words, n).astype(np.float32)


def popcount_gemm(a: np.ndarray, b_il: np.ndarray, n: int, op: int) -> np.ndarray:
    """Raw counts ``C[m, j] = sum_w popcount(a[m, w] OP b[j, w])`` (int32), b interleaved."""
    kw = a.shape[1]
    x = _bits(a, 64 * kw)
    y = _bits(deinterleave8(b_il, n), 64 * kw)
    if op == OP_AND:
        c = x @ y.T
    else:  # popcount(a XOR b) = |a| + |b| - 2 |a AND b|
        c = x.sum(1, keepdims=True) + y.sum(1)[None] - 2 * (x @ y.T)
    return c.astype(np.int32)


def bin_linear(a: np.ndarray, w_il: np.ndarray, n: int, k: int, alpha: np.ndarray,
               bias: np.ndarray, unsigned: bool = False) -> np.ndarray:
    """Binary linear layer on packed operands, ``[M, nwords(k)]`` x ``[N, nwords(k)]``:

        dot[m, n] = sum_i sign(a)_mi sign(w)_ni = k - 2 popcount(a_m XOR w_n)
        y[m, n]   = linear_y(dot, alpha[n], bias[n])    the exact value rounded once to
                                                          float32: it has the exact value's sign

    ``unsigned``: the bits of ``a`` are {0, 1} values (bit 1 = 1; BiT's {0, a} activations), so

        dot[m, n] = sum_i a_mi sign(w)_ni = popcount(a_m) - 2 popcount(a_m AND w_n)
    """
    sa = _bits(a, k) if unsigned else 1 - 2 * _bits(a, k)
    sw = 1 - 2 * _bits(deinterleave8(w_il, n), k)
    return linear_y(sa @ sw.T, alpha, bias)


def linear_y(dot, alpha, bias) -> np.ndarray:
    """``dot * alpha + bias`` rounded once to float32, as a fused multiply-add gives it (the C
    kernels' ``fmaf``), for integer ``dot`` (``|dot| < 2**24``) and float32 ``alpha``, ``bias``.

    In float64 the product is exact and the sum ``s`` is off the exact value by ``e`` (found
    exactly, TwoSum); rounding ``s`` to float32 could round twice where ``s`` lands on the midpoint
    of two floats, so an inexact ``s`` is first rounded to odd (its last bit set, toward ``e``),
    which 53 bits make safe for a rounding to 24 (Boldo and Melquiond, 2008).
    """
    p = np.asarray(np.asarray(dot, np.float64) * np.asarray(alpha, _F32).astype(np.float64))
    b = np.broadcast_to(np.asarray(bias, _F32).astype(np.float64), p.shape)
    s = np.asarray(p + b)
    with np.errstate(invalid="ignore"):  # a bias of inf or nan: e is nan, s the output
        bb = s - p
        e = (p - (s - bb)) + (b - bb)  # p + b = s + e exactly
    u = s.view(np.int64)
    even = (e != 0) & np.isfinite(s) & (u & 1 == 0)
    step = np.where((e > 0) == (s > 0), 1, -1)  # one unit in the last place toward s + e
    return np.where(even, u + step, u).view(np.float64).astype(_F32)


def sign_cut(k: int, alpha: np.ndarray, bias: np.ndarray):
    """The counts ``c = popcount(a XOR w_n)`` whose output has its sign bit set, per channel, as
    an interval ``lo[n] <= c <= hi[n]`` (int32; empty: lo = 1, hi = 0).

    y(c) = linear_y(k - 2c, alpha, bias), :func:`bin_linear`'s output, is monotone in c, and
    so is its sign bit: a value that rounds to a float32 zero keeps its sign, and where y is
    a zero for several counts (alpha = 0, bias = -0.0) the sign of (k - 2c) * alpha orders them
    too. So the set runs from one end of 0..k, and a bisection per channel (all channels at
    once) finds where it stops, evaluating y only there.
    """
    def neg(c):
        return np.signbit(linear_y(k - 2 * c, alpha, bias))

    n = alpha.shape[0]
    first, last = neg(np.zeros(n, np.int64)), neg(np.full(n, k, np.int64))
    at_first, at_last = np.zeros(n, np.int64), np.full(n, k, np.int64)  # bit as at 0 / as at k
    while np.any(at_last - at_first > 1):
        mid = (at_first + at_last) // 2
        same = neg(mid) == first
        at_first, at_last = np.where(same, mid, at_first), np.where(same, at_last, mid)
    rising, falling = ~first & last, first & ~last
    lo = np.where(rising, at_last, np.where(first, 0, 1))
    hi = np.where(falling, at_first, np.where(last, k, 0))
    return lo.astype(np.int32), hi.astype(np.int32)


def quant_cut(k: int, alpha: np.ndarray, bias: np.ndarray, shift, scale: float, kind: int,
              act: int = ACT_NONE):
    """The counts ``c = popcount(a XOR w_n)`` whose output's bit through a quantizer,
    :func:`act_bits` of y(c) = linear_y(k - 2c, alpha, bias) (:func:`bin_linear`'s y), is 1,
    per channel, as an interval ``lo[n] <= c <= hi[n]`` (int32; empty: lo = 1, hi = 0); None if
    for some channel they are not one interval.

    The bit is monotone in y for ReLU and the shift, mostly: GELU dips, and a shift whose sum
    with v is exactly 0 keeps v (:func:`act_bits`), which can set one count's bit alone. So every
    count is evaluated, k + 1 rows of y, and the intervals are exact where they exist.
    """
    c = np.arange(k + 1, dtype=np.int64)[:, None]
    y = linear_y(k - 2 * c, alpha, bias)
    on = act_bits(y, shift, scale, kind, act)
    some = on.any(0)
    lo = np.where(some, on.argmax(0), 1)
    hi = np.where(some, k - on[::-1].argmax(0), 0)
    if (on.sum(0) != np.maximum(hi - lo + 1, 0)).any():
        return None
    return lo.astype(np.int32), hi.astype(np.int32)


#: partial sums of the softmax denominator (``SUM_LANES`` in csrc/softmax_map.c)
SUM_LANES = 8


def lane_sum(e: np.ndarray) -> np.ndarray:
    """Sum over the last axis as the C kernels add: element j into partial sum j % SUM_LANES, each
    in order (cumsum is sequential), then the partial sums pairwise, ((l0 + l1) + (l2 + l3)) + ...
    The order fixes the rounding, so both give the same float64."""
    n = e.shape[-1]
    padded = np.concatenate([e, np.zeros(e.shape[:-1] + (-n % SUM_LANES,), e.dtype)], -1)
    lanes = np.cumsum(padded.reshape(e.shape[:-1] + (-1, SUM_LANES)), -2)[..., -1, :]
    while lanes.shape[-1] > 1:
        lanes = lanes[..., 0::2] + lanes[..., 1::2]
    return lanes[..., 0]


def exp_table(dh: int, score_scale: float) -> np.ndarray:
    """T[i, j] = exp(s_i - s_j), s_i = float64(2 i - dh) * score_scale (the scores a head of dh
    takes), by the C library's exp (``math.exp``), which the kernels call: numpy's own SIMD exp
    (on AVX-512 CPUs) can differ from it in the last bit, and a map bit on the 0.5 threshold
    with it."""
    s = [float(2 * i - dh) * score_scale for i in range(dh + 1)]
    return np.array([[math.exp(a - b) for b in s] for a in s])


def attention(qkv_bits: np.ndarray, keep: np.ndarray, hidden: int, heads: int,
              mode: int, score_scale: float = 1.0, map_scale: float = 1.0) -> np.ndarray:
    """Binary attention from the sign bits of a layer's Q/K/V (``[B, L, nwords(3 * hidden)]``).

        Qb, Kb, Vb = sign(Q), sign(K), sign(V)         per head, d_head = hidden / heads
        S = Qb Kb^T                                    integer; sign(S / sqrt(d_head)) = sign(S)
        A = 1[S > 0] * keep_key   (MODE_BOOL)  or  A = keep_key   (MODE_KEEP: softmax_sign)
        MODE_SOFTMAX (BiT: softmax map binarized to {0, a_p}), over the kept keys (over all keys
        of a sequence that keeps none), with score_scale = a_q a_k / sqrt(d_head) and
        map_scale = a_p:
            p = float32(softmax(S * score_scale))      in float64 (exp_table), summed as ``lane_sum``
            A = 1[float32(p / map_scale) > 0.5]        masked keys: p = 0, so A = 0
        context = A Vb                                  -> [B, L, hidden], integer valued

    The caller multiplies the context by the scales of A and V (a_p a_v for MODE_SOFTMAX).
    """
    b, l, _ = qkv_bits.shape
    h, dh = hidden, hidden // heads
    s = 1 - 2 * _bits(qkv_bits, 3 * h)
    s = s.reshape(b, l, 3, heads, dh).transpose(2, 0, 3, 1, 4)  # [3, B, heads, L, dh]
    keep = keep.astype(bool)
    keep = (keep | ~keep.any(1, keepdims=True)) if mode == MODE_SOFTMAX else keep
    keep = keep[:, None, None, :]
    if mode == MODE_KEEP:
        a = np.broadcast_to(keep, (b, heads, l, l))
    elif mode == MODE_SOFTMAX:
        S = s[0] @ s[1].transpose(0, 1, 3, 2)  # dh - 2 count: small integers, exact in float32
        sc = np.where(keep, S.astype(np.float64) * score_scale, -np.inf)
        top = np.take_along_axis(S, sc.argmax(-1)[..., None], -1)  # the largest kept score
        pair = ((S + dh) * ((dh + 1) / 2) + (top + dh) / 2).astype(np.intp)  # T's flat index
        e = np.where(keep, exp_table(dh, score_scale).ravel().take(pair), 0.0)
        p = (e / lane_sum(e)[..., None]).astype(_F32)
        a = (p / _F32(map_scale) > _F32(0.5)) & keep
    else:
        a = (s[0] @ s[1].transpose(0, 1, 3, 2) > 0) & keep
    ctx = a.astype(np.float32) @ s[2]
    return np.ascontiguousarray(ctx.transpose(0, 2, 1, 3).reshape(b, l, h))


def embed(ids, token_type_ids, word_bits, word_alpha, pos, tok):
    """``(alpha[id] * sign(row id) + pos[position]) + tok[type]`` in float32, Paddle's order."""
    b, l = ids.shape
    hdim = pos.shape[1]
    sign = 1 - 2 * unpack_bits(word_bits[ids.reshape(-1)], hdim).astype(np.float32)
    e = sign * word_alpha[ids.reshape(-1), None]
    out = (e.reshape(b, l, hdim) + pos[None, :l]) + tok[token_type_ids]
    return out.reshape(b * l, hdim).astype(np.float32)


def layer_norm(x, residual, weight, bias, eps):
    """``LayerNorm(x + residual)``, the sum in float32, the rest in float64 rounded once:

        s = x + residual;  out = float32((s - mean(s)) / sqrt(var(s) + eps) * weight + bias)
    """
    s = x + residual if residual is not None else x
    d = s.astype(np.float64)
    mean = d.mean(-1, keepdims=True)
    var = ((d - mean) ** 2).mean(-1, keepdims=True)
    z = (d - mean) * (1.0 / np.sqrt(var + eps))
    return (z * weight.astype(np.float64) + bias.astype(np.float64)).astype(np.float32)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float64: scipy's when installed, else the standard library's, value by value."""
    try:
        from scipy.special import erf
    except ImportError:  # slow, but the numpy backend is the fallback
        return np.vectorize(math.erf, otypes=[np.float64])(x)
    return erf(x)


def gelu32(x: np.ndarray) -> np.ndarray:
    """GELU evaluated as Paddle's float32 kernel does, ``x * 0.5 * (1 + erf(x / sqrt 2))``, each
    step rounded to float32 (erf in float64): for very negative x, 1 + erf cancels to 0 and the
    result is -0.0, as in Paddle (whose float32 erf reaches -1 a little earlier, near -5.2)."""
    x = np.asarray(x, _F32)
    e = _erf((x * _F32(math.sqrt(0.5))).astype(np.float64)).astype(_F32)
    return (x * _F32(0.5)) * (_F32(1) + e)


def pack_act(x: np.ndarray, shift, scale: float, kind: int, act: int = ACT_NONE) -> np.ndarray:
    """Binarize float activations ``[rows, n]`` to packed bits ``[rows, nwords(n)]``: the bits of
    :func:`act_bits`."""
    return pack_bits(act_bits(x, shift, scale, kind, act))


def act_bits(x: np.ndarray, shift, scale: float, kind: int, act: int = ACT_NONE) -> np.ndarray:
    """The bits (bool, x's shape) of binarized float activations, float32 arithmetic in this
    order:

        v   = act(x)          ACT_RELU: x if x > 0 else +0;  ACT_GELU: :func:`gelu32`
        v   = v + shift       (per channel, last axis; skipped if shift is None; a sum of
                              exactly 0 keeps v, and so its sign bit)
        bit = signbit(v)      Q_SIGN: {-a, +a} = a * sign(v) (a folded into the next scales)
        bit = v / scale > 0.5 Q_UNSIGNED: {0, a} = a * clip(round_half_down(v / a), 0, 1)
    """
    v = np.asarray(x, _F32)
    if act == ACT_RELU:
        v = np.where(v > 0, v, _F32(0))
    elif act == ACT_GELU:
        v = gelu32(v)
    if shift is not None:
        # a sum of exactly zero keeps v's sign (so a zero shift keeps GELU's -0.0 negative)
        s = v + np.asarray(shift, _F32)
        v = np.where(s == 0, v, s)
    if kind == Q_SIGN:
        return np.signbit(v)
    return v / _F32(scale) > _F32(0.5)
