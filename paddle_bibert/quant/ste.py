"""The straight-through estimators (STEs) of the quantizers: each a ``PyLayer`` that states its
forward and its pseudo-gradient exactly, in plain Paddle ops. The quantizer layers
(``quantizers.py``) call these, or a fused kernel computing the same (``fused.py``).

Sign convention, shared with the bit-packed export and runtime:
``sign(x) = -1 if signbit(x) else +1``; see docs/algorithms.md, section 1.
"""

from __future__ import annotations

import math

import paddle
from paddle.autograd import PyLayer

from . import fused

__all__ = ["binary_sign", "SignSTE", "ScaledSignSTE", "BoolSTE", "ElasticSignSTE", "ElasticUnsignedSTE",
           "LsqSTE", "round_half_down"]


def binary_sign(x: paddle.Tensor) -> paddle.Tensor:
    """``-1`` where ``signbit(x)`` is set, else ``+1``, in ``x.dtype``.

    ``copysign(1, x)`` is exactly that. (``paddle.signbit`` is ~30x slower on CPU, and a
    broadcast ``[1]`` first argument makes Paddle warn on every call.)
    """
    return paddle.copysign(paddle.ones_like(x), x)


def inside(x: paddle.Tensor, bound: float, inclusive: bool) -> paddle.Tensor:
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
        return grad * inside(x, 1.0, inclusive=True)


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
        return grad * inside(wc, 1.0, inclusive=True), None


class BoolSTE(PyLayer):
    """Bool function of the attention scores (Bi-Attention).

    forward:  A = 1[s > 0]                     (s == 0 -> 0, like torch.sign(s) clamped at 0)
    backward: dL/ds = dL/dA * 1[|s| < 1]

    The strict ``< 1`` is the authors' rule too (their backward zeroes the gradient where
    ``s >= 1`` or ``s <= -1``; docs/algorithms.md, section 2). It matters where a score is
    exactly +-1, which happens when d_head is a perfect square (d_head = 64 in BERT-base: s = 8/8).
    """

    @staticmethod
    def forward(ctx, s):
        ctx.save_for_backward(s)
        return (s > 0).astype(s.dtype)

    @staticmethod
    def backward(ctx, grad):
        (s,) = ctx.saved_tensor()
        return grad * inside(s, 1.0, inclusive=False)


class ElasticSignSTE(PyLayer):
    """BiT's signed elastic binarization of an (already shifted) input ``x`` with scale ``a``.

    forward:  y = a * sign(x)
    backward: dL/dx = dL/dy * 1[|x / a| <= 1]
              dL/da = sum(sign(x) * dL/dy) / sqrt(numel(x))
    """

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x, alpha)
        return binary_sign(x) * alpha

    @staticmethod
    def backward(ctx, grad):
        x, alpha = ctx.saved_tensor()
        sx = binary_sign(x)
        gx = grad * (x.abs() <= alpha.abs()).astype(x.dtype)
        ga = (sx * grad).sum() * (1.0 / math.sqrt(math.prod(x.shape)))
        return gx, ga.reshape(alpha.shape)


def round_half_down(q):
    # torch.round (the BiT reference) rounds halves to even, so 0.5 -> 0 and 1.5 -> 2 (clipped
    # to 1 here); on [0, 1] that is 1[q > 0.5]. Written out rather than left to paddle.round,
    # whose rule for halves Paddle does not document (3.3 rounds them to even; see fused.paddle_round_rule).
    return (q > 0.5).astype(q.dtype) + (q > 1.5).astype(q.dtype) * (paddle.round(q) - 1)


class ElasticUnsignedSTE(PyLayer):
    """BiT's unsigned elastic binarization {0, a} of an (already shifted) input ``x``.

    forward:  y = a * clip(round(x / a), 0, 1)
    backward: dL/dx = dL/dy * 1[0 <= x/a <= 1]
              dL/da = sum((1[x/a > 1] + 1[0 <= x/a <= 1] * (round(x/a) - x/a)) * dL/dy) / sqrt(numel)
    """

    @staticmethod
    def forward(ctx, x, alpha):
        q = x / alpha
        ctx.save_for_backward(q)
        return paddle.clip(round_half_down(q), 0.0, 1.0) * alpha

    @staticmethod
    def backward(ctx, grad):
        (q,) = ctx.saved_tensor()
        inside = ((q >= 0) & (q <= 1)).astype(q.dtype)
        gx = grad * inside
        ga = (((q > 1).astype(q.dtype) + inside * (round_half_down(q) - q)) * grad).sum()
        ga = ga * (1.0 / math.sqrt(math.prod(q.shape)))
        return gx, ga.reshape([1])


class LsqSTE(PyLayer):
    """Uniform k-bit quantizer with learned step ``s`` (LSQ, Esser et al. 2020).

    forward:  y = s * clip(round(x / s), -qn, qp)        (round: paddle.round; halves to even in Paddle 3.3)
    backward: dL/dx = dL/dy * 1[-qn <= x/s <= qp]
              dL/ds = sum(dL/dy * (round(x/s) - x/s if inside, -qn below, qp above)) / sqrt(numel * qp)
    """

    @staticmethod
    def forward(ctx, x, step, qn, qp):
        q = x / step
        ctx.save_for_backward(q)
        ctx.qn, ctx.qp = qn, qp
        return paddle.clip(paddle.round(q), -qn, qp) * step

    @staticmethod
    def backward(ctx, grad):
        (q,) = ctx.saved_tensor()
        qn, qp = ctx.qn, ctx.qp
        below, above = (q < -qn).astype(q.dtype), (q > qp).astype(q.dtype)
        inside = 1.0 - below - above
        gs = (grad * (inside * (paddle.round(q) - q) - qn * below + qp * above)).sum()
        gs = gs * (1.0 / math.sqrt(math.prod(q.shape) * qp))
        return grad * inside, gs.reshape([1])
