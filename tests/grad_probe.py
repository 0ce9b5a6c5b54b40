"""Run an example command (``python grad_probe.py task_distill ARGS...``) with the gradients of
its first optimizer step saved to ``$GRAD_PROBE_DIR/grads.<rank>.npz``, in the order of the
optimizer's parameter list. Under ``paddle.DataParallel`` they are the ranks' averaged gradients,
which is what the optimizer applies; tests compare them with a one-process run's."""

import os
import sys

import paddle_bibert  # noqa: F401  (CPU defaults before Paddle loads, as in the example scripts)
import numpy as np
import paddle

from paddle_bibert import distributed
from paddle_bibert.commands import run_glue, task_distill

_step = paddle.optimizer.AdamW.step


def _probed_step(self):
    if not getattr(_probed_step, "done", False):
        _probed_step.done = True
        grads = {f"{i:04d}": (np.zeros(p.shape, "float32") if p.grad is None else p.grad.numpy())
                 for i, p in enumerate(self._parameter_list)}
        np.savez(os.path.join(os.environ["GRAD_PROBE_DIR"], f"grads.{distributed.rank()}.npz"), **grads)
    return _step(self)


if __name__ == "__main__":
    paddle.optimizer.AdamW.step = _probed_step
    command = {"task_distill": task_distill, "run_glue": run_glue}[sys.argv.pop(1).removesuffix("_bi")]
    distributed.main(command)
