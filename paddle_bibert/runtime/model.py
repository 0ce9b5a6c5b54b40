"""Inference of a packed BiBERT classifier on bits (no Paddle, no PaddleNLP).

Per encoder layer, with x the float hidden states [T = B*L, H] and ``sign`` the package's
convention (bit = signbit(x), so sign(+0) = +1, sign(-0) = -1):

    xb           = bits(x)
    Q, K, V      = xb . Wq/k/v          binary linear: (K - 2 popcount(xb XOR w)) * alpha + b
    Qb, Kb, Vb   = bits(Q), bits(K), bits(V)     per head, d = H / heads; the linear's kernel
                                        writes these sign bits directly, Q/K/V floats never exist
    S            = Qb Kb^T   (integer)  A = 1[S > 0] on kept keys ("bool"; S == 0 -> 0) or
                                        A = 1 on kept keys ("softmax_sign": sign of a softmax)
    ctx          = A Vb = popcount(A) - 2 popcount(A AND v)      integer, bits(ctx): 0 -> +1
    x            = LayerNorm(x + bits(ctx) . Wout)
    h            = bits(x) . Wffn_in                          (again only bits(h) is written)
    x            = LayerNorm(x + bits(h) . Wffn_out)

The FFN output dense binarizes gelu(h), and sign(gelu(h)) = sign(h) for every float32 h,
including h <= -6 or so where float32 GELU underflows to -0.0 (sign -1, the sign bit of h):
so the runtime packs the sign bits of h and never evaluates GELU. Scores need no 1/sqrt(d)
scaling (it does not change a sign) and no -1e4 additive mask (masked keys are cleared in A).
Then pooled = tanh(bits(x[:, 0]) . Wpool) and logits = pooled @ Wcls + bcls in float32.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..export.format import PackedFile, PackedFormatError, read_packed
from ..export.pack import nwords
from .kernels import MODE_BOOL, MODE_KEEP, Kernels

__all__ = ["PackedBert", "load_packed"]

_MODES = {"bool": MODE_BOOL, "softmax_sign": MODE_KEEP}


class _Linear:
    """A binarized linear prepared for the kernels: interleaved bits, alpha, bias."""

    def __init__(self, bits, alpha, bias, k):
        self.n, self.k = int(alpha.shape[0]), int(k)
        if bits.shape != (self.n, nwords(k)) or bias.shape != (self.n,):
            raise PackedFormatError(f"binary linear tensors have shapes {bits.shape}, "
                                    f"{alpha.shape}, {bias.shape}; expected [{self.n}, "
                                    f"{nwords(k)}] bits for {k} inputs")
        self.w = Kernels.prepare(bits)
        self.alpha = np.ascontiguousarray(alpha, np.float32)
        self.bias = np.ascontiguousarray(bias, np.float32)

    def __call__(self, kern: Kernels, xb, signs=False):
        return kern.bin_linear(xb, self.w, self.n, self.k, self.alpha, self.bias, signs)


class PackedBert:
    """A packed BiBERT ``BertForSequenceClassification``; call it on token ids for logits.

    ``backend``: ``"auto"`` (compiled kernels if built, else numpy), ``"c"`` or ``"numpy"``;
    ``isa`` picks the compiled kernel set (``avx512``, ``avx2``, ``popcnt``, ``generic``);
    ``num_threads`` sizes the kernels' thread pool (default: ``BIBERT_NUM_THREADS``, else
    ``OMP_NUM_THREADS``, else the CPU count; process-wide). ``self.backend`` says what runs.
    """

    def __init__(self, packed: PackedFile, backend: str = "auto", isa: Optional[str] = None,
                 num_threads: Optional[int] = None):
        self.config = c = dict(packed.config)
        if c.get("architecture") != "BertForSequenceClassification":
            raise PackedFormatError(f"unsupported architecture {c.get('architecture')!r}")
        if c.get("attention") not in _MODES:
            raise PackedFormatError(f"unsupported attention mode {c.get('attention')!r}; the "
                                    f"runtime runs {sorted(_MODES)}")
        self.kernels = Kernels(backend, isa, num_threads)
        t = packed.tensors
        try:
            self._build(c, t)
        except KeyError as err:
            raise PackedFormatError(f"packed file lacks tensor {err}") from None

    def _build(self, c, t):
        h = self.hidden = int(c["hidden_size"])
        self.heads = int(c["num_attention_heads"])
        f = int(c["intermediate_size"])
        eps = c["layer_norm_eps"]
        self.mode = _MODES[c["attention"]]
        self.pad_token_id = int(c["pad_token_id"])
        self.word_bits = np.ascontiguousarray(t["embeddings.word.bits"], np.uint64)
        self.word_alpha = np.ascontiguousarray(t["embeddings.word.alpha"], np.float32)
        self.pos = np.ascontiguousarray(t["embeddings.position"], np.float32)
        self.tok = np.ascontiguousarray(t["embeddings.token_type"], np.float32)
        if self.word_bits.shape != (self.word_alpha.shape[0], nwords(h)) \
                or self.pos.shape[1] != h or self.tok.shape[1] != h:
            raise PackedFormatError("embedding tensors do not match hidden_size")

        def ln(name):
            return (t[f"{name}.weight"], t[f"{name}.bias"], float(eps[name]))

        def lin(name, k):
            return (t[f"{name}.bits"], t[f"{name}.alpha"], t[f"{name}.bias"], k)

        self.emb_ln = ln("embeddings.ln")
        self.layers = []
        for i in range(int(c["num_hidden_layers"])):
            p = f"layers.{i}"
            q, k, v = (lin(f"{p}.{m}", h) for m in "qkv")
            qkv = _Linear(*(np.concatenate(z) for z in zip(q[:3], k[:3], v[:3])), h)
            self.layers.append({
                "qkv": qkv, "out": _Linear(*lin(f"{p}.out", h)),
                "ffn_in": _Linear(*lin(f"{p}.ffn_in", h)), "ffn_out": _Linear(*lin(f"{p}.ffn_out", f)),
                "ln1": ln(f"{p}.ln1"), "ln2": ln(f"{p}.ln2")})
        self.pooler = _Linear(*lin("pooler", h))
        self.cls_w = np.ascontiguousarray(t["classifier.weight"], np.float32)
        self.cls_b = np.ascontiguousarray(t["classifier.bias"], np.float32)

    @property
    def backend(self) -> str:
        """What computes: ``c-avx512``, ``c-avx2``, ``c-popcnt``, ``c-generic`` or ``numpy``."""
        return self.kernels.name

    def _check(self, input_ids, token_type_ids):
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"input_ids must be an integer array [batch, seq_len], got "
                             f"{ids.dtype} {ids.shape}")
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"empty batch: input_ids has shape {ids.shape}; pass at least one "
                             "sequence of at least one token")
        if ids.shape[1] > self.pos.shape[0]:
            raise ValueError(f"seq_len {ids.shape[1]} exceeds max_position_embeddings "
                             f"{self.pos.shape[0]}")
        if ids.min() < 0 or ids.max() >= self.word_alpha.shape[0]:
            raise ValueError(f"input_ids outside [0, {self.word_alpha.shape[0]})")
        tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
        if tt.shape != ids.shape or not np.issubdtype(tt.dtype, np.integer):
            raise ValueError(f"token_type_ids must be integers shaped like input_ids {ids.shape}")
        if tt.min() < 0 or tt.max() >= self.tok.shape[0]:
            raise ValueError(f"token_type_ids outside [0, {self.tok.shape[0]})")
        return ids.astype(np.int64), tt.astype(np.int64)

    def __call__(self, input_ids, token_type_ids=None, output_hidden_states=False):
        """Logits ``[B, num_labels]`` (float32); with ``output_hidden_states`` also the list of
        hidden states (embedding output, then every layer's output), each ``[B, L, H]``."""
        trace = {} if output_hidden_states else None
        logits = self._forward(input_ids, token_type_ids, trace)
        if not output_hidden_states:
            return logits
        n = len(self.layers)
        return logits, [trace["embeddings"]] + [trace[f"layers.{i}.ln2"] for i in range(n)]

    def intermediates(self, input_ids, token_type_ids=None) -> dict:
        """Every float tensor whose sign the forward takes, for comparing with another
        implementation: ``embeddings``, ``layers.<i>.{qkv, ln1, ffn_in, ln2}`` (``[B, L, N]``),
        plus ``layers.<i>.context`` (integers) and ``pooled``, ``logits``."""
        trace = {}
        trace["logits"] = self._forward(input_ids, token_type_ids, trace)
        return trace

    def _forward(self, input_ids, token_type_ids, trace: Optional[dict]):
        ids, tt = self._check(input_ids, token_type_ids)
        kern, (b, l), h = self.kernels, ids.shape, self.hidden

        def rec(name, v):
            if trace is not None:
                trace[name] = v.reshape(b, l, -1)
            return v

        keep = ids != self.pad_token_id  # padded keys get attention 0
        x = kern.embed(ids, tt, self.word_bits, self.word_alpha, self.pos, self.tok)
        x = rec("embeddings", kern.layer_norm(x, None, *self.emb_ln))
        for i, layer in enumerate(self.layers):
            p = f"layers.{i}."
            xb = kern.pack_signs(x)
            # Q/K/V and the FFN-in output are consumed only through their signs: the kernels
            # write the packed sign bits directly (floats only when tracing).
            qkv = layer["qkv"](kern, xb, signs=True)
            if trace is not None:
                rec(p + "qkv", layer["qkv"](kern, xb))
            ctx = rec(p + "context", kern.attention(qkv.reshape(b, l, -1), keep, h, self.heads,
                                                    self.mode))
            a = layer["out"](kern, kern.pack_signs(ctx.reshape(b * l, h)))
            x = rec(p + "ln1", kern.layer_norm(x, a, *layer["ln1"]))
            xb = kern.pack_signs(x)
            hb = layer["ffn_in"](kern, xb, signs=True)  # bits(gelu(h)) == bits(h)
            if trace is not None:
                rec(p + "ffn_in", layer["ffn_in"](kern, xb))
            f = layer["ffn_out"](kern, hb)
            x = rec(p + "ln2", kern.layer_norm(x, f, *layer["ln2"]))
        first = np.ascontiguousarray(x.reshape(b, l, h)[:, 0])
        pooled = np.tanh(self.pooler(kern, kern.pack_signs(first)))
        if trace is not None:
            trace["pooled"] = pooled
        return pooled @ self.cls_w + self.cls_b

    def __repr__(self):
        c = self.config
        return (f"PackedBert(layers={c['num_hidden_layers']}, hidden={c['hidden_size']}, "
                f"heads={c['num_attention_heads']}, attention={c['attention']}, "
                f"labels={c['num_labels']}, backend={self.backend})")


def load_packed(path: str, backend: str = "auto", isa: Optional[str] = None,
                num_threads: Optional[int] = None) -> PackedBert:
    """Read and verify a ``.bibert`` file (see ``paddle_bibert.export.format``); return the
    runnable model. Raises ``PackedFormatError`` on a corrupted, truncated or foreign file."""
    return PackedBert(read_packed(path), backend=backend, isa=isa, num_threads=num_threads)
