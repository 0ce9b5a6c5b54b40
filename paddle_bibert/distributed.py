"""Data-parallel helpers: the same commands under ``python -m paddle.distributed.launch``.

Started by Paddle's launcher, each process sees ``PADDLE_TRAINERS_NUM`` > 1 and the commands

- join the process group (``init_parallel_env``: NCCL on GPUs, gloo on CPUs),
- wrap the trained model in ``paddle.DataParallel`` (gradients are averaged across ranks),
- read every ``world_size``-th example of each shuffled epoch (``--batch_size`` is per process,
  so the global batch is ``batch_size * world_size``),
- pad each step's batch to the longest sequence across ranks, and compute the DMD terms with
  norms over the global batch, so that a run on N processes follows the same loss as one process
  with N times the batch,
- evaluate a share of the dev set on each rank and gather the predictions, and
- let rank 0 alone write logs, checkpoints, ``best_model/`` and ``summary.json``.

With a single process every helper is a no-op, so nothing changes for the usual run.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List

__all__ = ["world_size", "rank", "is_main", "init_if_launched", "wrap", "all_reduce_sum",
           "all_reduce_max", "gather_objects", "barrier", "shutdown", "main"]


def world_size() -> int:
    """Processes in the job (1 outside the launcher)."""
    return max(1, int(os.environ.get("PADDLE_TRAINERS_NUM", "1")))


def rank() -> int:
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")) if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def init_if_launched() -> bool:
    """Join the launcher's process group once; returns True when running data parallel."""
    if world_size() == 1:
        return False
    import paddle.distributed as dist

    if not dist.is_initialized():
        dist.init_parallel_env()
    from .quant.quantizers import set_first_batch_mean_abs

    # learned quantizers start from mean|x| of the global first batch, the same on every rank
    set_first_batch_mean_abs(lambda x: all_reduce_sum(x.abs().mean().reshape([1])) / world_size())
    return True


def wrap(model):
    """``paddle.DataParallel(model)`` under the launcher (it broadcasts rank 0's weights), else ``model``."""
    if world_size() == 1:
        return model
    import paddle

    return paddle.DataParallel(model)


def all_reduce_sum(x):
    """The sum of ``x`` over ranks, as a new tensor cut from the graph (``x`` is not changed)."""
    if world_size() == 1:
        return x.detach()
    import paddle.distributed as dist

    y = x.detach().clone()
    dist.all_reduce(y)
    return y


def all_reduce_max(value: float) -> float:
    if world_size() == 1:
        return value
    import paddle
    import paddle.distributed as dist

    t = paddle.to_tensor([float(value)], dtype="float64")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if world_size() == 1:
        return [obj]
    import paddle.distributed as dist

    out: List[Any] = []
    dist.all_gather_object(out, obj)
    return out


def barrier():
    if world_size() > 1:
        import paddle.distributed as dist

        dist.barrier()


def shutdown():
    """Leave the process group in order at the end of a launched run.

    Every rank waits for the others, then closes its group while Python is still running, instead
    of leaving the gloo connections to C++ destructors at interpreter exit, in whatever order the
    ranks happen to exit. (A CI run once reported a two-process run as ``Exit code -6``, SIGABRT
    in one worker, and no error in the part of the logs it printed; the cause was not reproduced
    here in 59 launches, and a teardown race of this kind is the suspected one.) Scripts of your
    own that call the commands under the launcher should end with it too.
    """
    if world_size() == 1:
        return
    import paddle.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


#: What the commands raise for a problem with the user's input or machine: told as one line.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def main(command):
    """Entry point of the example scripts: run ``command`` (argv from the command line), then
    leave the process group (``shutdown``) once it has returned. A user error (``USER_ERRORS``:
    bad values, an occupied or full output folder, a loss that turned nan) ends the process with
    its one-line message and exit status 1, as does a check that raises ``SystemExit(message)``;
    ``PADDLE_BIBERT_TRACEBACK=1`` shows the traceback."""
    try:
        command()
    except USER_ERRORS as e:
        if os.environ.get("PADDLE_BIBERT_TRACEBACK") == "1":
            raise
        sys.exit(f"error: {e}")
    except SystemExit as e:
        # a check that stops with its message says it as every other user error does; a bare
        # status (argparse's 2 after its usage lines, --help's 0) passes through
        if isinstance(e.code, str) and not e.code.startswith("error: "):
            sys.exit(f"error: {e.code}")
        raise
    shutdown()
