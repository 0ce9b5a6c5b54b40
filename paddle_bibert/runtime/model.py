"""Inference of a packed BiBERT classifier on bits (no Paddle, no PaddleNLP).

Per encoder layer, with x the float hidden states [T = B*L, H] and ``sign`` the package's
convention (bit = signbit(x), so sign(+0) = +1, sign(-0) = -1). BiBERT (format version 1):

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

Elastic activations (format version 2: ``bibert_elastic``, ``bit``). An input binarized by
``elastic_sign`` a * sign(v + b) is packed as the sign bits of v + b (float32) and a is folded
into the linear's scales, alpha_n * a; one binarized by ``elastic_unsigned`` a * 1[(v + b) / a
> 0.5] is packed as those {0, 1} bits and goes through the {0,1} x {-1,+1} product

    y = (popcount(A) - 2 popcount(A AND w)) * (alpha_n * a) + bias

(BiT's FFN output dense, after ReLU). Where a sign-fed product's output only feeds such a
quantizer (FFN input, elastic Q/K/V), its bits are those of the counts in one interval per
channel, worked out once by evaluating every count (``reference.quant_cut``): two integer
compares per output, as the plain sign's ``sign_cut``; else the product's epilogue computes y
and applies the activation, shift and threshold without writing y. Q/K/V with elastic quantizers are packed as the
sign bits of Q + b_q, K + b_k, V + b_v (shift per head channel), and the context is scaled by
the scales of the map and of V. BiT's attention ("softmax" with an ``elastic_unsigned`` map):

    S    = (d - 2 popcount(q XOR k)) * a_q a_k / sqrt(d)      kept keys only
    p    = softmax(S)  (float64, rounded to float32);   A = 1[p / a_p > 0.5]   (float32)
    ctx  = (popcount(A) - 2 popcount(A AND v)) * a_p a_v
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..export.format import (ACT_QUANTIZERS, ELASTIC, LINEARS, MAP_QUANTIZERS, QKV_QUANTIZERS,
                             VOCAB_TENSOR, PackedFile, PackedFormatError, decode_vocab, read_packed,
                             site_quantizers)
from ..export.pack import nwords
from .kernels import (ACT_GELU, ACT_NONE, ACT_RELU, MODE_BOOL, MODE_KEEP, MODE_SOFTMAX, Q_SIGN,
                      Q_UNSIGNED, Kernels)
from . import plan
from . import reference as ref
from .text import TextModel

__all__ = ["PackedBert", "load_packed"]

_MODES = {"bool": MODE_BOOL, "softmax_sign": MODE_KEEP, "softmax": MODE_SOFTMAX}
_ACTS = {"gelu": ACT_GELU, "relu": ACT_RELU}


class _Quantizer:
    """A binarized activation as the file describes it: ``ste_sign`` sign(v), ``elastic_sign``
    a * sign(v + b), ``elastic_unsigned`` a * 1[(v + b) / a > 0.5]."""

    def __init__(self, name, tensors, site, channels):
        self.name = name
        self.kind = Q_UNSIGNED if name == "elastic_unsigned" else Q_SIGN
        self.scale, self.shift = np.float32(1.0), None
        if name in ELASTIC:
            scale = np.asarray(tensors[f"{site}.scale"], np.float32).reshape(-1)
            if scale.shape != (1,):
                raise PackedFormatError(f"{site}.scale has shape {scale.shape}, expected [1]")
            self.scale = scale[0]
            if f"{site}.shift" in tensors:
                self.shift = np.ascontiguousarray(tensors[f"{site}.shift"], np.float32)
                if channels is None or self.shift.shape != (channels,):
                    raise PackedFormatError(f"{site}.shift has shape {self.shift.shape}, "
                                            f"expected [{channels}]")

    @property
    def plain(self) -> bool:
        return self.name == "ste_sign"

    def same_bits(self, other) -> bool:
        """True if both quantizers give the same bits for every input (scales may differ)."""
        a, b = self.shift, other.shift
        return self.kind == other.kind and (a is None) == (b is None) and (
            a is None or a.tobytes() == b.tobytes()) and (
            self.kind == Q_SIGN or self.scale == other.scale)

    @property
    def spec(self):
        """(shift, scale, kind): what ``Kernels.layer_norm``'s ``quants`` take."""
        return self.shift, self.scale, self.kind

    def bits(self, kern: Kernels, x, act: int = ACT_NONE):
        """The packed bits of x ([rows, channels] float32, as the kernels write it)."""
        if self.plain and act == ACT_NONE:
            return kern.pack_signs(x)
        return kern.pack_act(x, self.shift, self.scale, self.kind, act, check=False)


_SIGN = _Quantizer("ste_sign", {}, None, None)  # sign(v + shift), the shift given per call


class _Linear:
    """A binarized linear prepared for the kernels: interleaved bits, scales, bias, and the
    quantizer of its input (whose scale is folded into alpha). Called, it gives y; ``bits``
    gives the bits of y through the quantizer its outputs feed (``feed``), y never written."""

    def __init__(self, bits, alpha, bias, k, quantizer: _Quantizer, scaled: bool = False):
        self.n, self.k = int(alpha.shape[0]), int(k)
        if bits.shape != (self.n, nwords(k)) or bias.shape != (self.n,):
            raise PackedFormatError(f"binary linear tensors have shapes {bits.shape}, "
                                    f"{alpha.shape}, {bias.shape}; expected [{self.n}, "
                                    f"{nwords(k)}] bits for {k} inputs")
        self.w_bits = np.ascontiguousarray(bits, np.uint64)
        self.w = Kernels.prepare(bits)
        self.q = quantizer
        self.unsigned = quantizer.kind == Q_UNSIGNED
        # y = (a sign(v + b)) . (alpha_n sign(w)) = (sign(v + b) . sign(w)) * (alpha_n * a)
        scale = 1.0 if scaled else float(quantizer.scale)
        self.alpha = np.ascontiguousarray(np.asarray(alpha, np.float64) * scale, np.float32)
        self.bias = np.ascontiguousarray(bias, np.float32)
        self._nibbles = None  # Kernels.prepare_nibbles of the bits, made on first use
        self.feed(_SIGN)

    def feed(self, quantizer: _Quantizer, act: int = ACT_NONE, shift=None):
        """What ``bits`` gives: act(y), plus ``shift`` (else the quantizer's own), binarized by
        ``quantizer`` (default: the sign bits of y)."""
        self._feeds = (quantizer.shift if shift is None else shift, quantizer.scale,
                       quantizer.kind, act)
        self._plain = quantizer.plain and shift is None and act == ACT_NONE
        self._cut = self._unset = object()  # worked out on first use (see _bits_cut)

    def nibbles(self, kern: Kernels):
        """The weights' nibble panels where kern's kernel set looks counts up, else None."""
        if not kern.uses_nibbles:
            return None
        if self._nibbles is None:
            self._nibbles = Kernels.prepare_nibbles(self.w_bits)
        return self._nibbles

    def __call__(self, kern: Kernels, xb):
        """y, float32 [rows, n]."""
        # operands made here (shapes checked above) and activations from the kernels: the
        # kernels' per-call checks are skipped
        return kern.bin_linear(xb, self.w, self.n, self.k, self.alpha, self.bias,
                               unsigned=self.unsigned, nibbles=self.nibbles(kern), check=False)

    @property
    def feeds(self):
        """(shift, scale, kind, act): what ``feed`` declared."""
        return self._feeds

    @property
    def plain_feed(self) -> bool:
        """Whether ``bits`` gives the plain sign bits of y."""
        return self._plain

    def cut(self):
        """The count intervals ``bits`` compares with, or None (see ``_bits_cut``)."""
        if self._cut is self._unset:
            self._cut = self._bits_cut()
        return self._cut

    def bits(self, kern: Kernels, xb):
        """The packed bits ``feed`` declared, of y."""
        cut = self.cut()
        if cut is not None:  # the bits by two integer compares per output
            return kern.bin_linear_cut(xb, self.w, self.n, self.k, self.alpha, self.bias,
                                       cut, nibbles=self.nibbles(kern), check=False)
        return kern.bin_linear(xb, self.w, self.n, self.k, self.alpha, self.bias, signs=True,
                               unsigned=self.unsigned,
                               quant=None if self._plain else self._feeds,
                               nibbles=self.nibbles(kern), check=False)

    def _bits_cut(self):
        """The count intervals of the bits ``feed`` declared (reference.sign_cut of a plain
        sign, reference.quant_cut of a quantizer), or None where the product's epilogue computes
        them: {0, 1} inputs, or a channel whose counts with bit 1 are not one interval."""
        if self.unsigned:
            return None
        if self._plain:
            return ref.sign_cut(self.k, self.alpha, self.bias)
        return ref.quant_cut(self.k, self.alpha, self.bias, *self._feeds)


class PackedBert(TextModel):
    """A packed BiBERT ``BertForSequenceClassification``; call it on token ids for logits, or
    (format version 3) on text: ``predict(["a gripping film"])`` -> label names, also
    ``predict_proba`` and ``scores`` (see ``text.TextModel``).

    ``backend``: ``"auto"`` (compiled kernels if built, else numpy), ``"c"`` or ``"numpy"``;
    ``isa`` picks the compiled kernel set (``avx512``, ``avx2``, ``popcnt``, ``generic``);
    ``num_threads`` sizes the kernels' thread pool (default: ``BIBERT_NUM_THREADS``, else
    ``OMP_NUM_THREADS``, else the CPU count; process-wide). ``self.backend`` says what runs.
    ``one_call`` (default True): with the compiled kernels, a forward is one call of them
    (``plan.py``), the same logits as one kernel call at a time (False: what
    ``benchmarks/runtime_profile.py`` times kernel by kernel).
    """

    one_call = True

    def __init__(self, packed: PackedFile, backend: str = "auto", isa: Optional[str] = None,
                 num_threads: Optional[int] = None):
        self.config = c = dict(packed.config)
        if c.get("architecture") != "BertForSequenceClassification":
            raise PackedFormatError(f"unsupported architecture {c.get('architecture')!r}")
        if c.get("attention") not in _MODES:
            raise PackedFormatError(f"unsupported attention mode {c.get('attention')!r}; the "
                                    f"runtime runs {sorted(_MODES)}")
        if c.get("hidden_act", "gelu") not in _ACTS:
            raise PackedFormatError(f"unsupported FFN activation {c.get('hidden_act')!r}; the "
                                    f"runtime runs {sorted(_ACTS)}")
        self.kernels = Kernels(backend, isa, num_threads)
        self._plan = self._plan_nibbles = None  # the one-call forward's (plan.py), made on use
        t = packed.tensors
        self._packed_vocab = decode_vocab(t[VOCAB_TENSOR]) if VOCAB_TENSOR in t else None
        try:
            self._build(c, t)
        except KeyError as err:
            raise PackedFormatError(f"packed file lacks tensor {err}") from None

    def _build(self, c, t):
        h = self.hidden = int(c["hidden_size"])
        self.heads = int(c["num_attention_heads"])
        if self.heads < 1 or h % self.heads:
            raise PackedFormatError(f"hidden_size {h} is not a multiple of {self.heads} heads")
        dh = h // self.heads
        f = int(c["intermediate_size"])
        eps = c["layer_norm_eps"]
        self.mode = _MODES[c["attention"]]
        self.act = _ACTS[c.get("hidden_act", "gelu")]
        self.pad_token_id = int(c["pad_token_id"])
        self.word_bits = np.ascontiguousarray(t["embeddings.word.bits"], np.uint64)
        self.word_alpha = np.ascontiguousarray(t["embeddings.word.alpha"], np.float32)
        self.pos = np.ascontiguousarray(t["embeddings.position"], np.float32)
        self.tok = np.ascontiguousarray(t["embeddings.token_type"], np.float32)
        if self.word_bits.shape != (self.word_alpha.shape[0], nwords(h)) \
                or self.pos.shape[1] != h or self.tok.shape[1] != h:
            raise PackedFormatError("embedding tensors do not match hidden_size")
        sites = site_quantizers(c)

        def quantizer(site, allowed, channels):
            name = sites[site]
            if name not in allowed:
                raise PackedFormatError(f"quantizer {name!r} of {site} is not one of {allowed}")
            return _Quantizer(name, t, site, channels)

        def ln(name):
            return (t[f"{name}.weight"], t[f"{name}.bias"], float(eps[name]))

        def lin(name, k):
            q = quantizer(f"{name}.input", ACT_QUANTIZERS, k)
            return _Linear(t[f"{name}.bits"], t[f"{name}.alpha"], t[f"{name}.bias"], k, q)

        self.emb_ln = ln("embeddings.ln")
        self.layers = []
        for i in range(int(c["num_hidden_layers"])):
            p = f"layers.{i}"
            layer = {m: lin(f"{p}.{m}", f if m == "ffn_out" else h) for m in LINEARS}
            layer.update(ln1=ln(f"{p}.ln1"), ln2=ln(f"{p}.ln2"))
            q, k, v = (layer[m] for m in "qkv")
            # one product for Q, K and V when their inputs binarize alike (BiBERT: always)
            layer["qkv"] = None
            if q.q.same_bits(k.q) and q.q.same_bits(v.q):
                layer["qkv"] = _Linear(np.concatenate([m.w_bits for m in (q, k, v)]),
                                       np.concatenate([m.alpha for m in (q, k, v)]),
                                       np.concatenate([m.bias for m in (q, k, v)]), h, q.q,
                                       scaled=True)
            self._attention(layer, c, t, p, dh, quantizer)
            self._declare_feeds(layer)
            self.layers.append(layer)
        self.pooler = lin("pooler", h)
        self.cls_w = np.ascontiguousarray(t["classifier.weight"], np.float32)
        self.cls_b = np.ascontiguousarray(t["classifier.bias"], np.float32)

    def _attention(self, layer, c, t, p, dh, quantizer):
        """The scales and shifts of one layer's binary attention (see the module docstring)."""
        aq, ak, av = (quantizer(f"{p}.attn.{m}", QKV_QUANTIZERS, dh) for m in "qkv")
        shifts = [a.shift for a in (aq, ak, av)]
        layer["att_shift"] = None
        if any(s is not None for s in shifts):
            # -0.0 leaves every float as it is (+0.0 would turn -0.0 into +0.0)
            layer["att_shift"] = np.concatenate([
                np.tile(s, self.heads) if s is not None else np.full(self.hidden, -0.0, np.float32)
                for s in shifts]).astype(np.float32)
        mode, want = c["attention"], MAP_QUANTIZERS[c["attention"]]
        amap = quantizer(f"{p}.attn.map", (want,), None)
        if mode != "softmax" and not all(a.plain for a in (aq, ak, av)):
            raise PackedFormatError(f"{p}: elastic Q/K/V with attention {mode!r}; the format "
                                    "takes them only with 'softmax'")
        a_q, a_k, a_v, a_p = (float(a.scale) for a in (aq, ak, av, amap))
        # Paddle scales the scores by float32(1 / sqrt(d))
        layer["score_scale"] = a_q * a_k * float(np.float32(1.0 / math.sqrt(dh)))
        layer["map_scale"] = a_p
        layer["ctx_scale"] = a_v * (a_p if mode == "softmax" else 1.0)

    def _declare_feeds(self, layer):
        """What each sign-fed product's bits are: Q/K/V's the signs after the attention's
        shifts, the FFN input's those of the FFN output's quantizer after the activation."""
        shift, fused, h = layer["att_shift"], layer["qkv"], self.hidden
        if fused is not None:
            fused.feed(_SIGN, shift=shift)
        for i, m in enumerate("qkv"):
            layer[m].feed(_SIGN, shift=None if shift is None else shift[i * h:(i + 1) * h])
        ffn_in, q = layer["ffn_in"], layer["ffn_out"].q
        if not (q.plain and self.act == ACT_GELU):
            ffn_in.feed(q, act=self.act)
        # else the signs of h: sign(gelu(h)) == sign(h)

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

    def __getstate__(self):
        """Pickled (and copied) without the plan, a handle on the kernels' memory; made again on
        the next forward."""
        state = dict(self.__dict__)
        state["_plan"] = state["_plan_nibbles"] = None
        return state

    def _one_call_plan(self):
        """The one-call forward's plan for the kernel set in use (remade if that changed
        whether the products look counts up), or None. Made from the tensors of the first
        forward: a model's tensors do not change after it."""
        if not (self.one_call and self.kernels.compiled and plan.available()):
            return None
        nibbles = self.kernels.uses_nibbles
        if self._plan is None or self._plan_nibbles != nibbles:
            self._plan, self._plan_nibbles = plan.make_plan(self, self.kernels), nibbles
        return self._plan

    def _forward(self, input_ids, token_type_ids, trace: Optional[dict]):
        ids, tt = self._check(input_ids, token_type_ids)
        kern, (b, l), h = self.kernels, ids.shape, self.hidden
        one_call = self._one_call_plan() if trace is None else None
        if one_call is not None:
            pooled = plan.run(one_call, ids, tt, ids != self.pad_token_id, h)
            return np.tanh(pooled) @ self.cls_w + self.cls_b

        def rec(name, v):
            if trace is not None:
                trace[name] = v.reshape(b, l, -1)
            return v

        keep = ids != self.pad_token_id  # padded keys get attention 0
        x = kern.embed(ids, tt, self.word_bits, self.word_alpha, self.pos, self.tok)
        x, xbs = self._norm(kern, x, None, self.emb_ln, self.qkv_quantizers(0))
        rec("embeddings", x)
        for i, layer in enumerate(self.layers):
            p = f"layers.{i}."
            qkv = self._qkv_bits(kern, layer, xbs, lambda v: rec(p + "qkv", v), trace is not None)
            # A in {0, a_p}, V in {-a_v, a_v}: the integer context times ctx_scale, by the
            # kernel (a trace keeps the integers)
            scale = layer["ctx_scale"] if trace is None else 1.0
            ctx = rec(p + "context", kern.attention(qkv.reshape(b, l, -1), keep, h, self.heads,
                                                    self.mode, layer["score_scale"],
                                                    layer["map_scale"], scale))
            ctx = ctx.reshape(b * l, h)
            if layer["ctx_scale"] != scale:
                ctx = (ctx.astype(np.float64) * layer["ctx_scale"]).astype(np.float32)
            out = layer["out"]
            a = out(kern, out.q.bits(kern, ctx))
            ffn_in, ffn_out = layer["ffn_in"], layer["ffn_out"]
            x, (xb,) = self._norm(kern, x, a, layer["ln1"], [ffn_in.q])
            rec(p + "ln1", x)
            if trace is None or (ffn_out.q.plain and self.act == ACT_GELU):
                hb = ffn_in.bits(kern, xb)  # act, shift and threshold in the product's epilogue
                if trace is not None:  # (bits(gelu(h)) == bits(h))
                    rec(p + "ffn_in", ffn_in(kern, xb))
            else:
                hb = ffn_out.q.bits(kern, rec(p + "ffn_in", ffn_in(kern, xb)), act=self.act)
            f = ffn_out(kern, hb)
            x, xbs = self._norm(kern, x, f, layer["ln2"], self.qkv_quantizers(i + 1))
            rec(p + "ln2", x)
        first = np.ascontiguousarray(x.reshape(b, l, h)[:, 0])
        pooled = np.tanh(self.pooler(kern, self.pooler.q.bits(kern, first)))
        if trace is not None:
            trace["pooled"] = pooled
        return pooled @ self.cls_w + self.cls_b

    def qkv_quantizers(self, i):
        """The quantizers of layer i's Q/K/V product inputs: one where the three binarize alike
        (one product), else Q's, K's, V's; none past the last layer."""
        if i == len(self.layers):
            return []
        layer = self.layers[i]
        return [layer["qkv"].q] if layer["qkv"] else [layer[m].q for m in "qkv"]

    @staticmethod
    def _norm(kern, x, res, ln, quantizers):
        """LayerNorm(x + res), and its bits through each of the next products' input
        quantizers, from the same kernel call (the quantizers' shapes checked at load)."""
        return kern.layer_norm(x, res, *ln, quants=[q.spec for q in quantizers], check=False)

    def _qkv_bits(self, kern, layer, xbs, rec, tracing):
        """Packed sign bits of Q | K | V (after their shifts), ``[T, nwords(3H)]``, from the
        packed inputs ``xbs`` (see qkv_quantizers)."""
        shift, fused = layer["att_shift"], layer["qkv"]
        # Q/K/V floats never exist unless traced: the products give their (shifted) sign bits
        if fused is not None:
            if not tracing:
                return fused.bits(kern, xbs[0])
            y = fused(kern, xbs[0])
        else:  # each projection binarizes its input with its own shift
            lins = [layer[m] for m in "qkv"]
            if not tracing and self.hidden % 64 == 0:  # whole words: the bit rows concatenate
                return np.concatenate([m.bits(kern, xb) for m, xb in zip(lins, xbs)], 1)
            y = np.concatenate([m(kern, xb) for m, xb in zip(lins, xbs)], 1)
        rec(y)
        return kern.pack_signs(y) if shift is None else kern.pack_act(y, shift)

    def __repr__(self):
        c = self.config
        return (f"PackedBert(layers={c['num_hidden_layers']}, hidden={c['hidden_size']}, "
                f"heads={c['num_attention_heads']}, attention={c['attention']}, "
                f"act={c.get('hidden_act', 'gelu')}, "
                f"labels={c['num_labels']}, backend={self.backend})")


def load_packed(path: str, backend: str = "auto", isa: Optional[str] = None,
                num_threads: Optional[int] = None) -> PackedBert:
    """Read and verify a ``.bibert`` file (see ``paddle_bibert.export.format``); return the
    runnable model. Raises ``PackedFormatError`` on a corrupted, truncated or foreign file."""
    return PackedBert(read_packed(path), backend=backend, isa=isa, num_threads=num_threads)
