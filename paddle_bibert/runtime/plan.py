"""The one-call forward: a loaded model's tensors laid out once as the compiled kernels'
``make_plan`` takes them (``csrc/plan.c``), so that a forward is one call of the kernels
(``csrc/forward.c``: the same operations in the same order as ``PackedBert._forward``, so the
same logits) instead of ~60 calls, each with Python's arrays and checks around it: for one
short sentence those calls took more than half of a MiniLM forward."""

from __future__ import annotations

import numpy as np

from .kernels import MODE_SOFTMAX, Kernels, _C

__all__ = ["available", "make_plan", "run", "spec"]


def available() -> bool:
    """Whether the compiled kernels hold the one-call forward (an extension built from older
    sources does not: the model then calls its kernels one at a time)."""
    return _C is not None and hasattr(_C, "make_plan")


def make_plan(model, kern: Kernels):
    """The plan of a ``PackedBert`` for ``kern`` (whose kernel set decides whether the weights'
    nibble panels go in), or None on the numpy backend."""
    return _C.make_plan(spec(model, kern)) if kern.compiled else None


def spec(model, kern: Kernels) -> tuple:
    """What ``make_plan`` hands the kernels: (hidden, FFN size, heads, whether the attention may
    use tables (``kern.tables``), embeddings, layers, pooler), each array as the kernels read it
    (see csrc/plan.c for the layout)."""
    ffn = model.layers[0]["ffn_in"].n if model.layers else model.hidden
    emb = (model.word_alpha.shape[0], model.pos.shape[0], model.tok.shape[0], model.word_bits,
           model.word_alpha, model.pos, model.tok, _norm(model.emb_ln))
    layers = tuple(_layer(model, kern, i) for i in range(len(model.layers)))
    pool = (_quant(model.pooler.q), _linear(model.pooler, kern))
    return (model.hidden, ffn, model.heads, bool(kern.tables), emb, layers, pool)


def run(plan, ids: np.ndarray, token_types: np.ndarray, keep: np.ndarray,
        hidden: int) -> np.ndarray:
    """The pooler's output before its tanh, float32 ``[B, hidden]``, for checked ids."""
    b, l = ids.shape
    pooled = np.empty((b, hidden), np.float32)
    _C.forward(plan, np.ascontiguousarray(ids, np.int64),
               np.ascontiguousarray(token_types, np.int64), np.ascontiguousarray(keep, np.uint8),
               b, l, pooled)
    return pooled


def _layer(model, kern, i):
    layer = model.layers[i]
    fused = layer["qkv"]
    lins = (fused,) if fused is not None else tuple(layer[m] for m in "qkv")
    table = None
    if model.mode == MODE_SOFTMAX:
        table = kern.softmax_table(model.hidden // model.heads, float(layer["score_scale"]))
    # three products whose rows are not whole words: their floats, packed after these shifts
    shift = layer["att_shift"] if fused is None and model.hidden % 64 else None
    return (tuple(_quant(q) for q in model.qkv_quantizers(i)),
            tuple(_linear(m, kern, bits=True) for m in lins), shift,
            model.mode, float(layer["score_scale"]), float(layer["ctx_scale"]),
            float(layer["map_scale"]), table,
            _quant(layer["out"].q), _linear(layer["out"], kern), _norm(layer["ln1"]),
            _quant(layer["ffn_in"].q), _linear(layer["ffn_in"], kern, bits=True),
            _linear(layer["ffn_out"], kern), _norm(layer["ln2"]))


def _quant(q):
    return (q.shift, float(q.scale), int(q.kind))


def _norm(ln):
    weight, bias, eps = ln
    return (np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(bias, np.float32),
            float(eps))


def _linear(lin, kern, bits: bool = False):
    """A linear's tensors; with ``bits``, also what its bits are (its count cut, else the
    quantizer its outputs feed, else None: their signs), as ``_Linear.bits`` computes them."""
    lo = hi = feed = None
    if bits:
        cut = lin.cut()
        if cut is not None:
            lo, hi = (np.ascontiguousarray(x, np.int32) for x in cut)
        elif not lin.plain_feed:
            shift, scale, kind, act = lin.feeds
            feed = (shift, float(scale), int(kind), int(act))
    return (lin.w, lin.nibbles(kern), lin.n, lin.k, lin.alpha, lin.bias, lin.unsigned, lo, hi,
            feed)

