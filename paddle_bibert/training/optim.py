"""BertAdam, the optimizer BiBERT's authors train with (``--optimizer bertadam``).

Adam as the original BERT code wrote it, which differs from AdamW in three ways that matter for
a binarized student's first steps:

- each parameter's gradient is clipped to norm ``max_grad_norm`` (1.0) on its own, not the
  whole model's gradient at once;
- no bias correction: the first updates are ``(1 - beta1) / sqrt(1 - beta2)`` ~ 3.2x smaller
  than Adam's (which are ~lr per entry whatever the gradient's size);
- ``eps`` 1e-6, and weight decay added to the update (``lr * (m / (sqrt(v) + eps) + wd * p)``).

Per step, for each parameter ``p`` with gradient ``g``::

    g = g * min(1, max_grad_norm / (||g|| + 1e-6))     (torch's clip_grad_norm_ per tensor)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr * (m / (sqrt(v) + eps) + wd * p)          wd = 0 for biases and LayerNorms

``lr`` comes from the scheduler (the same linear warm-up and decay as AdamW's runs) times the
parameter's own ``optimize_attr["learning_rate"]`` multiplier (BiT's quantizer scales).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable

import paddle

__all__ = ["BertAdam"]


class BertAdam:
    """The subset of ``paddle.optimizer.Optimizer`` the training loop uses: ``step``,
    ``clear_grad``, ``get_lr``, ``state_dict`` / ``set_state_dict``. State keys start with each
    parameter's ``name`` (as Paddle's optimizers' do), so checkpoints store them portably."""

    def __init__(self, learning_rate, parameters: Iterable, weight_decay: float = 0.01,
                 apply_decay_param_fun: Callable[[str], bool] = None, beta1: float = 0.9,
                 beta2: float = 0.999, epsilon: float = 1e-6, max_grad_norm: float = 1.0):
        self._learning_rate = learning_rate
        self._parameter_list = [p for p in parameters if not p.stop_gradient]
        self.weight_decay, self.decays = weight_decay, apply_decay_param_fun or (lambda name: True)
        self.beta1, self.beta2, self.epsilon, self.max_grad_norm = beta1, beta2, epsilon, max_grad_norm
        self._moments: Dict[str, list] = {}

    def get_lr(self) -> float:
        lr = self._learning_rate
        return lr() if callable(lr) else float(lr)

    @paddle.no_grad()
    def step(self):
        lr = self.get_lr()
        for p in self._parameter_list:
            if p.grad is None:
                continue
            g = p.grad
            coef = self.max_grad_norm / (float(paddle.linalg.norm(g)) + 1e-6)  # as torch's clip_grad_norm_
            if coef < 1:
                g = g * coef
            m, v = self._moments.setdefault(p.name, [paddle.zeros_like(p), paddle.zeros_like(p)])
            m.scale_(self.beta1).add_(g * (1 - self.beta1))
            v.scale_(self.beta2).add_(g * g * (1 - self.beta2))
            update = m / (v.sqrt() + self.epsilon)
            if self.weight_decay and self.decays(p.name):
                update = update + self.weight_decay * p
            p_lr = lr * float(p.optimize_attr.get("learning_rate", 1.0))
            p.subtract_(p_lr * update)

    def clear_grad(self, set_to_zero: bool = True):
        for p in self._parameter_list:
            p.clear_gradient(set_to_zero)

    def state_dict(self) -> Dict[str, paddle.Tensor]:
        out = {}
        for name, (m, v) in self._moments.items():
            out[f"{name}_bertadam_m"], out[f"{name}_bertadam_v"] = m, v
        return out

    def set_state_dict(self, state: Dict[str, paddle.Tensor]):
        by_name = {p.name: p for p in self._parameter_list}
        self._moments = {}
        for key, value in state.items():
            name, _, which = key.rpartition("_bertadam_")
            if name not in by_name or which not in ("m", "v"):
                raise ValueError(f"optimizer state {key!r} is not BertAdam's (was the run trained with "
                                 "another --optimizer?)")
            slot = self._moments.setdefault(name, [None, None])
            slot[which == "v"] = paddle.to_tensor(value, dtype=by_name[name].dtype)
        if any(s is None for slots in self._moments.values() for s in slots):
            raise ValueError("BertAdam state lacks a first or second moment")
