"""Numpy reference for every compiled kernel (``_kernels.c``), plain math on unpacked signs.

These are the definitions the kernels are tested against, and the runtime's fallback backend
when the extension is not built. Integer results are exact in float32 here because every
partial sum is an integer below 2**24. Float epilogues use the same operations in the same
order as the C code (no FMA), so results agree bit for bit (LayerNorm: to float rounding).
"""

from __future__ import annotations

import numpy as np

from ..export.pack import pack_signs, unpack_bits

__all__ = ["interleave8", "deinterleave8", "popcount_gemm", "bin_linear", "attention", "embed",
           "layer_norm", "pack_signs"]

OP_XOR, OP_AND = 0, 1
MODE_BOOL, MODE_KEEP = 0, 1


def interleave8(words: np.ndarray) -> np.ndarray:
    """``[N, kw]`` packed rows -> ``[ceil(N/8), kw, 8]``: word w of channels 8j..8j+7 adjacent.

    Channels past N are zero rows; their outputs are never written.
    """
    n, kw = words.shape
    nb = (n + 7) // 8
    pad = np.zeros((nb * 8, kw), np.uint64)
    pad[:n] = words
    return np.ascontiguousarray(pad.reshape(nb, 8, kw).transpose(0, 2, 1))


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
               bias: np.ndarray) -> np.ndarray:
    """Binary linear layer on packed operands, ``[M, nwords(k)]`` x ``[N, nwords(k)]``:

        dot[m, n] = sum_i sign(a)_mi sign(w)_ni = k - 2 popcount(a_m XOR w_n)
        y[m, n]   = float32(dot * alpha[n] + bias[n])   computed in float64 (dot * alpha exact),
                                                          as in C: y has the exact value's sign
    """
    sa = 1 - 2 * _bits(a, k)
    sw = 1 - 2 * _bits(deinterleave8(w_il, n), k)
    dot = (sa @ sw.T).astype(np.float64)
    return (dot * alpha.astype(np.float64) + bias.astype(np.float64)).astype(np.float32)


def attention(qkv_bits: np.ndarray, keep: np.ndarray, hidden: int, heads: int,
              mode: int) -> np.ndarray:
    """Bi-Attention from the sign bits of a layer's Q/K/V (``[B, L, nwords(3 * hidden)]``).

        Qb, Kb, Vb = sign(Q), sign(K), sign(V)         per head, d_head = hidden / heads
        S = Qb Kb^T                                    integer; sign(S / sqrt(d_head)) = sign(S)
        A = 1[S > 0] * keep_key   (MODE_BOOL)  or  A = keep_key   (MODE_KEEP: softmax_sign)
        context = A Vb                                  -> [B, L, hidden], integer valued
    """
    b, l, _ = qkv_bits.shape
    h, dh = hidden, hidden // heads
    s = 1 - 2 * _bits(qkv_bits, 3 * h)
    s = s.reshape(b, l, 3, heads, dh).transpose(2, 0, 3, 1, 4)  # [3, B, heads, L, dh]
    keep = keep.astype(bool)[:, None, None, :]
    if mode == MODE_KEEP:
        a = np.broadcast_to(keep, (b, heads, l, l))
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
