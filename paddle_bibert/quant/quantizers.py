"""Binarization quantizers: forward values and straight-through pseudo-gradients.

Each quantizer is a small ``paddle.nn.Layer`` (so that later schemes may carry learned
parameters) applying a straight-through estimator of ``ste.py``, or the fused kernel that
computes the same values and gradients in one pass (``fused.py``) where the tensor allows.
Quantizers are registered by name, so a config can say ``act_quantizer: ste_sign``.

Sign convention, shared with the bit-packed export and runtime:
``sign(x) = -1 if signbit(x) else +1``. So ``sign(+0.0) = +1`` (every binarized tensor is
two-valued and packs to one bit: the bit *is* the float's sign bit), and ``sign(-0.0) = -1``,
which keeps ``sign(gelu(h)) == sign(h)`` where float32 GELU underflows to ``-0.0``
(h <= -6 or so); see docs/algorithms.md, section 1.

(About 360 lines: every registered quantizer is here, so the registry reads in one place; their
gradient math is in ``ste.py`` and the fused kernels' dispatch in ``fused.py``.)
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Dict, Optional, Union

import paddle

from . import fused
from .ste import BoolSTE, ElasticSignSTE, ElasticUnsignedSTE, LsqSTE, ScaledSignSTE, SignSTE, binary_sign

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
    "ElasticSignMeanInit",
    "ElasticUnsigned",
    "TensorMeanSign",
    "LsqSTE",
    "UniformLSQ",
    "Lsq2",
    "Lsq4",
    "Lsq2Unsigned",
    "Lsq4Unsigned",
    "set_first_batch_mean_abs",
    "register_quantizer",
    "get_quantizer",
    "QUANTIZERS",
]


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
        # initialised"): read the buffer again on the next training forward. A private method,
        # because Paddle has no public hook on loading (register_state_dict_hook runs on saving
        # only), and reading the buffer on every forward would sync a GPU once per quantizer.
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


def _local_mean_abs(x):
    return x.abs().mean().reshape([1])


#: ``x -> mean|x|`` over the batch a first-batch initialisation sees ([1] tensor). The training
#: code sets it for data parallelism (the mean over every rank's batch, so all ranks agree);
#: quantizers know nothing of processes.
first_batch_mean_abs: Callable = _local_mean_abs


def set_first_batch_mean_abs(fn: Optional[Callable] = None):
    """Install the reduction learned quantizers initialise from (None: this process's batch)."""
    global first_batch_mean_abs
    first_batch_mean_abs = fn or _local_mean_abs


def _set_from_first_batch(layer, x, param, factor):
    """``param = factor * mean|x|`` (``first_batch_mean_abs``), and mark ``layer`` initialised."""
    with paddle.no_grad():
        param.set_value((first_batch_mean_abs(x) * factor).astype(param.dtype))
        layer.initialized.set_value(paddle.ones([1], dtype="float32"))
    layer._init_done = True


def _init_on_first_batch(layer, x, param, factor):
    """Set ``param = factor * mean|x|`` on ``layer``'s first training batch, once: the persistable
    ``initialized`` buffer records it."""
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


class ElasticSignMeanInit(ElasticSign):
    """:class:`ElasticSign` whose scale starts at ``mean|x + b|``, the scale that minimises
    ``||x - a sign(x + b)||^2`` (XNOR-Net's), instead of BiT's ``2 mean|x + b|``. A binarized
    linear's output scales with its input's ``a``, and after it comes the residual sum: with BiT's
    start every binarized branch enters it at about twice its full-precision size, so the
    student's states drift from the teacher's layer after layer before training begins. The
    function and the packed form are :class:`ElasticSign`'s; only the start differs (and with a
    smaller ``a``, the clipped STE passes the gradient on a narrower band of ``x``)."""

    name = "elastic_sign_mean"
    init_factor = 1.0


class TensorMeanSign(ChannelMeanSign):
    """BiT's weight binarizer: one scale for the whole matrix, ``mean|W| * sign(W - mean(W))``;
    straight-through on the clipped centred weight, as :class:`ChannelMeanSign`."""

    name = "tensor_mean_sign"
    axis = None

    def forward(self, w):
        if fused.usable(w):
            # the whole matrix as one channel: one kernel each way where the plain path runs
            # ~5 single-threaded ops forward and ~5 backward on every weight of every step
            return fused.ops().bibert_tensor_sign(w)
        wc = w - w.mean()
        alpha = w.detach().abs().mean()
        return ScaledSignSTE.apply(wc, alpha)

    def scales(self, w):
        return w.abs().mean().reshape([1]).expand([w.shape[-1]])  # the same scale for every column


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
                and fused.paddle_round_rule() != "other"):
            # LsqSTE's values and gradients (x and step) in one kernel each way
            return fused.ops().bibert_lsq(x, self.step, self.qn, self.qp, fused.paddle_round_rule() == "even")
        return LsqSTE.apply(x, self.step, self.qn, self.qp)

    def extra_repr(self) -> str:
        return f"{self.name}, levels [-{self.qn}, {self.qp}]"


class Lsq2(UniformLSQ):
    """2-bit signed :class:`UniformLSQ`."""
    name, bits, signed = "lsq2", 2, True


class Lsq4(UniformLSQ):
    """4-bit signed :class:`UniformLSQ`."""
    name, bits, signed = "lsq4", 4, True


class Lsq2Unsigned(UniformLSQ):
    """2-bit unsigned :class:`UniformLSQ` (attention maps, the ReLU FFN's output-dense input)."""
    name, bits, signed = "lsq2_unsigned", 2, False


class Lsq4Unsigned(UniformLSQ):
    """4-bit unsigned :class:`UniformLSQ`."""
    name, bits, signed = "lsq4_unsigned", 4, False


QUANTIZERS: Dict[str, Callable[[], Quantizer]] = {}


def register_quantizer(cls):
    """Class decorator/function: make ``cls`` selectable by ``cls.name`` in configs."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    QUANTIZERS[cls.name] = cls
    return cls


for _cls in (SteSign, ChannelMeanSign, RowMeanSign, BoolAttention, ElasticSign, ElasticSignMeanInit, ElasticUnsigned,
             TensorMeanSign,
             Lsq2, Lsq4, Lsq2Unsigned, Lsq4Unsigned):
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
