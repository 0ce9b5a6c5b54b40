"""Read per-layer Q, K, V (before binarization) and hidden states through forward hooks.

Works alike on a binarized student and an untouched full-precision teacher: both have
``q_proj``/``k_proj``/``v_proj`` sublayers inside each attention (``nn.MultiHeadAttention`` or
``BiMultiHeadAttention``) whose outputs are the pre-binarization Q, K, V, an ``embeddings``
module whose output is the first hidden state, and ``encoder.layers[i]`` whose outputs are the
others. No module is modified; hooks are removed when the context exits.
"""

from __future__ import annotations

from typing import Dict, List

from paddle import nn

from ..quant.layers import BiMultiHeadAttention

__all__ = ["LENGTH_AXIS", "Taps"]

#: the axis of each stream's tensors that runs over token positions (hidden [B, L, H];
#: Q/K/V [B, heads, L, d_head], as recorded below)
LENGTH_AXIS = {"hidden": 1, "q": 2, "k": 2, "v": 2}


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class Taps:
    """Context manager recording ``q``, ``k``, ``v`` ([B, H, L, d_head]) and ``hidden``.

    ``hidden`` holds the embedding output plus every encoder layer's output (L+1 tensors).
    Only the streams asked for are recorded (``streams``), so a teacher run need not keep
    tensors no enabled loss reads.
    """

    def __init__(self, model, streams=("q", "k", "v", "hidden")):
        self.model = model
        self.streams = set(streams)
        self.attentions = [m for m in model.sublayers()
                           if isinstance(m, (nn.MultiHeadAttention, BiMultiHeadAttention))]
        self.embeddings = next((m for n, m in model.named_sublayers()
                                if n == "embeddings" or n.endswith(".embeddings")), None)
        self.layers = [m for m in model.sublayers() if isinstance(m, nn.TransformerEncoderLayer)]
        if not self.attentions or not self.layers:
            raise ValueError(f"{type(model).__name__} has no TransformerEncoder attention layers to tap")
        if "hidden" in self.streams and self.embeddings is None:
            raise ValueError(f"{type(model).__name__} has no `embeddings` sublayer to tap")
        self.records: Dict[str, List] = {}
        self._handles = []

    @property
    def num_layers(self):
        return len(self.layers)

    def _rec(self, key, i, heads=None):
        def hook(layer, inputs, output):
            out = _first(output)
            if heads is not None:
                b, n, _ = out.shape
                # contiguous: Paddle's matmul on a transposed (strided) view is ~18x slower
                out = out.reshape([b, n, heads, -1]).transpose([0, 2, 1, 3]).contiguous()
            self.records[key][i] = out
        return hook

    def __enter__(self):
        self.clear()
        for i, att in enumerate(self.attentions):
            for key, sub in (("q", att.q_proj), ("k", att.k_proj), ("v", att.v_proj)):
                if key in self.streams:
                    self._handles.append(sub.register_forward_post_hook(self._rec(key, i, att.num_heads)))
        if "hidden" in self.streams:
            self._handles.append(self.embeddings.register_forward_post_hook(self._rec("hidden", 0)))
            for i, layer in enumerate(self.layers):
                self._handles.append(layer.register_forward_post_hook(self._rec("hidden", i + 1)))
        return self

    def clear(self):
        n = {"q": len(self.attentions), "k": len(self.attentions), "v": len(self.attentions),
             "hidden": len(self.layers) + 1}
        self.records = {s: [None] * n[s] for s in self.streams}

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def __getitem__(self, stream):
        return self.records[stream]
