"""Bit packing of {-1,+1} tensors along their reduction (last) axis, numpy only.

Layout (shared by the file format and the runtime kernels): element ``k`` of a length-``n``
vector goes to bit ``k % 64`` (least significant bit first) of little-endian ``uint64`` word
``k // 64``; a vector takes ``nwords(n) = ceil(n / 64)`` words. The bit is the float's sign
bit, which is the package's sign convention (``paddle_bibert.quant.quantizers``)::

    bit = signbit(x)        sign(x) = -1 if bit else +1     (sign(+0) = +1, sign(-0) = -1)

Padding: the ``64 * nwords(n) - n`` bits past the end of every vector are 0 in *both* operands
of a product, so they never count:

    a . w          = n - 2 * popcount(a XOR w)        (pads: 0 XOR 0 = 0)
    sum_k A_k v_k  = popcount(A) - 2 * popcount(A AND v)   A in {0,1} (bit = 1 where A = 1),
                                                      v in {-1,+1} as sign bits
                                                      (pads: 0 AND 0 = 0, popcount(A) sees 0)

(the second is the textbook ``2 popcount(A AND v+) - popcount(A)`` with ``v+ = NOT v`` the
bits of ``v = +1``; with sign bits no complement is needed.)

with ``n`` the true length. ``unpack_signs`` checks that the pad bits are 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["WORD_BITS", "nwords", "pack_signs", "pack_bits", "unpack_signs", "unpack_bits"]

WORD_BITS = 64
_WORD = np.dtype("<u8")


def nwords(n: int) -> int:
    """Number of 64-bit words holding ``n`` bits."""
    return (int(n) + WORD_BITS - 1) // WORD_BITS


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean array ``[..., n]`` into ``uint64`` words ``[..., nwords(n)]`` (pads 0)."""
    bits = np.asarray(bits, dtype=bool)
    n = bits.shape[-1]
    by = np.packbits(bits, axis=-1, bitorder="little")
    pad = nwords(n) * 8 - by.shape[-1]
    if pad:
        by = np.concatenate([by, np.zeros(by.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return np.ascontiguousarray(by).view(_WORD).astype(np.uint64, copy=False)


def pack_signs(x: np.ndarray) -> np.ndarray:
    """``[..., n]`` floats -> ``[..., nwords(n)]`` uint64 words of their sign bits."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"pack_signs takes floats (the sign bit is packed), not {x.dtype}")
    return pack_bits(np.signbit(x))


def unpack_bits(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``[..., nwords(n)]`` uint64 -> bool ``[..., n]``."""
    words = np.ascontiguousarray(words, dtype=_WORD)
    if words.shape[-1] != nwords(n):
        raise ValueError(f"{words.shape[-1]} words cannot hold exactly {n} bits "
                         f"(need {nwords(n)})")
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little").astype(bool)
    if bits[..., n:].any():
        raise ValueError("pad bits past the vector length are not 0: not a packed sign tensor")
    return bits[..., :n]


def unpack_signs(words: np.ndarray, n: int, dtype=np.float32) -> np.ndarray:
    """``[..., nwords(n)]`` uint64 -> ``[..., n]`` values in {-1, +1}."""
    return np.where(unpack_bits(words, n), -1, 1).astype(dtype)
