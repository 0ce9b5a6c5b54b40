"""The runtime's kernels behind one interface: the compiled extension or the numpy reference.

``get_kernels("auto")`` gives the compiled kernels (the extension ``_kernels``, built from
``csrc/`` by ``pip install -e .`` / ``python setup.py build_ext --inplace``) when there, else
the numpy reference (``reference.py``). ``BIBERT_BACKEND=numpy|c`` and
``BIBERT_ISA=avx512|avx2|popcnt|generic`` override the choice. The instruction set and the
thread count (``BIBERT_NUM_THREADS``, else ``OMP_NUM_THREADS``, else the CPU count) are
process-wide settings of the extension.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..export.pack import nwords
from . import reference as ref

try:
    from . import _kernels as _C
except ImportError as err:  # not built: numpy backend
    _C = None
    _IMPORT_ERROR = err
else:
    _IMPORT_ERROR = None

__all__ = ["Kernels", "get_kernels", "compiled_available", "available_isas"]

OP_XOR, OP_AND = ref.OP_XOR, ref.OP_AND
MODE_BOOL, MODE_KEEP, MODE_SOFTMAX = ref.MODE_BOOL, ref.MODE_KEEP, ref.MODE_SOFTMAX
Q_SIGN, Q_UNSIGNED = ref.Q_SIGN, ref.Q_UNSIGNED
ACT_NONE, ACT_RELU, ACT_GELU = ref.ACT_NONE, ref.ACT_RELU, ref.ACT_GELU
#: kernel sets whose binary products look counts up in tables, from the weights' nibble panels
#: (without AVX-512's vector popcount, one table lookup counts 4 bits of 32 channels for two
#: rows at once); their attention does too, from nibble panels of its keys and values
NIBBLE_ISAS = ("avx2",)


def compiled_available() -> bool:
    return _C is not None


def available_isas():
    """Kernel sets of the compiled extension this CPU runs, fastest first ([] if not built)."""
    return list(_C.available_isas()) if _C is not None else []


def _f32(x):
    return np.ascontiguousarray(x, dtype=np.float32)


def _u64(x):
    return np.ascontiguousarray(x, dtype=np.uint64)


def _rows(x, what):
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: empty batch (0 rows); pass at least one example")
    return x


class Kernels:
    """Numpy-in, numpy-out kernels of one backend (``"c"`` or ``"numpy"``).

    All packed operands follow ``paddle_bibert.export.pack`` (LSB-first uint64 words, sign bit,
    zero padding); right-hand binary operands are pre-arranged once with :meth:`prepare`.
    """

    def __init__(self, backend: str = "auto", isa: Optional[str] = None,
                 num_threads: Optional[int] = None):
        backend = os.environ.get("BIBERT_BACKEND", backend) if backend == "auto" else backend
        if backend not in ("auto", "c", "numpy"):
            raise ValueError(f"unknown backend {backend!r}; choose auto, c or numpy")
        if backend == "c" and _C is None:
            raise RuntimeError(f"the compiled kernels are not built ({_IMPORT_ERROR}); run "
                               "`pip install -e .` with a C compiler, or use backend='numpy'")
        self.compiled = backend != "numpy" and _C is not None
        #: False keeps AVX2's products and attention on XOR and popcount instead of table lookup
        #: (to compare; the AVX-512 set's way)
        self.tables = True
        #: BiT's tables of exponentials by (head size, score scale): a model's layers call the
        #: attention with the same few, and a table costs (dh + 1)^2 exponentials
        self._softmax_tables = {}
        if self.compiled:
            isa = isa or os.environ.get("BIBERT_ISA")
            if isa:
                _C.set_isa(isa)
            if num_threads:
                _C.set_num_threads(int(num_threads))

    @property
    def name(self) -> str:
        """``c-<isa>`` (e.g. ``c-avx512``) or ``numpy``."""
        return f"c-{_C.get_isa()}" if self.compiled else "numpy"

    @property
    def uses_nibbles(self) -> bool:
        """Whether the kernel set in use counts binary products by table lookup, from the
        weights' nibble panels (:meth:`prepare_nibbles`, passed as ``nibbles=``)."""
        return self.tables and self.compiled and _C.get_isa() in NIBBLE_ISAS

    @property
    def num_threads(self) -> int:
        return _C.num_threads() if self.compiled else 1

    # -- packing ---------------------------------------------------------------------------

    def pack_signs(self, x: np.ndarray) -> np.ndarray:
        """``[rows, n]`` float32 -> ``[rows, nwords(n)]`` uint64 sign bits."""
        x = _rows(_f32(x), "pack_signs")
        if not self.compiled:
            return ref.pack_signs(x)
        out = np.empty((x.shape[0], nwords(x.shape[1])), np.uint64)
        _C.pack_signs(x, x.shape[0], x.shape[1], out)
        return out

    def pack_act(self, x: np.ndarray, shift=None, scale: float = 1.0, kind: int = Q_SIGN,
                 act: int = ACT_NONE, check: bool = True) -> np.ndarray:
        """``[rows, n]`` float32 -> ``[rows, nwords(n)]`` bits of a binarized activation:
        ``act`` (none, ReLU, GELU), then ``+ shift`` (``[n]`` or None), then the sign bit
        (``Q_SIGN``) or ``1[v / scale > 0.5]`` (``Q_UNSIGNED``). See :func:`reference.pack_act`.
        ``check=False`` skips the checks of the operands (see :meth:`bin_linear`)."""
        if check:
            x = _rows(_f32(x), "pack_act")
            shift = self._check_act(x.shape[1], shift, kind, act, "pack_act")
        if not self.compiled:
            return ref.pack_act(x, shift, scale, kind, act)
        out = np.empty((x.shape[0], nwords(x.shape[1])), np.uint64)
        _C.pack_act(x, x.shape[0], x.shape[1], shift, float(scale), int(kind), int(act), out)
        return out

    @staticmethod
    def _check_act(n, shift, kind, act, where):
        """The shift as float32 ``[n]`` (or None), after checking the quantizer's parameters."""
        if shift is not None:
            shift = _f32(shift)
            if shift.shape != (n,):
                raise ValueError(f"{where}: shift of shape {shift.shape} for {n} channels")
        if kind not in (Q_SIGN, Q_UNSIGNED) or act not in (ACT_NONE, ACT_RELU, ACT_GELU):
            raise ValueError(f"{where}: unknown kind {kind} or activation {act}")
        return shift

    @staticmethod
    def prepare(bits: np.ndarray) -> np.ndarray:
        """Packed ``[N, kw]`` right-hand operand -> the kernels' interleaved ``[N/8, kw, 8]``."""
        return ref.interleave8(_u64(bits))

    @staticmethod
    def prepare_nibbles(bits: np.ndarray) -> np.ndarray:
        """Packed ``[N, kw]`` right-hand operand -> its nibble panels (see
        :func:`reference.nibble_panels`): twice the packed bits, for :attr:`uses_nibbles`."""
        return ref.nibble_panels(_u64(bits))

    # -- products --------------------------------------------------------------------------

    def popcount_gemm(self, a, b_il, n: int, op: int = OP_XOR, nibbles=None) -> np.ndarray:
        """``C[m, j] = sum_w popcount(a[m, w] OP b[j, w])`` as int32 ``[M, n]``. ``nibbles``:
        b's :meth:`prepare_nibbles`, used where the kernel set looks counts up (here and below)."""
        a = _rows(_u64(a), "popcount_gemm")
        b_il = _u64(b_il)
        self._check_rhs(a, b_il, n)
        nibbles = self._check_nibbles(a, n, nibbles)
        if not self.compiled:
            return ref.popcount_gemm(a, b_il, n, op)
        out = np.empty((a.shape[0], n), np.int32)
        _C.popcount_gemm(a, a.shape[0], a.shape[1], b_il, n, op, out, nibbles)
        return out

    def bin_linear(self, a, w_il, n: int, k: int, alpha, bias, signs: bool = False,
                   unsigned: bool = False, quant: Optional[tuple] = None,
                   nibbles=None, check: bool = True) -> np.ndarray:
        """``y = (k - 2 popcount(a XOR w)) * alpha + bias`` (rounded once to float32, as a
        fused multiply-add: its sign is the exact one), float32 ``[M, n]``; with
        ``signs`` only the packed sign bits of y, ``[M, nwords(n)]`` uint64 (what the next
        binary layer consumes: 32x less memory traffic than writing y and packing it).
        ``quant = (shift, scale, kind, act)``: instead of the signs, the bits
        :meth:`pack_act` would give y (the next layer's elastic quantizer), y never written.
        ``unsigned``: ``a`` holds {0, 1} inputs (bit 1 = 1) and the dot product is
        ``popcount(a) - 2 popcount(a AND w)``.

        ``check=False`` skips the checks and conversions of the operands, for a caller that made
        them itself (``PackedBert``: its weights once, at load; its activations come from these
        kernels): a forward makes ~100 kernel calls, and at batch 1 the checks cost about a
        tenth of a MiniLM forward. The compiled kernels still refuse buffers too small."""
        if quant is not None:
            shift, scale, kind, act = quant
        if check:
            a = _rows(_u64(a), "bin_linear")
            w_il = _u64(w_il)
            self._check_rhs(a, w_il, n)
            nibbles = self._check_nibbles(a, n, nibbles)
            if a.shape[1] != nwords(k):
                raise ValueError(f"bin_linear: {a.shape[1]} words do not hold k={k} bits")
            alpha, bias = _f32(alpha), _f32(bias)
            if quant is not None:
                shift = self._check_act(n, shift, kind, act, "bin_linear")
        if not self.compiled:
            y = ref.bin_linear(a, w_il, n, k, alpha, bias, unsigned)
            if quant is not None:
                return ref.pack_act(y, shift, scale, kind, act)
            return ref.pack_signs(y) if signs else y
        if signs or quant is not None:
            out = np.zeros((a.shape[0], nwords(n)), np.uint64)  # pad bits stay 0
        else:
            out = np.empty((a.shape[0], n), np.float32)
        if quant is None:
            _C.bin_linear(a, a.shape[0], a.shape[1], w_il, n, k, alpha, bias, out, signs, unsigned,
                          None, 1.0, -1, ACT_NONE, nibbles)
        else:
            _C.bin_linear(a, a.shape[0], a.shape[1], w_il, n, k, alpha, bias, out, True, unsigned,
                          shift, float(scale), int(kind), int(act), nibbles)
        return out

    def bin_linear_cut(self, a, w_il, n: int, k: int, alpha, bias, cut, nibbles=None,
                       check: bool = True) -> np.ndarray:
        """``bin_linear(..., signs=True)`` from ``cut = reference.sign_cut(k, alpha, bias)``: the
        same bits, the count compared with two integers per channel instead of y computed.
        ``check``: see :meth:`bin_linear`."""
        lo, hi = cut
        if check:
            a = _rows(_u64(a), "bin_linear_cut")
            w_il = _u64(w_il)
            self._check_rhs(a, w_il, n)
            nibbles = self._check_nibbles(a, n, nibbles)
            lo, hi = (np.ascontiguousarray(x, np.int32) for x in cut)
            if a.shape[1] != nwords(k) or lo.shape != (n,) or hi.shape != (n,):
                raise ValueError(f"bin_linear_cut: {a.shape[1]} words for k={k}, cut of shapes "
                                 f"{lo.shape}, {hi.shape} for {n} channels")
            alpha, bias = _f32(alpha), _f32(bias)
        if not self.compiled:
            cnt = ref.popcount_gemm(a, w_il, n, OP_XOR)
            return ref.pack_bits((lo <= cnt) & (cnt <= hi))
        out = np.zeros((a.shape[0], nwords(n)), np.uint64)  # pad bits stay 0
        _C.bin_linear_cut(a, a.shape[0], a.shape[1], w_il, n, k, alpha, bias, lo, hi, out, nibbles)
        return out

    @staticmethod
    def _check_nibbles(a, n, nibbles):
        if nibbles is None:
            return None
        shape = ((n + 31) // 32, 16 * a.shape[1], 32)
        if nibbles.dtype != np.uint8 or nibbles.shape != shape or not nibbles.flags.c_contiguous:
            raise ValueError(f"nibbles of shape {nibbles.shape} ({nibbles.dtype}) are not the nibble "
                             f"panels {shape} of {n} rows of {a.shape[1]} words "
                             "(use Kernels.prepare_nibbles)")
        return nibbles

    @staticmethod
    def _check_rhs(a, b_il, n):
        if b_il.ndim != 3 or b_il.shape[2] != 8 or b_il.shape[1] != a.shape[1] \
                or b_il.shape[0] != (n + 7) // 8:
            raise ValueError(f"right operand of shape {b_il.shape} is not the interleaved form "
                             f"of {n} rows of {a.shape[1]} words (use Kernels.prepare)")

    def attention(self, qkv_bits, keep, hidden: int, heads: int, mode: int = MODE_BOOL,
                  score_scale: float = 1.0, map_scale: float = 1.0,
                  context_scale: float = 1.0) -> np.ndarray:
        """Binary attention context ``[B, L, hidden]`` (integer counts) from the packed sign bits
        of a layer's Q/K/V, ``[B, L, nwords(3 * hidden)]`` (each token row holds Q, K, V in
        order); ``keep`` ``[B, L]`` is False on padded keys. ``MODE_SOFTMAX`` (BiT) takes
        ``score_scale = a_q a_k / sqrt(d_head)`` and ``map_scale = a_p``. See
        :func:`reference.attention`. ``context_scale`` s (unless 1): the counts c come out as
        ``float32(float64(c) * s)`` (the scales of the map and of V)."""
        qkv_bits = _u64(qkv_bits)
        if qkv_bits.ndim != 3 or qkv_bits.shape[0] == 0 or qkv_bits.shape[1] == 0:
            raise ValueError(f"attention: expected non-empty [B, L, words] bits, got "
                             f"{qkv_bits.shape}")
        b, l, words = qkv_bits.shape
        if heads < 1 or words != nwords(3 * hidden) or hidden % heads:
            raise ValueError(f"attention: {words} words per token do not hold Q, K, V of "
                             f"hidden size {hidden} split in {heads} heads")
        keep = np.ascontiguousarray(keep, dtype=np.uint8)
        if keep.shape != (b, l):
            raise ValueError(f"attention: keep mask {keep.shape} does not match {(b, l)}")
        if mode not in (MODE_BOOL, MODE_KEEP, MODE_SOFTMAX):
            raise ValueError(f"attention: unknown mode {mode}")
        if not self.compiled:
            out = ref.attention(qkv_bits, keep, hidden, heads, mode, score_scale, map_scale)
            if context_scale != 1.0:
                out = (out.astype(np.float64) * context_scale).astype(np.float32)
            return out
        out = np.empty((b, l, hidden), np.float32)
        table = self.softmax_table(hidden // heads, float(score_scale)) \
            if mode == MODE_SOFTMAX else None
        _C.attention(qkv_bits, keep, b, l, hidden, heads, mode, out, float(score_scale),
                     float(map_scale), float(context_scale), table, bool(self.tables))
        return out

    def softmax_table(self, dh: int, score_scale: float) -> np.ndarray:
        """The compiled kernels' table of exponentials for (dh, score_scale), made once: ``dh + 1``
        rows of them, then a row of flags (which rows are monotone over every count)."""
        key = (dh, score_scale)
        table = self._softmax_tables.get(key)
        if table is None:
            if len(self._softmax_tables) >= 256:  # many scales: a caller sweeping them
                self._softmax_tables.clear()
            table = np.empty((dh + 2, dh + 1), np.float64)
            _C.softmax_table(dh, score_scale, table)
            self._softmax_tables[key] = table
        return table

    # -- full-precision parts --------------------------------------------------------------

    def embed(self, ids, token_type_ids, word_bits, word_alpha, pos, tok) -> np.ndarray:
        """Word rows ``alpha * sign`` + position + token type, float32 ``[B*L, H]``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        tt = np.ascontiguousarray(token_type_ids, dtype=np.int64)
        if not self.compiled:
            return ref.embed(ids, tt, word_bits, word_alpha, pos, tok)
        b, l = ids.shape
        out = np.empty((b * l, pos.shape[1]), np.float32)
        _C.embed(ids, tt, b * l, l, _u64(word_bits), _f32(word_alpha), pos.shape[1], _f32(pos),
                 _f32(tok), out)
        return out

    def layer_norm(self, x, residual, weight, bias, eps: float, signs: bool = False,
                   quants=None, check: bool = True):
        """``LayerNorm(x + residual)`` over the last axis of ``[T, H]`` (residual may be None);
        with ``signs`` also its packed sign bits, ``(out, bits)``, as :meth:`pack_signs` of out
        would give them (what a following sign-binarized layer consumes); with ``quants``, a
        sequence of ``(shift, scale, kind)`` (at most 4), ``(out, [bits, ...])``, each as
        :meth:`pack_act` of out would give them: written while each row is in cache.
        ``check=False`` skips the checks of the quantizers (see :meth:`bin_linear`)."""
        x = _rows(_f32(x), "layer_norm")
        if signs and quants is not None:
            raise ValueError("layer_norm: pass signs or quants, not both")
        want = [(None, 1.0, Q_SIGN)] if signs else list(quants or ())
        if len(want) > 4:
            raise ValueError(f"layer_norm: {len(want)} quantizers, at most 4")
        if check:
            want = [(self._check_act(x.shape[1], sh, kind, ACT_NONE, "layer_norm"), scale, kind)
                    for sh, scale, kind in want]
        if not self.compiled:
            out = ref.layer_norm(x, residual, weight, bias, eps)
            bits = [ref.pack_act(out, sh, scale, kind) for sh, scale, kind in want]
        else:
            out = np.empty_like(x)
            res = None if residual is None else _f32(residual)
            nw = nwords(x.shape[1])
            bits = [np.empty((x.shape[0], nw), np.uint64) for _ in want]
            _C.layer_norm(x, res, x.shape[0], x.shape[1], _f32(weight), _f32(bias), float(eps),
                          out, [(sh, float(scale), int(kind), b)
                                for (sh, scale, kind), b in zip(want, bits)])
        if signs:
            return out, bits[0]
        return out if quants is None else (out, bits)


def get_kernels(backend: str = "auto", isa: Optional[str] = None,
                num_threads: Optional[int] = None) -> Kernels:
    return Kernels(backend, isa, num_threads)
