"""Distillation losses (docs/algorithms.md, section 3).

    P(X)      = X X^T / sqrt(d_head)                      X: [B, H, L, d_head]
    dmd(S, T) = || S/||S||_F - T/||T||_F ||_F            norms over the whole tensor
    soft_ce   = mean(-softmax(t/T) * log_softmax(s/T))   mean over every element
    pred      = soft_ce + 0.5 * CE(s, gold)              classification
              = MSE(s, t)                                 regression
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F

# The authors zero relation entries at or below the masking threshold before the norm (it never
# fires: no mask is added to a relation; docs/algorithms.md, section 3).
from ..quant.layers import MASKED_BELOW

__all__ = ["relation", "dmd", "relation_dmd", "soft_cross_entropy", "pred_loss", "MASKED_BELOW"]


def relation(x: paddle.Tensor) -> paddle.Tensor:
    """``X X^T / sqrt(d_head)`` for ``x`` of shape ``[B, H, L, d_head]`` -> ``[B, H, L, L]``."""
    return paddle.matmul(x, x, transpose_y=True) * (1.0 / math.sqrt(x.shape[-1]))


def _frobenius(x: paddle.Tensor) -> paddle.Tensor:
    # sqrt(<x, x>) as a matrix product rather than paddle.linalg.norm or sum(x*x): the same
    # value, but p_norm's CPU backward cost ~33 ms a call (the largest item of a distillation
    # step) and elementwise ops are single-threaded where matmul is not.
    flat = x.reshape([1, -1])
    return paddle.sqrt(paddle.matmul(flat, flat, transpose_y=True).reshape([]))


def _masked(x: paddle.Tensor) -> paddle.Tensor:
    # The masking pass costs more than the rest; skip it when nothing is at or below the
    # threshold (the result is identical).
    if float(x.min()) <= MASKED_BELOW:
        x = paddle.where(x <= MASKED_BELOW, paddle.zeros_like(x), x)
    return x


def _normalized(x: paddle.Tensor) -> paddle.Tensor:
    x = _masked(x)
    return x * (1.0 / _frobenius(x))


def dmd(student: paddle.Tensor, teacher: paddle.Tensor, global_batch: bool = False) -> paddle.Tensor:
    """Direction-matching distance: norm of the difference of the two unit-norm tensors.

    Used for the Q/K/V relations and, unchanged, for hidden states. With ``global_batch`` (data
    parallel, every rank must call it) the norms are taken over the batches of all ranks, as if one
    process held the global batch: see :func:`_dmd_global_batch`.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"distillation shapes differ: student {student.shape} vs teacher {teacher.shape}"
                         " (hidden sizes, heads or sequence lengths must match)")
    if global_batch:
        return _dmd_global_batch(student, teacher)
    return _frobenius(_normalized(student) - _normalized(teacher))


def _dot(a, b):
    return paddle.matmul(a.reshape([1, -1]), b.reshape([1, -1]), transpose_y=True).reshape([])


def _dmd_global_batch(student, teacher):
    # ||a/|a| - b/|b|||^2 = 2 - 2 <a,b> / (|a| |b|), with each inner product summed over ranks.
    # The summed products enter as constants plus this rank's own (differentiable) share, so the
    # value is the global distance and the gradient is its partial derivative with respect to
    # this rank's tensors. DataParallel averages gradients over ranks, hence the factor
    # world_size on the gradient (not on the value): the average of the ranks' partials times
    # world_size is their sum, the gradient a single process with the global batch gets.
    from ..distributed import all_reduce_sum, world_size

    a, b = _masked(student), _masked(teacher.detach())
    aa, ab, bb = _dot(a, a), _dot(a, b), _dot(b, b)
    total = all_reduce_sum(paddle.stack([aa, ab, bb]))
    g_aa = total[0] + (aa - aa.detach())
    g_ab = total[1] + (ab - ab.detach())
    cos = g_ab / paddle.sqrt(g_aa * total[2])
    d = paddle.sqrt(paddle.clip(2.0 - 2.0 * cos, min=0.0))
    return d.detach() + world_size() * (d - d.detach())


#: Below this squared distance relation_dmd recomputes through the relations themselves: the
#: inner-product form loses digits as the two directions meet (float32 cos carries ~1e-7).
GRAM_MIN_SQUARED_DISTANCE = 1e-3


def relation_dmd(student: paddle.Tensor, teacher: paddle.Tensor, global_batch: bool = False) -> paddle.Tensor:
    """``dmd(relation(student), relation(teacher))`` for ``[B, H, L, d_head]`` inputs, computed
    without the ``[B, H, L, L]`` relations where that is exact.

    dmd is a function of three inner products (``|a-b|^2 = |a|^2 + |b|^2 - 2<a,b>`` of unit
    tensors), and those of relations reduce to the ``d_head x d_head`` Gram matrices:
    ``<X X^T, Y Y^T> = |X^T Y|_F^2``, with L/d_head times fewer multiply-adds and no L x L
    elementwise passes. The relations are formed as before when (a) some entry could reach the
    masking threshold (bounded by the largest squared row norm / sqrt(d_head)), (b) the distance
    is small enough for float32's cancellation to matter, or (c) under data parallelism.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"distillation shapes differ: student {student.shape} vs teacher {teacher.shape}"
                         " (hidden sizes, heads or sequence lengths must match)")
    dense = lambda: dmd(relation(student), relation(teacher), global_batch)
    if global_batch:
        return dense()
    teacher = teacher.detach()
    scale = 1.0 / math.sqrt(student.shape[-1])
    # |P_ij| = |x_i . x_j| / sqrt(d) <= max_i |x_i|^2 / sqrt(d): nothing can be masked below that
    bound = paddle.maximum((student.detach() * student.detach()).sum(-1).max(), (teacher * teacher).sum(-1).max())
    gram = lambda a, b: paddle.matmul(a, b, transpose_x=True)  # [B, H, d, d]
    ss, st, tt = (_dot(g, g) for g in (gram(student, student), gram(student, teacher), gram(teacher, teacher)))
    sq = 2.0 - 2.0 * st / (paddle.sqrt(ss) * paddle.sqrt(tt))
    bound_v, sq_v = paddle.stack([bound * scale, sq.detach()]).tolist()  # one host read
    if bound_v >= -MASKED_BELOW or not sq_v >= GRAM_MIN_SQUARED_DISTANCE:
        return dense()
    return paddle.sqrt(sq)


def soft_cross_entropy(student_logits, teacher_logits, temperature: float = 1.0):
    """``mean(-softmax(t/T) * log_softmax(s/T))`` over every element (TinyBERT/BiBERT)."""
    t = F.softmax(teacher_logits / temperature, axis=-1)
    return (-t * F.log_softmax(student_logits / temperature, axis=-1)).mean()


def pred_loss(student_logits, teacher_logits, labels=None, is_regression=False,
              temperature: float = 1.0, gold_weight: float = 0.5):
    """Prediction distillation: soft CE (+ ``gold_weight`` * CE with gold labels), or MSE."""
    if is_regression:
        return F.mse_loss(student_logits.reshape([-1]), teacher_logits.reshape([-1]))
    loss = soft_cross_entropy(student_logits, teacher_logits, temperature)
    if labels is not None and gold_weight:
        loss = loss + gold_weight * F.cross_entropy(student_logits, labels.reshape([-1]))
    return loss
