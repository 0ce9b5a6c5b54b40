"""Binarization quantizers: forward values and straight-through pseudo-gradients.

Each quantizer is a small ``paddle.nn.Layer`` (so that later schemes may carry learned
parameters) wrapping a ``PyLayer`` that states its forward and its backward exactly.
Quantizers are registered by name, so a config can say ``act_quantizer: ste_sign``.

Sign convention, shared with the bit-packed export and runtime:
``sign(x) = -1 if signbit(x) else +1``. So ``sign(+0.0) = +1`` (every binarized tensor is
two-valued and packs to one bit: the bit *is* the float's sign bit), and ``sign(-0.0) = -1``,
which keeps ``sign(gelu(h)) == sign(h)`` where float32 GELU underflows to ``-0.0``
(h <= -6 or so); see bibert-spec.md section 1.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import paddle
from paddle.autograd import PyLayer

from . import fused

__all__ = [
    "binary_sign",
    "SignSTE",
    "ScaledSignSTE",
    "BoolSTE",
    "Quantizer",
    "SteSign",
    "ChannelMeanSign",
    "RowMeanSign",
    "BoolAttention",
    "register_quantizer",
    "get_quantizer",
    "QUANTIZERS",
]


def binary_sign(x: paddle.Tensor) -> paddle.Tensor:
    """``-1`` where ``signbit(x)`` is set, else ``+1``, in ``x.dtype``.

    ``copysign(1, x)`` is exactly that. (``paddle.signbit`` is ~30x slower on CPU, and a
    broadcast ``[1]`` first argument makes Paddle warn on every call.)
    """
    return paddle.copysign(paddle.ones_like(x), x)


def _inside(x: paddle.Tensor, bound: float, inclusive: bool) -> paddle.Tensor:
    a = x.abs()
    m = a <= bound if inclusive else a < bound
    return m.astype(x.dtype)


class SignSTE(PyLayer):
    """Activation sign with clipped straight-through gradient.

    forward:  y = sign(x)                      (sign(+0) = +1, sign(-0) = -1)
    backward: dL/dx = dL/dy * 1[|x| <= 1]
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensor()
        return grad * _inside(x, 1.0, inclusive=True)


class ScaledSignSTE(PyLayer):
    """Scaled sign of an already centred weight, straight-through on the clipped input.

    forward:  y = alpha * sign(wc)             (alpha broadcast, treated as a constant)
    backward: dL/dwc = dL/dy * 1[|wc| <= 1]    (no alpha factor, no gradient to alpha)

    This is the gradient of ``clip(wc, -1, 1)`` with the clip's boundary included, as in the
    BiBERT reference (``alpha*sign(wc)`` detached, plus ``clip(wc) - clip(wc).detach()``).
    """

    @staticmethod
    def forward(ctx, wc, alpha):
        ctx.save_for_backward(wc)
        if fused.usable(wc):
            return fused.ops().bibert_sign_ste(wc) * alpha
        return binary_sign(wc) * alpha

    @staticmethod
    def backward(ctx, grad):
        (wc,) = ctx.saved_tensor()
        if fused.usable(wc):
            return fused.ops().bibert_ste_mask(wc, grad), None
        return grad * _inside(wc, 1.0, inclusive=True), None


class BoolSTE(PyLayer):
    """Bool function of the attention scores (Bi-Attention).

    forward:  A = 1[s > 0]                     (s == 0 -> 0, like torch.sign(s) clamped at 0)
    backward: dL/ds = dL/dA * 1[|s| < 1]

    The strict ``< 1`` follows bibert-spec.md section 2; the PyTorch reference code passes the
    gradient at ``|s| == 1`` as well. The two differ only where a score is exactly +-1, which
    happens when d_head is a perfect square (d_head = 64 in BERT-base: s = 8/8).
    """

    @staticmethod
    def forward(ctx, s):
        ctx.save_for_backward(s)
        return (s > 0).astype(s.dtype)

    @staticmethod
    def backward(ctx, grad):
        (s,) = ctx.saved_tensor()
        return grad * _inside(s, 1.0, inclusive=False)


class Quantizer(paddle.nn.Layer):
    """Base class: a named, parameter-free-by-default quantizer ``y = q(x)``."""

    name: str = ""
    #: True when the output takes exactly two values (so it can be bit-packed).
    binary: bool = True

    def extra_repr(self) -> str:
        return self.name


class SteSign(Quantizer):
    """Activation binarizer ``sign(x)``; clipped STE ``1[|x| <= 1]``. See :class:`SignSTE`."""

    name = "ste_sign"

    def forward(self, x):
        if fused.usable(x):  # same values and gradient, one pass each way
            return fused.ops().bibert_sign_ste(x)
        return SignSTE.apply(x)


class ChannelMeanSign(Quantizer):
    """Weight binarizer, one scale per output channel (BiBERT / XNOR-style).

    For a Paddle ``Linear.weight`` W of shape ``[in, out]`` (``axis=0`` reduces over inputs):

        wc    = W - mean_0(W)                 centre each output channel
        alpha = mean_0(|W|)                   on the un-centred W, detached
        y     = alpha * sign(wc)
        dL/dW = d/dW of clip(wc, -1, 1) applied to dL/dy, i.e. the centring's Jacobian
                times 1[|wc| <= 1] * dL/dy   (straight-through on the clipped centred weight)
    """

    name = "channel_mean_sign"
    axis = 0

    def forward(self, w):
        if fused.usable(w) and (self.axis == -1 or w.ndim == 2):
            # one kernel each way instead of ~6 ops forward and ~6 backward
            return fused.ops().bibert_channel_sign(w, self.axis == -1)
        wc = w - w.mean(axis=self.axis, keepdim=True)
        alpha = w.detach().abs().mean(axis=self.axis, keepdim=True)
        return ScaledSignSTE.apply(wc, alpha)

    def scales(self, w):
        """The per-channel scales alpha (what the packed export stores)."""
        return w.abs().mean(axis=self.axis)


class RowMeanSign(ChannelMeanSign):
    """Embedding binarizer: same rule per row of an ``[vocab, hidden]`` table (``axis=1``).

    Rows are independent, so binarizing only the looked-up rows equals binarizing the table
    and then looking up; :class:`~paddle_bibert.quant.layers.BiEmbedding` relies on that.
    """

    name = "row_mean_sign"
    axis = -1


class BoolAttention(Quantizer):
    """Bool function ``1[s > 0]`` for attention scores; STE ``1[|s| < 1]``. See :class:`BoolSTE`."""

    name = "bool"

    def forward(self, s):
        if fused.usable(s):  # same values and gradient, one pass each way
            return fused.ops().bibert_bool_ste(s)
        return BoolSTE.apply(s)


QUANTIZERS: Dict[str, Callable[[], Quantizer]] = {}


def register_quantizer(cls):
    """Class decorator/function: make ``cls`` selectable by ``cls.name`` in configs."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    QUANTIZERS[cls.name] = cls
    return cls


for _cls in (SteSign, ChannelMeanSign, RowMeanSign, BoolAttention):
    register_quantizer(_cls)


def get_quantizer(spec: Union[str, Quantizer, None]) -> Optional[paddle.nn.Layer]:
    """Turn a config entry into a quantizer layer.

    ``None`` / ``"none"`` / ``"identity"`` -> None (full precision); a registered name -> a new
    instance; a ``paddle.nn.Layer`` -> itself (any callable layer can act as a quantizer).
    """
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "identity", "fp")):
        return None
    if isinstance(spec, paddle.nn.Layer):
        return spec
    if isinstance(spec, str):
        try:
            return QUANTIZERS[spec]()
        except KeyError:
            raise ValueError(
                f"unknown quantizer {spec!r}; known: {sorted(QUANTIZERS)} (or 'none'). "
                "Register a new one with paddle_bibert.quant.register_quantizer."
            ) from None
    raise TypeError(f"a quantizer is a name, a paddle.nn.Layer or None, not {type(spec).__name__}")
