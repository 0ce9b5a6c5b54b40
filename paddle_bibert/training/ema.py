"""An exponential moving average (EMA) of a model's trainable parameters.

A binarized student's dev metric swings from one evaluation to the next (SST-2: +-0.03 between
evaluations 100 steps apart, benchmarks/RESULTS.md), because a small move of a latent weight
near 0 flips its sign. Averaging the latent weights over the last ~1 / (1 - decay) steps and
binarizing the average is a way to score (and keep) a steadier network; training itself is
unchanged: the optimizer keeps updating the raw weights.

    ema = ParamEMA(model, decay=0.99)
    ...optimizer.step(); ema.update()          # shadow = decay * shadow + (1 - decay) * weight
    with ema.swapped():                        # the model holds the averages inside
        evaluate(model)

The shadow starts at the model's weights when it is made (the student's initialisation), so
there is no warm-up bias to correct for a student that starts from its teacher. Buffers (e.g.
the quantizers' ``initialized`` flags) are not averaged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict

import paddle

__all__ = ["ParamEMA"]


class ParamEMA:
    def __init__(self, model, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}; e.g. 0.99 (an average over "
                             "about the last 100 steps)")
        self.decay = float(decay)
        self.params = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
        self.shadow: Dict[str, paddle.Tensor] = {n: p.detach().clone() for n, p in self.params}

    @paddle.no_grad()
    def update(self):
        """shadow = decay * shadow + (1 - decay) * weight, for every trainable parameter, as
        shadow += (1 - decay) * (weight - shadow) in place: one pass per parameter, no temporaries
        (this runs every training step)."""
        take = 1.0 - self.decay
        for n, p in self.params:
            self.shadow[n].lerp_(p.detach(), take)

    @contextmanager
    def swapped(self):
        """Inside, the model's parameters hold the averages; the raw weights come back after,
        bit for bit, even if the body raises."""
        raw = {n: p.detach().clone() for n, p in self.params}
        try:
            for n, p in self.params:
                p.set_value(self.shadow[n])
            yield
        finally:
            for n, p in self.params:
                p.set_value(raw[n])

    def state_dict(self) -> Dict[str, paddle.Tensor]:
        return dict(self.shadow)

    def set_state_dict(self, state: Dict[str, paddle.Tensor]):
        missing = sorted(set(self.shadow) - set(state))
        extra = sorted(set(state) - set(self.shadow))
        if missing or extra:
            raise ValueError(f"EMA state does not match the model's trainable parameters (missing "
                             f"{missing[:3]}, unexpected {extra[:3]}); was it written for another model?")
        for n, s in self.shadow.items():
            v = state[n]
            if list(v.shape) != list(s.shape):
                raise ValueError(f"EMA state of {n} has shape {list(v.shape)}, the model's {list(s.shape)}")
            s.set_value(v)
