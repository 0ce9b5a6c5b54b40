"""The teacher's outputs for the next batch, computed in a background thread.

A distillation step runs the frozen teacher's forward (about a seventh of a MiniLM step on the
CPU) before the student's forward and backward, which leave the second core mostly idle: most of
Paddle's small CPU kernels run on one thread. :class:`TeacherPrefetch` wraps the training loader
and computes each batch's teacher outputs one batch ahead in a thread (Paddle's kernels release
the GIL; ``no_grad`` is per thread), so the two forwards overlap. Meanwhile MKL's OpenMP threads
sleep after each matmul instead of spinning on the core the other thread needs
(``openmp_blocktime(0)``). The outputs are the teacher's
own, computed by the same code on the same batch: the losses do not change.

Measured on two cores (benchmarks/step_levers.py): with Paddle on one thread the step took 0.86x
as long; with two threads, whose MKL calls already use both cores, 1.03x (no gain), which is why
``--teacher_prefetch`` is off by default.

The batch carries them under :data:`TEACHER_OUTPUTS`, where :meth:`Distiller.loss` looks first.
"""

from __future__ import annotations

import queue
import threading

from .._cpu import openmp_blocktime

__all__ = ["TEACHER_OUTPUTS", "TeacherPrefetch"]

#: the batch key holding ``(logits, taps)`` of the teacher on that batch
TEACHER_OUTPUTS = "teacher_outputs"

_END = object()


class _Failed:
    def __init__(self, error):
        self.error = error


class TeacherPrefetch:
    """Iterate ``loader`` with ``distiller.teacher_forward(batch)`` attached to each batch.

    The loader's own order, batches and ``batch_sampler`` (epochs, resuming) are unchanged; an
    error in the thread is raised in the loop, and leaving the loop early stops the thread.
    ``ahead`` batches wait finished while the student trains (1: one step of overlap).
    """

    def __init__(self, loader, distiller, ahead: int = 1):
        self.loader, self.distiller, self.ahead = loader, distiller, ahead

    @property
    def batch_sampler(self):
        return self.loader.batch_sampler

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        done = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()

        def put(item):
            while not stop.is_set():
                try:
                    done.put(item, timeout=0.1)
                    return
                except queue.Full:
                    pass

        def work():
            try:
                with openmp_blocktime(0):
                    self._compute(stop, put)
            except BaseException as e:  # re-raised in the training loop's thread
                put(_Failed(e))
            put(_END)

        # started here, inside the loop, so it inherits the loop's floating-point mode (FTZ/DAZ);
        # neither thread's MKL workers spin after a matmul on the core the other thread needs
        thread = threading.Thread(target=work, name="teacher-prefetch", daemon=True)
        with openmp_blocktime(0):
            thread.start()
            try:
                while True:
                    item = done.get()
                    if item is _END:
                        return
                    if isinstance(item, _Failed):
                        raise item.error
                    yield item
            finally:
                stop.set()
                thread.join()

    def _compute(self, stop, put):
        for batch in self.loader:
            if stop.is_set():
                return
            batch[TEACHER_OUTPUTS] = self.distiller.teacher_forward(batch)
            put(batch)
