"""The training loop shared by fine-tuning and distillation.

One loop for both commands: AdamW (or the authors' BertAdam) with PaddleNLP's linear warm-up
then decay, weight decay off for biases and LayerNorms, a progress bar with the live loss terms, a log line every
``logging_steps``, dev evaluation every ``save_steps`` (and at the end) keeping the best model,
and checkpoints that are written atomically and resume to the same result. With
``ema_decay > 0`` the dev evaluations score, and ``best_model/`` keeps, an exponential moving
average of the weights (``ema.py``); the training steps are the same either way.

Checkpoint layout in ``output_dir``::

    checkpoint-<step>/     model.pdparams, optimizer.pdopt, trainer_state.json, rng.pkl
                           (+ ema.pdparams with --ema_decay)
    LATEST                 name of the newest complete checkpoint (replaced atomically)
    best_model/            the best dev model, in the caller's save format

A checkpoint directory is written under a temporary name and renamed when complete, and
``LATEST`` only ever names a renamed one, so a run killed mid-write resumes from the previous
checkpoint and never reads a half-written one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import paddle

from .. import distributed as dist
from ..optim import BertAdam
from .ema import ParamEMA
from ..data.metrics import compute_metrics, main_metric

__all__ = ["TrainArgs", "Trainer", "set_seed", "evaluate", "latest_checkpoint"]

logger = logging.getLogger("paddle_bibert")

LATEST = "LATEST"
OPTIMIZERS = ("adamw", "bertadam")
BEST = "best_model"


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


@dataclass
class TrainArgs:
    output_dir: str
    task_name: str
    learning_rate: float = 5e-5
    num_train_epochs: float = 3
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_proportion: float = 0.1
    logging_steps: int = 50
    save_steps: int = 500
    seed: int = 42
    max_steps: int = -1  # > 0: stop after this many steps (the schedule is sized to it)
    resume: bool = False
    stop_at_step: int = -1  # testing aid: end the process's run here, as if interrupted
    eval_batch_size: int = 64
    progress: bool = True
    flush_denormals: bool = True  # train with FTZ/DAZ set (see paddle_bibert._cpu); eval too
    ema_decay: float = 0.0  # > 0: evaluate and keep an EMA of the weights (see ema.py)
    optimizer: str = "adamw"  # or "bertadam" (paddle_bibert.optim)

    def validate(self):
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}; e.g. --learning_rate 5e-5")
        if self.batch_size <= 0:
            raise ValueError(f"--batch_size must be > 0, got {self.batch_size}; e.g. --batch_size 32")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ValueError("--num_train_epochs must be > 0 (or set --max_steps)")
        if not 0 <= self.warmup_proportion < 1:
            raise ValueError(f"--warmup_proportion must be in [0, 1), got {self.warmup_proportion}; e.g. 0.1")
        if self.logging_steps <= 0 or self.save_steps <= 0:
            raise ValueError("--logging_steps and --save_steps must be > 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}; e.g. 0.99")


def latest_checkpoint(output_dir: str) -> Optional[str]:
    p = os.path.join(output_dir, LATEST)
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        name = f.read().strip()
    path = os.path.join(output_dir, name)
    return path if os.path.isdir(path) else None


def _atomic_write_text(path: str, text: str):
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


@paddle.no_grad()
def evaluate(model, loader, task) -> Dict[str, float]:
    """Metrics of ``model`` over ``loader``. Data parallel: rank r scores batches r, r+N, ...
    and the predictions of all ranks are gathered, so every rank gets the full-dev-set metrics."""
    was_training = model.training
    model.eval()
    world, rank = dist.world_size(), dist.rank()
    parts = []
    for i, batch in enumerate(loader):
        if i % world != rank:
            continue
        logits = model(batch["input_ids"], token_type_ids=batch["token_type_ids"])
        parts.append((i, logits.numpy(), batch["labels"].numpy()))
    if was_training:
        model.train()
    if world > 1:
        parts = sorted((p for rank_parts in dist.gather_objects(parts) for p in rank_parts), key=lambda p: p[0])
    return compute_metrics(task, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))


def _state_bytes(model) -> int:
    return sum(int(np.prod(p.shape)) * 4 for p in model.parameters())


def check_output_dir(output_dir: str, model):
    """Fail before training if ``output_dir`` cannot take the run's files.

    A checkpoint holds the weights and AdamW's two moments (3x the float32 weights); during the
    swap the old and new ones coexist, and best_model/ holds one more copy of the weights.
    """
    try:
        os.makedirs(output_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=output_dir, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"output_dir {output_dir} is not writable ({e.strerror or e}); "
                              "choose another --output_dir") from e
    need = 7 * _state_bytes(model)
    free = shutil.disk_usage(output_dir).free
    if free < need:
        raise OSError(f"output_dir {output_dir} has {free / 2**20:.0f} MiB free but checkpoints of this "
                      f"model need about {need / 2**20:.0f} MiB (weights + optimizer state, old and new "
                      "during a swap, plus best_model/); free some space or choose another --output_dir")


def _decay_params(model) -> List[str]:
    """Names of parameters that get weight decay: not biases, not LayerNorm weights."""
    out = []
    for name, p in model.named_parameters():
        low = name.lower()
        if "bias" in low or "norm" in low or "quantizer." in low:  # quantizer scales/shifts: no decay
            continue
        out.append(p.name)
    return out


class Trainer:
    """Run ``loss_fn(batch) -> (loss, {term: value})`` over ``train_loader``.

    ``model`` holds the parameters being trained (the student when distilling) and is what
    ``evaluate`` scores; ``save_model(model, dir)`` writes the best model.
    """

    def __init__(self, model, loss_fn, train_loader, dev_loader, args: TrainArgs,
                 save_model: Callable, log=None):
        args.validate()
        self.model, self.loss_fn, self.args = model, loss_fn, args
        self.train_loader, self.dev_loader = train_loader, dev_loader
        self.save_model = save_model
        self.log = log if log is not None else (lambda msg: print(msg, flush=True))
        if not dist.is_main():
            self.log = lambda msg: None
        self.metric = main_metric(args.task_name)
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError("the training set is empty (fewer examples than one batch?)")
        total = (args.max_steps if args.max_steps > 0
                 else int(math.ceil(args.num_train_epochs * self.steps_per_epoch)))
        self.total_steps = total
        from paddlenlp.transformers import LinearDecayWithWarmup

        # linear warm-up over the first warmup_proportion of the steps, then linear decay to 0
        self.scheduler = LinearDecayWithWarmup(args.learning_rate, total, int(args.warmup_proportion * total))
        decay = set(_decay_params(model))
        for layer in model.sublayers():  # e.g. BiT's elastic scales train at their own rate
            own = getattr(layer, "own_learning_rate", None)
            if own:
                for p in layer.parameters(include_sublayers=False):
                    p.optimize_attr["learning_rate"] = own / args.learning_rate
        optimizer = paddle.optimizer.AdamW if args.optimizer == "adamw" else BertAdam
        self.optimizer = optimizer(learning_rate=self.scheduler, parameters=model.parameters(),
                                   weight_decay=args.weight_decay, apply_decay_param_fun=lambda n: n in decay)
        self.ema = ParamEMA(model, args.ema_decay) if args.ema_decay > 0 else None
        self.state = {"global_step": 0, "best_metric": None, "best_step": None, "history": [],
                      "train_seconds": 0.0}
        # data parallel: rank 0 alone writes; batches are padded to the longest across ranks
        self.world, self.is_main = dist.world_size(), dist.is_main()
        self.pad_to = getattr(getattr(train_loader, "collate_fn", None), "pad_to", None)

    # ---- checkpoints -------------------------------------------------------------------
    # Paddle keys optimizer state by each parameter's process-global unique name
    # ("linear_12.w_0_moment1_0"), which differs in a new process; checkpoints key it by the
    # parameter's path in the model instead, so a resumed run finds its moments.
    def _portable_optimizer_state(self):
        names = sorted(((p.name, n) for n, p in self.model.named_parameters()), key=lambda x: -len(x[0]))
        out = {}
        for key, value in self.optimizer.state_dict().items():
            for uniq, path in names:
                if key.startswith(uniq + "_"):
                    key = "@" + path + key[len(uniq):]
                    break
            out[key] = value
        return out

    def _load_portable_optimizer_state(self, state):
        by_path = {n: p.name for n, p in self.model.named_parameters()}
        out = {}
        for key, value in state.items():
            if key.startswith("@"):
                # parameter paths contain "_" too: take the longest one the key starts with
                path = max((n for n in by_path if key[1:].startswith(n + "_")), key=len)
                key = by_path[path] + key[1 + len(path):]
            out[key] = value
        self.optimizer.set_state_dict(out)

    @staticmethod
    def _rng_state():
        return {"paddle": paddle.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}

    def _write_checkpoint(self):
        step = self.state["global_step"]
        rngs = dist.gather_objects(self._rng_state())  # one entry per rank
        self._check_ranks_agree()
        if not self.is_main:
            return
        name = f"checkpoint-{step}"
        final = os.path.join(self.args.output_dir, name)

        def write(d):
            paddle.save(self.model.state_dict(), os.path.join(d, "model.pdparams"))
            paddle.save(self._portable_optimizer_state(), os.path.join(d, "optimizer.pdopt"))
            if self.ema is not None:
                paddle.save(self.ema.state_dict(), os.path.join(d, "ema.pdparams"))
            with open(os.path.join(d, "rng.pkl"), "wb") as f:
                pickle.dump(dict(rngs[0], per_rank=rngs), f)
            with open(os.path.join(d, "trainer_state.json"), "w") as f:
                json.dump(dict(self.state, scheduler=self.scheduler.state_dict(),
                               args=asdict(self.args)), f, indent=1)

        atomic_dir(final, write)
        _atomic_write_text(os.path.join(self.args.output_dir, LATEST), name)
        for other in os.listdir(self.args.output_dir):  # older checkpoints are now redundant
            if other.startswith("checkpoint-") and other != name:
                shutil.rmtree(os.path.join(self.args.output_dir, other), ignore_errors=True)

    def _load_checkpoint(self, path):
        with open(os.path.join(path, "trainer_state.json")) as f:
            st = json.load(f)
        was = st.get("args", {}).get("ema_decay", 0.0)
        if was != self.args.ema_decay:  # on/off or another horizon: the average would not continue
            raise ValueError(f"{path} was written with --ema_decay {was} (0 = off); resume with the "
                             f"same value, not {self.args.ema_decay}")
        was = st.get("args", {}).get("optimizer", "adamw")
        if was != self.args.optimizer:  # the other optimizer's moments mean something else
            raise ValueError(f"{path} was written with --optimizer {was}; resume with the same "
                             f"optimizer, not {self.args.optimizer}")
        self.model.set_state_dict(paddle.load(os.path.join(path, "model.pdparams")))
        self._load_portable_optimizer_state(paddle.load(os.path.join(path, "optimizer.pdopt")))
        if self.ema is not None:
            self.ema.set_state_dict(paddle.load(os.path.join(path, "ema.pdparams")))
        self.scheduler.set_state_dict(st.pop("scheduler"))
        st.pop("args", None)
        self.state.update(st)
        with open(os.path.join(path, "rng.pkl"), "rb") as f:
            rng = pickle.load(f)
        per_rank = rng.get("per_rank") or [rng]
        if len(per_rank) == self.world:
            rng = per_rank[dist.rank()]
        elif self.world > 1:
            self.log(f"the checkpoint was written by {len(per_rank)} process(es), this run has {self.world}: "
                     "every rank continues from rank 0's random state")
        paddle.set_rng_state(rng["paddle"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])

    # ---- loop --------------------------------------------------------------------------
    def _evaluate_and_keep_best(self):
        if self.ema is not None:  # score, and keep, the averaged weights
            with self.ema.swapped():
                return self._evaluate_and_keep_best_now()
        return self._evaluate_and_keep_best_now()

    def _evaluate_and_keep_best_now(self):
        metrics = evaluate(self.model, self.dev_loader, self.args.task_name)
        step = self.state["global_step"]
        value = metrics[self.metric]
        if not math.isfinite(value):  # e.g. a correlation of constant predictions
            value = -math.inf
        best = self.state["best_metric"]
        improved = best is None or value > best
        self.state["history"].append({"step": step, **metrics})
        if improved:
            self.state["best_metric"], self.state["best_step"] = value, step
            if self.is_main:
                atomic_dir(os.path.join(self.args.output_dir, BEST), lambda d: self.save_model(self.model, d))
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self.log(f"[eval] step {step}: {shown}{'  (best so far, saved)' if improved else ''}")
        return metrics

    def _check_ranks_agree(self):
        """Data parallel: every rank must hold the same weights; stop loudly if they drifted."""
        if self.world == 1:
            return
        import hashlib

        h = hashlib.sha256()
        for _, p in sorted(self.model.state_dict().items()):
            h.update(np.ascontiguousarray(p.numpy()).tobytes())
        digests = dist.gather_objects(h.hexdigest())
        if len(set(digests)) != 1:
            raise RuntimeError(f"data-parallel ranks hold different weights at step {self.state['global_step']} "
                               f"(sha256 per rank: {digests}); check that every rank runs the same code and "
                               "config")
        self.state["weights_sha256"] = digests[0]

    def train(self) -> dict:
        from .._cpu import flush_denormals

        with flush_denormals(self.args.flush_denormals):
            return self._train()

    def _train(self) -> dict:
        args = self.args
        check_output_dir(args.output_dir, self.model)
        best, best_old = os.path.join(args.output_dir, BEST), os.path.join(args.output_dir, BEST + ".old")
        if not os.path.exists(best) and os.path.isdir(best_old):
            os.replace(best_old, best)  # killed between the two renames of atomic_dir
        if args.resume:
            ckpt = latest_checkpoint(args.output_dir)
            if ckpt is None:
                self.log(f"--resume: no checkpoint in {args.output_dir}; starting from step 0")
            else:
                self._load_checkpoint(ckpt)
                self.log(f"resumed from {ckpt} at step {self.state['global_step']}")
        elif latest_checkpoint(args.output_dir):
            raise FileExistsError(f"{args.output_dir} already holds a run's checkpoint; pass --resume "
                                  "to continue it, or choose an empty --output_dir")
        step = self.state["global_step"]
        sampler = self.train_loader.batch_sampler
        bar = None
        if args.progress and self.is_main:
            from tqdm import tqdm
            bar = tqdm(total=self.total_steps, initial=step, file=sys.stderr, dynamic_ncols=True,
                       mininterval=2.0, desc="train")
        self.model.train()
        running: Dict[str, float] = {}
        t_start = time.time()
        t_base = self.state["train_seconds"]
        while step < self.total_steps:
            epoch, skip = divmod(step, self.steps_per_epoch)
            sampler.set_epoch(epoch, skip_batches=skip)
            for batch in self.train_loader:
                if self.world > 1 and self.pad_to is not None:
                    batch = self.pad_to(batch, int(dist.all_reduce_max(batch["input_ids"].shape[1])))
                loss, terms = self.loss_fn(batch)
                loss_value = float(loss)
                if self.world > 1:  # the mean over ranks: logged, and checked by every rank alike
                    loss_value = float(dist.all_reduce_sum(loss.reshape([1]))) / self.world
                if not math.isfinite(loss_value):
                    raise FloatingPointError(
                        f"loss is {loss_value} at step {step + 1}; stopping. The last good "
                        f"checkpoint is {latest_checkpoint(args.output_dir)}; lower --learning_rate")
                loss.backward()
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update()
                self.optimizer.clear_grad()
                self.scheduler.step()
                step += 1
                self.state["global_step"] = step
                for k, v in terms.items():
                    running[k] = running.get(k, 0.0) + float(v)
                running["loss"] = running.get("loss", 0.0) + loss_value
                running["_n"] = running.get("_n", 0) + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{float(v):.3f}" for k, v in [("loss", loss), *terms.items()]},
                                    refresh=False)
                if step % args.logging_steps == 0:
                    n = running.pop("_n")
                    shown = ", ".join(f"{k} {v / n:.4f}" for k, v in running.items())
                    self.log(f"[train] step {step}/{self.total_steps} epoch {step / self.steps_per_epoch:.2f} "
                             f"lr {self.scheduler.get_lr():.2e}: {shown}")
                    running = {}
                last = step >= self.total_steps
                if step % args.save_steps == 0 or last:
                    self._evaluate_and_keep_best()
                    self.state["train_seconds"] = t_base + time.time() - t_start
                    self._write_checkpoint()
                if last or step == args.stop_at_step:
                    break
            if step == args.stop_at_step:
                break
        if bar is not None:
            bar.close()
        self.state["train_seconds"] = t_base + time.time() - t_start
        return {"best_metric": self.state["best_metric"], "best_step": self.state["best_step"],
                "metric": self.metric, "global_step": step, "total_steps": self.total_steps,
                "train_seconds": self.state["train_seconds"], "world_size": self.world,
                **({"weights_sha256": self.state["weights_sha256"]} if "weights_sha256" in self.state else {}),
                "finished": step >= self.total_steps}
