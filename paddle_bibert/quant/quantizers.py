"""Binarization quantizers: forward values and straight-through pseudo-gradients.

Each quantizer is a small ``paddle.nn.Layer`` (so that later schemes may carry learned
parameters) wrapping a ``PyLayer`` that states its forward and its backward exactly.
Quantizers are registered by name, so a config can say ``act_quantizer: ste_sign``.

Sign convention, shared with the bit-packed export and runtime:
``sign(x) = -1 if signbit(x) else +1``. So ``sign(+0.0) = +1`` (every binarized tensor is
two-valued and packs to one bit: the bit *is* the float's sign bit), and ``sign(-0.0) = -1``,
which keeps ``sign(gelu(h)) == sign(h)`` where float32 GELU underflows to ``-0.0``
(h <= -6 or so); see docs/algorithms.md, section 1.
"""

from __future__ import annotations

import inspect
import math
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
    "ElasticSignSTE",
    "ElasticUnsignedSTE",
    "ElasticSign",
    "ElasticUnsigned",
    "TensorMeanSign",
    "LsqSTE",
    "UniformLSQ",
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
        return grad * _inside(s, 1.0, inclusive=False)


class Quantizer(paddle.nn.Layer):
    """Base class: a named, parameter-free-by-default quantizer ``y = q(x)``."""

    name: str = ""
    #: True when the output takes exactly two values (so it can be bit-packed).
    binary: bool = True
    #: The training loop does not decay learned quantizer parameters (scales, shifts, steps; BiT).
    no_weight_decay: bool = True

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


def _round_half_down(q):
    # torch.round (the BiT reference) rounds halves to even, so 0.5 -> 0 and 1.5 -> 2 (clipped
    # to 1 here); on [0, 1] that is 1[q > 0.5]. Written out rather than left to paddle.round,
    # whose rule for halves Paddle does not document (3.3 rounds them to even; see _paddle_round_rule).
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
        return paddle.clip(_round_half_down(q), 0.0, 1.0) * alpha

    @staticmethod
    def backward(ctx, grad):
        (q,) = ctx.saved_tensor()
        inside = ((q >= 0) & (q <= 1)).astype(q.dtype)
        gx = grad * inside
        ga = (((q > 1).astype(q.dtype) + inside * (_round_half_down(q) - q)) * grad).sum()
        ga = ga * (1.0 / math.sqrt(math.prod(q.shape)))
        return gx, ga.reshape([1])


# the elastic STEs with a fused kernel (bibert_elastic*), and the kernel's zero_one flag for each
_FUSED_ELASTIC = {ElasticSignSTE: False, ElasticUnsignedSTE: True}


class _InitOnFirstBatch(Quantizer):
    """A quantizer whose scale is set from its first training batch (see ``_init_on_first_batch``).

    The persistable ``initialized`` buffer says whether that happened; it is what checkpoints
    carry. Reading it costs a host read per forward (a device sync on GPUs), so once it is
    known to be set, ``_init_done`` answers instead and the buffer is not read again.
    """

    #: True once ``initialized`` is known to be 1 (class default; set per instance)
    _init_done = False

    def _state_dict_impl(self, *args, **kwargs):
        # set_state_dict (on this layer or any parent) and state_dict go through here, and both
        # hand out the buffer itself, which the caller may overwrite (a checkpoint saying "not
        # initialised"): read the buffer again on the next training forward.
        self._init_done = False
        return super()._state_dict_impl(*args, **kwargs)


def _needs_init(layer) -> bool:
    """True on a training forward of a layer whose ``initialized`` buffer is still 0; the buffer
    is read only until it has been seen set (``_InitOnFirstBatch._init_done``)."""
    if not layer.training or getattr(layer, "_init_done", False):
        return False
    if float(layer.initialized) != 0:
        layer._init_done = True
        return False
    return True


def _set_from_first_batch(layer, x, param, factor):
    """``param = factor * mean|x|`` (averaged over data-parallel ranks), and mark ``layer`` initialised."""
    from ..distributed import all_reduce_sum, world_size

    with paddle.no_grad():
        stat = all_reduce_sum(x.abs().mean().reshape([1])) / world_size()
        param.set_value((stat * factor).astype(param.dtype))
        layer.initialized.set_value(paddle.ones([1], dtype="float32"))
    layer._init_done = True


def _init_on_first_batch(layer, x, param, factor):
    """Set ``param = factor * mean|x|`` on ``layer``'s first training batch (averaged over
    data-parallel ranks), once: the persistable ``initialized`` buffer records it."""
    if _needs_init(layer):
        _set_from_first_batch(layer, x, param, factor)


class ElasticSign(_InitOnFirstBatch):
    """BiT elastic binary activation, signed: ``a * sign(x + b)``.

    ``b`` is a learned shift per input channel (last axis; initialised to 0) and ``a`` a learned
    scalar scale, set on the first training batch to ``init_factor * mean|x + b|`` (2 for the
    signed form, 4 for the unsigned one; averaged over ranks in data-parallel runs). ``a`` and
    ``b`` train with their own learning rate (``own_learning_rate``) and no weight decay. The
    output takes two values, so it is 1-bit (the packed runtime must add ``b`` and scale by ``a``).
    """

    name = "elastic_sign"
    init_factor = 2.0
    own_learning_rate = 1e-4
    _ste = ElasticSignSTE

    def __init__(self, channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.alpha = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(1.0))
        self.shift = (self.create_parameter([channels], default_initializer=paddle.nn.initializer.Constant(0.0))
                      if channels else None)
        self.register_buffer("initialized", paddle.zeros([1], dtype="float32"), persistable=True)

    def forward(self, x):
        if self.shift is not None and x.shape[-1] != self.channels:
            raise ValueError(f"{self.name}: built for {self.channels} channels, got input of shape {x.shape}")
        zero_one = _FUSED_ELASTIC.get(self._ste)  # None: an STE without a fused kernel
        if (zero_one is not None and fused.usable(x) and fused.usable(self.alpha)
                and (self.shift is None or fused.usable(self.shift))):
            # shift, STE and both gradients (x, alpha, shift) in one kernel each way, same values
            if _needs_init(self):
                with paddle.no_grad():
                    shifted = self._shifted(x)
                _set_from_first_batch(self, shifted, self.alpha, self.init_factor)
            if self.shift is None:
                return fused.ops().bibert_elastic(x, self.alpha, zero_one)
            return fused.ops().bibert_elastic_shift(x, self.shift, self.alpha, zero_one)
        x = self._shifted(x)
        _init_on_first_batch(self, x, self.alpha, self.init_factor)
        return self._ste.apply(x, self.alpha)

    def _shifted(self, x):
        if self.shift is None:
            return x
        # x + b, except that a sum of exactly 0 keeps x: with b = 0 (its initial value)
        # sign(gelu(h) + b) must stay sign(h) where float32 GELU gives -0.0 (-0.0 + 0.0 = +0.0).
        # (Paddle's == on floats is |a - b| < 1e-15, so sums that small keep x as well; the
        # fused kernel compares the same way.)
        shifted = x + self.shift
        return paddle.where(shifted == 0, x, shifted)

    def extra_repr(self) -> str:
        return f"{self.name}, channels={self.channels}"


class ElasticUnsigned(ElasticSign):
    """BiT elastic binary activation, unsigned {0, a}: ``a * clip(round((x + b) / a), 0, 1)``,
    for non-negative inputs (softmax probabilities, ReLU outputs). See :class:`ElasticSign`."""

    name = "elastic_unsigned"
    init_factor = 4.0
    _ste = ElasticUnsignedSTE


class TensorMeanSign(ChannelMeanSign):
    """BiT's weight binarizer: one scale for the whole matrix, ``mean|W| * sign(W - mean(W))``;
    straight-through on the clipped centred weight, as :class:`ChannelMeanSign`."""

    name = "tensor_mean_sign"
    axis = None

    def forward(self, w):
        wc = w - w.mean()
        alpha = w.detach().abs().mean()
        return ScaledSignSTE.apply(wc, alpha)

    def scales(self, w):
        return w.abs().mean().reshape([1]).expand([w.shape[-1]])  # the same scale for every column


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


_round_rule: Optional[str] = None


def _paddle_round_rule() -> str:
    """How ``paddle.round`` rounds halves on the CPU: ``"even"`` (Paddle 3.3: 0.5 -> 0, 2.5 -> 2),
    ``"away"`` (from zero: 0.5 -> 1) or ``"other"``. The fused LSQ kernel must round as the plain
    path does, so it asks once."""
    global _round_rule
    if _round_rule is None:
        with paddle.no_grad():
            r = paddle.round(paddle.to_tensor([0.5, 1.5, 2.5, -0.5, -2.5], dtype="float32",
                                              place=paddle.CPUPlace())).numpy().tolist()
        _round_rule = {(0.0, 2.0, 2.0, -0.0, -2.0): "even", (1.0, 2.0, 3.0, -1.0, -3.0): "away"}.get(tuple(r), "other")
    return _round_rule


class UniformLSQ(_InitOnFirstBatch):
    """k-bit uniform activation quantizer with a learned step (the clip is ``step * qp``), for the
    BinaryBERT 1-1-2 / 1-1-4 baselines and BiT's W1A2/W1A4 stage. Signed levels are
    ``{-2^(k-1), ..., 2^(k-1)-1} * step``, unsigned ``{0, ..., 2^k-1} * step``. The step is set on the
    first training batch to ``2 * mean|x| / sqrt(qp)`` (LSQ's rule), averaged over ranks."""

    name = "lsq"
    binary = False
    bits = 2
    signed = True
    own_learning_rate = 1e-4

    def __init__(self, channels: Optional[int] = None):
        super().__init__()
        self.qn = 2 ** (self.bits - 1) if self.signed else 0
        self.qp = 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1
        self.step = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(1.0))
        self.register_buffer("initialized", paddle.zeros([1], dtype="float32"), persistable=True)

    def forward(self, x):
        _init_on_first_batch(self, x, self.step, 2.0 / math.sqrt(self.qp))
        if (fused.usable(x) and fused.usable(self.step) and isinstance(self.qn, int) and isinstance(self.qp, int)
                and _paddle_round_rule() != "other"):
            # LsqSTE's values and gradients (x and step) in one kernel each way
            return fused.ops().bibert_lsq(x, self.step, self.qn, self.qp, _paddle_round_rule() == "even")
        return LsqSTE.apply(x, self.step, self.qn, self.qp)

    def extra_repr(self) -> str:
        return f"{self.name}, levels [-{self.qn}, {self.qp}]"


def _lsq(bits, signed):
    return type(f"UniformLSQ{bits}{'' if signed else 'U'}", (UniformLSQ,),
                {"name": f"lsq{bits}" + ("" if signed else "_unsigned"), "bits": bits, "signed": signed,
                 "__doc__": f"{bits}-bit {'signed' if signed else 'unsigned'} :class:`UniformLSQ`."})


QUANTIZERS: Dict[str, Callable[[], Quantizer]] = {}


def register_quantizer(cls):
    """Class decorator/function: make ``cls`` selectable by ``cls.name`` in configs."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    QUANTIZERS[cls.name] = cls
    return cls


for _cls in (SteSign, ChannelMeanSign, RowMeanSign, BoolAttention, ElasticSign, ElasticUnsigned, TensorMeanSign,
             _lsq(2, True), _lsq(4, True), _lsq(2, False), _lsq(4, False)):
    register_quantizer(_cls)


def get_quantizer(spec: Union[str, Quantizer, None], channels: Optional[int] = None) -> Optional[paddle.nn.Layer]:
    """Turn a config entry into a quantizer layer.

    ``None`` / ``"none"`` / ``"identity"`` -> None (full precision); a registered name -> a new
    instance (given ``channels``, the size of the input's last axis, if its class takes it); a
    ``paddle.nn.Layer`` -> itself (any callable layer can act as a quantizer).
    """
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "identity", "fp")):
        return None
    if isinstance(spec, paddle.nn.Layer):
        return spec
    if isinstance(spec, str):
        try:
            cls = QUANTIZERS[spec]
        except KeyError:
            raise ValueError(
                f"unknown quantizer {spec!r}; known: {sorted(QUANTIZERS)} (or 'none'). "
                "Register a new one with paddle_bibert.quant.register_quantizer."
            ) from None
        if channels is not None and "channels" in inspect.signature(cls).parameters:
            return cls(channels=channels)
        return cls()
    raise TypeError(f"a quantizer is a name, a paddle.nn.Layer or None, not {type(spec).__name__}")
