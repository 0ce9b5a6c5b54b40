"""Checkpoints that are written atomically and resume to the same result.

Layout in a run's ``output_dir``::

    checkpoint-<step>/     model.pdparams, optimizer.pdopt, trainer_state.json, rng.pkl
                           (+ ema.pdparams with --ema_decay)
    LATEST                 name of the newest complete checkpoint (replaced atomically)

A checkpoint directory is written under a temporary name and renamed when complete, and
``LATEST`` only ever names a renamed one, so a run killed mid-write resumes from the previous
checkpoint and never reads a half-written one. Older checkpoints are removed once a newer one is
named.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from typing import Callable, Optional

import numpy as np
import paddle

__all__ = ["LATEST", "latest_checkpoint", "atomic_dir", "atomic_write_text", "check_output_dir",
           "write_checkpoint", "portable_optimizer_state", "load_portable_optimizer_state",
           "rng_state", "set_rng_state"]

LATEST = "LATEST"


def latest_checkpoint(output_dir: str) -> Optional[str]:
    p = os.path.join(output_dir, LATEST)
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        name = f.read().strip()
    path = os.path.join(output_dir, name)
    return path if os.path.isdir(path) else None


def atomic_write_text(path: str, text: str):
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_dir(final: str, write: Callable[[str], None]):
    """Write a directory under a temporary name, then swap it in for ``final``."""
    parent = os.path.dirname(os.path.abspath(final))
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(final) + "-")
    try:
        write(tmp)
        for name in os.listdir(tmp):  # contents durable before the rename makes them visible
            p = os.path.join(tmp, name)
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(final):
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def check_output_dir(output_dir: str, model):
    """Fail before training if ``output_dir`` cannot take the run's files.

    A checkpoint holds the weights and the optimizer's two moments (3x the float32 weights);
    during the swap the old and new ones coexist, and best_model/ holds one more copy.
    """
    try:
        os.makedirs(output_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=output_dir, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"output_dir {output_dir} is not writable ({e.strerror or e}); "
                              "choose another --output_dir") from e
    need = 7 * sum(int(np.prod(p.shape)) * 4 for p in model.parameters())
    free = shutil.disk_usage(output_dir).free
    if free < need:
        raise OSError(f"output_dir {output_dir} has {free / 2**20:.0f} MiB free but checkpoints of this "
                      f"model need about {need / 2**20:.0f} MiB (weights + optimizer state, old and new "
                      "during a swap, plus best_model/); free some space or choose another --output_dir")


def write_checkpoint(output_dir: str, step: int, write: Callable[[str], None]):
    """``checkpoint-<step>`` written by ``write(folder)``, then named by LATEST; older ones go."""
    name = f"checkpoint-{step}"
    atomic_dir(os.path.join(output_dir, name), write)
    atomic_write_text(os.path.join(output_dir, LATEST), name)
    for other in os.listdir(output_dir):  # older checkpoints are now redundant
        if other.startswith("checkpoint-") and other != name:
            shutil.rmtree(os.path.join(output_dir, other), ignore_errors=True)


# Paddle keys optimizer state by each parameter's process-global unique name
# ("linear_12.w_0_moment1_0"), which differs in a new process; checkpoints key it by the
# parameter's path in the model instead, so a resumed run finds its moments.
def portable_optimizer_state(optimizer, model) -> dict:
    names = sorted(((p.name, n) for n, p in model.named_parameters()), key=lambda x: -len(x[0]))
    out = {}
    for key, value in optimizer.state_dict().items():
        for uniq, path in names:
            if key.startswith(uniq + "_"):
                key = "@" + path + key[len(uniq):]
                break
        out[key] = value
    return out


def load_portable_optimizer_state(optimizer, model, state: dict):
    by_path = {n: p.name for n, p in model.named_parameters()}
    out = {}
    for key, value in state.items():
        if key.startswith("@"):
            # parameter paths contain "_" too: take the longest one the key starts with
            path = max((n for n in by_path if key[1:].startswith(n + "_")), key=len)
            key = by_path[path] + key[1 + len(path):]
        out[key] = value
    optimizer.set_state_dict(out)


def rng_state() -> dict:
    return {"paddle": paddle.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(rng: dict):
    paddle.set_rng_state(rng["paddle"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
