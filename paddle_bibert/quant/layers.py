"""Binary layers: BiLinear, BiEmbedding and the binary multi-head attention (Bi-Attention).

The layers take their quantizers as arguments (a registered name, a layer, or None for full
precision), larq-style: a new binarization scheme is a new quantizer, not a new layer. They
keep the latent full-precision weights, under the same parameter names as the Paddle layers
they replace, so a binarized model's state dict has the same keys as the full-precision one.
"""

from __future__ import annotations

import math
from typing import Optional

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.nn.layer.transformer import _convert_attention_mask

from .quantizers import get_quantizer

__all__ = ["BiLinear", "BiEmbedding", "BiMultiHeadAttention", "ATTENTION_MODES"]

#: How the attention map is formed from the (binarized) scores S = Qb Kb^T / sqrt(d) + mask.
#: bool         - BiBERT's Bi-Attention: A = 1[S > 0], no softmax.
#: softmax_sign - the plain 1-1-1 baseline: A = sign(softmax(S)) (all ones on unmasked keys).
#: softmax      - A = softmax(S), full precision map (over binarized Q/K/V if those are on).
ATTENTION_MODES = ("bool", "softmax_sign", "softmax")

# Additive mask entries at or below this are padding (PaddleNLP uses -1e4, Paddle's bool/int
# conversion -1e9); the BiBERT reference uses the same threshold for its DMD masking.
MASKED_BELOW = -1e2


class BiLinear(nn.Layer):
    """``y = q_a(x) @ q_w(W) + b``: binarized input and weight, full-precision bias.

    Paddle's weight layout ``[in, out]`` is kept, so the default weight quantizer
    (``channel_mean_sign``) reduces over ``axis=0``: one scale per output channel.
    """

    def __init__(self, in_features, out_features, weight_quantizer="channel_mean_sign",
                 act_quantizer="ste_sign", bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = self.create_parameter([in_features, out_features])
        self.bias = self.create_parameter([out_features], is_bias=True) if bias else None
        self.weight_quantizer = get_quantizer(weight_quantizer)
        self.act_quantizer = get_quantizer(act_quantizer, channels=in_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **quantizers) -> "BiLinear":
        """Wrap an ``nn.Linear``'s own parameters (no copy: training continues from them)."""
        in_f, out_f = linear.weight.shape
        layer = cls(in_f, out_f, bias=False, **quantizers)
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def binary_weight(self):
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def forward(self, x, prequantized=False):
        """``prequantized=True``: ``x`` is already ``act_quantizer(x)`` (shared by Q/K/V)."""
        if self.act_quantizer is not None and not prequantized:
            x = self.act_quantizer(x)
        return F.linear(x, self.binary_weight(), self.bias)

    def extra_repr(self):
        return (f"in={self.in_features}, out={self.out_features}, "
                f"weight={_qname(self.weight_quantizer)}, act={_qname(self.act_quantizer)}")


class BiEmbedding(nn.Layer):
    """Word embedding with each looked-up row binarized: ``alpha_r * sign(E_r - mean(E_r))``.

    Rows are binarized independently, so gathering first and binarizing the gathered rows
    gives exactly the rows of the binarized table, at the cost of the batch instead of the
    whole vocabulary; the gradient still reaches only the looked-up rows of the latent table.
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, sparse=False,
                 weight_quantizer="row_mean_sign"):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self._padding_idx = padding_idx
        self._sparse = sparse
        self.weight = self.create_parameter([num_embeddings, embedding_dim])
        self.weight_quantizer = get_quantizer(weight_quantizer)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, **quantizers) -> "BiEmbedding":
        layer = cls(*emb.weight.shape, padding_idx=emb._padding_idx, sparse=emb._sparse,
                    **quantizers)
        layer.weight = emb.weight
        return layer

    def forward(self, ids):
        rows = F.embedding(ids, self.weight, padding_idx=self._padding_idx, sparse=self._sparse)
        return rows if self.weight_quantizer is None else self.weight_quantizer(rows)

    def extra_repr(self):
        return (f"{self.num_embeddings}, {self.embedding_dim}, "
                f"weight={_qname(self.weight_quantizer)}")


class BiMultiHeadAttention(nn.Layer):
    """Drop-in replacement for ``paddle.nn.MultiHeadAttention`` with binary attention.

        Qb, Kb, Vb = q(Q), q(K), q(V)                 q = sign with clipped STE by default
        S = Qb Kb^T / sqrt(d_head) + mask
        A = 1[S > 0]                                   mode "bool" (Bi-Attention, no softmax)
        context = A Vb,  out = out_proj(context)

    ``attn_mask`` may be additive float (0 keep / large negative drop, PaddleNLP's form) or
    bool/int (True/1 keep), as for ``nn.MultiHeadAttention``; padded keys get weight 0 in
    every mode. Q, K, V before binarization are the outputs of ``q_proj``/``k_proj``/
    ``v_proj``, so forward hooks on those sublayers read them (distillation taps).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, attention="bool",
                 qkv_quantizer="ste_sign", attention_quantizer=None, need_weights=False):
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {attention!r}; choose one of {ATTENTION_MODES}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.need_weights = need_weights
        self.attention = attention
        # one instance each: quantizers with learned state (elastic, LSQ) learn Q's, K's and V's apart
        self.q_quantizer, self.k_quantizer, self.v_quantizer = (
            get_quantizer(qkv_quantizer, channels=self.head_dim) for _ in "qkv")
        if attention_quantizer is None and attention != "softmax":
            attention_quantizer = "bool" if attention == "bool" else "ste_sign"
        self.attention_quantizer = get_quantizer(attention_quantizer)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    @classmethod
    def from_mha(cls, mha: nn.MultiHeadAttention, **kwargs) -> "BiMultiHeadAttention":
        """Take over an ``nn.MultiHeadAttention``'s projections (the same layer objects)."""
        if mha.kdim != mha.embed_dim or mha.vdim != mha.embed_dim:
            raise ValueError("binary attention needs kdim == vdim == embed_dim")
        layer = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout,
                    need_weights=mha.need_weights, **kwargs)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(layer, name, getattr(mha, name))
        return layer

    def _heads(self, x):
        b, n = x.shape[0], x.shape[1]
        # contiguous: Paddle's CPU matmul on a transposed (strided) view is ~18x slower
        return x.reshape([b, n, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3]).contiguous()

    def forward(self, query, key=None, value=None, attn_mask=None, cache=None):
        if cache is not None:
            raise NotImplementedError(
                "BiMultiHeadAttention has no incremental-decoding cache; call it with cache=None "
                "(BERT-style encoders never pass one unless use_cache=True)")
        key = query if key is None else key
        value = query if value is None else value
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if key is query and value is query and _same_act_quantizer(projs):
            # Self-attention: binarize the shared input once instead of three times (the same
            # values, and the same gradient up to the order of a three-term sum).
            xb = self.q_proj.act_quantizer(query)
            q, k, v = (self._heads(p(xb, prequantized=True)) for p in projs)
        else:
            q = self._heads(self.q_proj(query))
            k = self._heads(self.k_proj(key))
            v = self._heads(self.v_proj(value))
        if self.q_quantizer is not None:
            q, k, v = self.q_quantizer(q), self.k_quantizer(k), self.v_quantizer(v)
        s = paddle.matmul(q, k, transpose_y=True) * (1.0 / math.sqrt(self.head_dim))
        mask = _convert_attention_mask(attn_mask, s.dtype) if attn_mask is not None else None
        if mask is not None:
            s = s + mask
        if self.attention == "softmax":
            a = self._drop(F.softmax(s, axis=-1))
            if self.attention_quantizer is not None:
                a = self.attention_quantizer(a)
        elif self.attention == "softmax_sign":
            a = self.attention_quantizer(F.softmax(s, axis=-1))
            if mask is not None:
                # sign(+0) = +1 would give padded keys weight 1; they must stay 0.
                a = a * (mask > MASKED_BELOW).astype(a.dtype)
            a = self._drop_entries(a)
        else:
            a = self.attention_quantizer(self._drop(s))
        context = paddle.matmul(a, v).transpose([0, 2, 1, 3])
        out = self.out_proj(context.reshape([0, 0, self.embed_dim]))
        return (out, a) if self.need_weights else out

    # Attention dropout (training only; the packed runtime has none) acts before the map is
    # quantized, as the authors' code does: on the scores before the bool function (BiBERT) and on
    # the probabilities before their quantizer (BiT, LSQ), so the map stays in {0,1} or {0,a} and
    # A @ sign(V) stays an integer. Upscaling dropout after the map would make it {0, 1/(1-p)};
    # the attention-output input's STE (gradient where |x| <= 1) then stops the gradient wherever
    # the context is not exactly 0.
    def _drop(self, x):
        """Upscaling dropout of what a quantizer that maps 0 to 0 turns into the map."""
        if not (self.dropout and self.training):
            return x
        return F.dropout(x, self.dropout, training=True, mode="upscale_in_train")

    def _drop_entries(self, a):
        """Drop entries of a sign map (sign(+0) = +1, so dropping its input would keep them):
        multiply by a {0, 1} keep mask, which is what dropout before a sign with sign(0) = 0 does."""
        if not (self.dropout and self.training):
            return a
        return F.dropout(a, self.dropout, training=True, mode="downscale_in_infer")

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"attention={self.attention}, qkv={_qname(self.q_quantizer)}")


def _same_act_quantizer(projs) -> bool:
    """True when every projection is a BiLinear whose input quantizer is a parameter-free
    quantizer of the same type (so one application serves all three)."""
    qs = [p.act_quantizer if isinstance(p, BiLinear) else None for p in projs]
    return (qs[0] is not None and not qs[0].parameters()
            and all(type(q) is type(qs[0]) for q in qs))


def _qname(q: Optional[nn.Layer]) -> str:
    return "fp" if q is None else getattr(q, "name", None) or type(q).__name__
