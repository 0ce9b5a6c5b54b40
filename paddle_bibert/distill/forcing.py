"""Teacher forcing: each student layer fed the teacher's hidden state, fading to its own input.

A binarized student loses the teacher layer by layer: before training its first layer keeps
most of the teacher's state and its last keeps little (``benchmarks/init_agreement.py``), and
every layer's error feeds the next, so the deep layers learn last. With forcing at weight ``w``
student layer ``j`` gets ``w * t + (1 - w) * x`` as its input, where ``x`` is the student's own
hidden state and ``t`` the teacher's hidden state it is distilled against (``j * k``, the
Distiller's layer mapping): at ``w = 1`` every layer learns its own step of the teacher's
computation from the teacher's input, all at once, with no error from the layers below. ``w``
falls linearly from 1 to 0 over the first ``fraction`` of training, so by then each layer works
on its predecessors' outputs alone. Only the training loss's student forward is forced:
evaluation, export and the kept model see the plain student.

``w`` is a function of the step alone, so a resumed run continues the same schedule.
"""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["TeacherForcing"]


class TeacherForcing:
    """``at(step, total)`` sets the weight for the step about to run; ``applied(...)`` is the
    context in which the student's layers take the blended inputs."""

    def __init__(self, fraction: float):
        if not 0 <= fraction <= 1:
            raise ValueError(f"--teacher_forcing must be in [0, 1] (the fraction of training over which "
                             f"the teacher's inputs fade out; 0 = off), got {fraction}")
        self.fraction = float(fraction)
        self.weight = 1.0 if fraction > 0 else 0.0

    def at(self, step: int, total: int) -> float:
        span = self.fraction * total
        self.weight = 0.0 if span <= 0 else max(0.0, 1.0 - step / span)
        return self.weight

    @contextmanager
    def applied(self, layers, teacher_hidden, k: int = 1):
        """Within it, ``layers[j]`` takes ``w * teacher_hidden[j * k] + (1 - w) * its input``."""
        w = self.weight
        handles = []
        if w > 0:
            for j, layer in enumerate(layers):
                handles.append(layer.register_forward_pre_hook(self._blend(teacher_hidden[j * k], w)))
        try:
            yield w
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _blend(t, w):
        def hook(layer, inputs):
            x = inputs[0]
            mixed = t if w >= 1 else w * t + (1 - w) * x
            return (mixed, *inputs[1:])
        return hook
