"""Activation ramp: a binarized student whose activations move from full precision to binary.

At mix ``m`` every activation quantizer ``q`` of the student returns ``x + m (q(x) - x)``: the
full-precision activation at ``m = 0``, the binary one at ``m = 1``; the gradient is
``(1 - m) + m q'(x)`` (``q'`` its straight-through estimator). ``m`` rises linearly from 0 to 1
over the first part of training, so the weights, which are binary from the first step, adapt
while the activations still carry more than a sign (a binarized student learns CoLA with binary
weights and full-precision activations where the fully binary one stays in the majority class);
evaluation, and so the kept model, always sees ``m = 1``: what is scored is the 1-bit model.

Only quantizers that map a tensor into its own space take part: the inputs of the binarized
linears, Q/K/V, and a quantized softmax map (BiT's {0, a}); Bi-Attention's ``1[s > 0]`` maps
scores to a map, where no blend means anything, and stays binary throughout. Weights and word
embeddings are binary throughout.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import List

from .layers import BiLinear, BiMultiHeadAttention
from .quantizers import BoolAttention, Quantizer

__all__ = ["ActivationRamp", "activation_quantizers"]


def activation_quantizers(model) -> List[Quantizer]:
    """The activation quantizers of a binarized model that the ramp blends, each once."""
    found = {}
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, BiLinear):
            qs = [layer.act_quantizer]
        elif isinstance(layer, BiMultiHeadAttention):
            qs = [layer.q_quantizer, layer.k_quantizer, layer.v_quantizer, layer.attention_quantizer]
        else:
            continue
        for q in qs:
            if q is not None and not isinstance(q, BoolAttention):
                found[id(q)] = q
    return list(found.values())


class ActivationRamp:
    """Blend of full-precision and binary activations over the first ``fraction`` of training.

    ``at(step, total)`` sets the mix for the step about to run (``step / (fraction * total)``,
    at most 1); ``binary()`` is a context in which the model is fully binary (evaluation).
    The mix is a function of the step alone, so a resumed run continues the same ramp.
    """

    def __init__(self, model, fraction: float):
        if not 0 <= fraction <= 1:
            raise ValueError(f"act_ramp must be in [0, 1] (0 = binary from the first step), got {fraction}")
        self.fraction, self.mix = float(fraction), 1.0
        self.quantizers = activation_quantizers(model)
        if fraction > 0 and not self.quantizers:
            raise ValueError("act_ramp: the model has no activation quantizer to ramp (is it binarized, "
                             "with binary activations?)")
        self._hooks = [q.register_forward_post_hook(self._blend) for q in self.quantizers]

    def at(self, step: int, total: int) -> float:
        span = self.fraction * total
        self.mix = 1.0 if span <= 0 else min(1.0, step / span)
        return self.mix

    @contextmanager
    def binary(self):
        saved, self.mix = self.mix, 1.0
        try:
            yield
        finally:
            self.mix = saved

    def remove(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _blend(self, layer, inputs, output):
        if self.mix >= 1.0:
            return None  # the quantizer's own output
        x = inputs[0]
        return x + self.mix * (output - x)
