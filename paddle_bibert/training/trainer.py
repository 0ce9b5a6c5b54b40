"""The training loop shared by fine-tuning (run_glue) and distillation (task_distill).

AdamW (or the authors' BertAdam, ``optim.py``) with PaddleNLP's linear warm-up then decay, weight
decay off for biases, LayerNorms and quantizer parameters; a progress bar with the live loss
terms, a log line every ``logging_steps``, dev evaluation every ``save_steps`` or at each epoch's
end (``evaluation_strategy``; and at the last step) keeping the best model in
``output_dir/best_model/``, and checkpoints (``checkpoint.py``) every ``save_steps`` that resume
to the same result. With ``ema_decay > 0`` the dev evaluations score, and
``best_model/`` keeps, an exponential moving average of the weights (``ema.py``); the training
steps are the same either way. Under data parallelism rank 0 alone writes.

Time: ``train_seconds`` is the loop's wall time (summed over resumes), of which
``eval_seconds`` went to dev evaluations and ``checkpoint_seconds`` to checkpoint writes;
``training_seconds`` is the rest, and each dev evaluation in the history records it as it stood.

(About 400 lines: the loop, evaluation, best-model keeping and resume share one run's state, so
they stay one class; checkpoint files, the average and the optimizers live beside it.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import paddle

from .. import distributed as dist
from ..data.metrics import compute_metrics, main_metric
from .checkpoint import (atomic_dir, check_output_dir, latest_checkpoint, load_portable_optimizer_state,
                         portable_optimizer_state, rng_state, set_rng_state, write_checkpoint)
from .ema import ParamEMA
from .optim import BertAdam

__all__ = ["TrainArgs", "Trainer", "set_seed", "evaluate", "score_batches"]

logger = logging.getLogger("paddle_bibert")

OPTIMIZERS = ("adamw", "bertadam")
EVALUATION_STRATEGIES = ("steps", "epoch")
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
    evaluation_strategy: str = "steps"  # dev evaluation every save_steps, or at each epoch's end
    seed: int = 42
    max_steps: int = -1  # > 0: stop after this many steps (the schedule is sized to it)
    resume: bool = False
    stop_at_step: int = -1  # testing aid: end the process's run here, as if interrupted
    eval_batch_size: int = 64
    progress: bool = True
    flush_denormals: bool = True  # train with FTZ/DAZ set (see paddle_bibert._cpu); eval too
    ema_decay: float = 0.0  # > 0: evaluate and keep an EMA of the weights (see ema.py)
    optimizer: str = "adamw"  # or "bertadam" (optim.py)

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
        if self.evaluation_strategy not in EVALUATION_STRATEGIES:
            raise ValueError(f"--evaluation_strategy must be one of {', '.join(EVALUATION_STRATEGIES)}, "
                             f"got {self.evaluation_strategy!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}; e.g. 0.99")


@paddle.no_grad()
def evaluate(model, loader, task) -> Dict[str, float]:
    """Metrics of ``model`` over ``loader``. Data parallel: rank r scores batches r, r+N, ...
    and the predictions of all ranks are gathered, so every rank gets the full-dev-set metrics."""
    was_training = model.training
    model.eval()
    try:
        return score_batches(lambda b: model(b["input_ids"], token_type_ids=b["token_type_ids"]).numpy(),
                             loader, task)
    finally:
        if was_training:
            model.train()


def score_batches(logits_of, loader, task) -> Dict[str, float]:
    """Metrics of ``logits_of(batch) -> [B, labels] array`` over ``loader`` (see ``evaluate``)."""
    world, rank = dist.world_size(), dist.rank()
    parts = []
    for i, batch in enumerate(loader):
        if i % world != rank:
            continue
        parts.append((i, logits_of(batch), batch["labels"].numpy()))
    if world > 1:
        parts = sorted((p for rank_parts in dist.gather_objects(parts) for p in rank_parts), key=lambda p: p[0])
    return compute_metrics(task, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))


def _decay_params(model) -> List[str]:
    """Names of parameters that get weight decay: not biases, not LayerNorm weights, not those of
    layers that say ``no_weight_decay`` (the learned quantizers)."""
    kept = {id(p) for layer in model.sublayers() if getattr(layer, "no_weight_decay", False)
            for p in layer.parameters()}
    return [p.name for name, p in model.named_parameters()
            if not ("bias" in name.lower() or "norm" in name.lower() or id(p) in kept)]


class Trainer:
    """Run ``loss_fn(batch) -> (loss, {term: value})`` over ``train_loader``.

    ``model`` holds the parameters being trained (the student when distilling) and is what
    ``evaluator(model, dev_loader, task) -> metrics`` scores (default ``evaluate``; e.g.
    ``packed_eval.evaluate_packed``); ``save_model(model, dir)`` writes the best model.
    """

    def __init__(self, model, loss_fn, train_loader, dev_loader, args: TrainArgs,
                 save_model: Callable, log=None, ramp=None, evaluator: Optional[Callable] = None,
                 forcing=None):
        args.validate()
        self.model, self.loss_fn, self.args = model, loss_fn, args
        self.evaluator = evaluator
        # an ActivationRamp (quant/ramp.py): set for each step; evaluation sees the binary model
        self.ramp = ramp
        # a TeacherForcing (distill/forcing.py) the loss applies: its weight set for each step
        self.forcing = forcing
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
                      "train_seconds": 0.0, "eval_seconds": 0.0, "checkpoint_seconds": 0.0}
        # data parallel: rank 0 alone writes; batches are padded to the longest across ranks
        self.world, self.is_main = dist.world_size(), dist.is_main()
        self.pad_to = getattr(getattr(train_loader, "collate_fn", None), "pad_to", None)

    # ---- checkpoints (checkpoint.py) -----------------------------------------------------
    def _write_checkpoint(self):
        rngs = dist.gather_objects(rng_state())  # one entry per rank
        self._check_ranks_agree()
        if not self.is_main:
            return

        def write(d):
            paddle.save(self.model.state_dict(), os.path.join(d, "model.pdparams"))
            paddle.save(portable_optimizer_state(self.optimizer, self.model), os.path.join(d, "optimizer.pdopt"))
            if self.ema is not None:
                paddle.save(self.ema.state_dict(), os.path.join(d, "ema.pdparams"))
            with open(os.path.join(d, "rng.pkl"), "wb") as f:
                pickle.dump(dict(rngs[0], per_rank=rngs), f)
            with open(os.path.join(d, "trainer_state.json"), "w") as f:
                json.dump(dict(self.state, scheduler=self.scheduler.state_dict(),
                               args=asdict(self.args)), f, indent=1)

        write_checkpoint(self.args.output_dir, self.state["global_step"], write)

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
        load_portable_optimizer_state(self.optimizer, self.model, paddle.load(os.path.join(path, "optimizer.pdopt")))
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
        set_rng_state(rng)

    # ---- loop --------------------------------------------------------------------------
    def _evaluate_and_keep_best(self, training_seconds: float):
        """Score the dev set; ``training_seconds`` (the run's time so far, evaluations and
        checkpoint writes excluded) goes into the history with the metrics."""
        t0 = time.time()
        with contextlib.ExitStack() as scope:
            if self.ema is not None:  # score, and keep, the averaged weights
                scope.enter_context(self.ema.swapped())
            if self.ramp is not None:  # ... with binary activations, whatever the ramp's point
                scope.enter_context(self.ramp.binary())
            metrics = self._evaluate_and_keep_best_now(training_seconds)
        self.state["eval_seconds"] += time.time() - t0
        return metrics

    def _evaluate_and_keep_best_now(self, training_seconds):
        metrics = (self.evaluator or evaluate)(self.model, self.dev_loader, self.args.task_name)
        step = self.state["global_step"]
        value = metrics[self.metric]
        if not math.isfinite(value):  # e.g. a correlation of constant predictions
            value = -math.inf
        best = self.state["best_metric"]
        improved = best is None or value > best
        self.state["history"].append({"step": step, "training_seconds": round(training_seconds, 2), **metrics})
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
        self._start()
        step = self.state["global_step"]
        sampler = self.train_loader.batch_sampler
        bar = None
        if args.progress and self.is_main:
            from tqdm import tqdm
            bar = tqdm(total=self.total_steps, initial=step, file=sys.stderr, dynamic_ncols=True,
                       mininterval=2.0, desc="train")
        self.model.train()
        self._running: Dict[str, float] = {}
        clock = (time.time(), self.state["train_seconds"])  # this process's start, the earlier runs' time
        while step < self.total_steps:
            epoch, skip = divmod(step, self.steps_per_epoch)
            sampler.set_epoch(epoch, skip_batches=skip)
            for batch in self.train_loader:
                loss, terms, loss_value = self._step(batch, step)
                step += 1
                self.state["global_step"] = step
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{float(v):.3f}" for k, v in [("loss", loss), *terms.items()]},
                                    refresh=False)
                self._log_terms(step, terms, loss_value)
                last = step >= self.total_steps
                every = self.steps_per_epoch if args.evaluation_strategy == "epoch" else args.save_steps
                evaluate_now, save_now = last or step % every == 0, last or step % args.save_steps == 0
                if evaluate_now or save_now:
                    self._evaluate_and_checkpoint(clock, evaluate_now, save_now)
                if last or step == args.stop_at_step:
                    break
            if step == args.stop_at_step:
                break
        if bar is not None:
            bar.close()
        self.state["train_seconds"] = clock[1] + time.time() - clock[0]
        return self._summary(step)

    def _start(self):
        """Check the output folder; resume from its newest checkpoint, or refuse to overwrite one."""
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

    def _step(self, batch, step):
        """One optimizer step on ``batch``; returns the loss, its terms and the loss as logged."""
        if self.world > 1 and self.pad_to is not None:
            batch = self.pad_to(batch, int(dist.all_reduce_max(batch["input_ids"].shape[1])))
        for schedule in (self.ramp, self.forcing):
            if schedule is not None:
                schedule.at(step, self.total_steps)
        loss, terms = self.loss_fn(batch)
        loss_value = float(loss)
        if self.world > 1:  # the mean over ranks: logged, and checked by every rank alike
            loss_value = float(dist.all_reduce_sum(loss.reshape([1]))) / self.world
        if not math.isfinite(loss_value):
            last = latest_checkpoint(self.args.output_dir)
            fix = (f"The last good checkpoint is {last}; lower --learning_rate" if last else
                   "No checkpoint was written before it: lower --learning_rate and start again")
            raise FloatingPointError(f"loss is {loss_value} at step {step + 1}; stopping. {fix}")
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        self.optimizer.clear_grad()
        self.scheduler.step()
        return loss, terms, loss_value

    def _log_terms(self, step, terms, loss_value):
        """Accumulate the loss terms; every ``logging_steps`` log their means and start again."""
        running = self._running
        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + float(v)
        running["loss"] = running.get("loss", 0.0) + loss_value
        running["_n"] = running.get("_n", 0) + 1
        if step % self.args.logging_steps == 0:
            n = running.pop("_n")
            shown = ", ".join(f"{k} {v / n:.4f}" for k, v in running.items())
            self.log(f"[train] step {step}/{self.total_steps} epoch {step / self.steps_per_epoch:.2f} "
                     f"lr {self.scheduler.get_lr():.2e}: {shown}")
            self._running = {}

    def _evaluate_and_checkpoint(self, clock, evaluate_now=True, save_now=True):
        start, earlier = clock
        elapsed = earlier + time.time() - start
        if evaluate_now:
            self._evaluate_and_keep_best(elapsed - self.state["eval_seconds"] - self.state["checkpoint_seconds"])
        t0 = time.time()
        self.state["train_seconds"] = earlier + t0 - start
        if save_now:
            self._write_checkpoint()
            self.state["checkpoint_seconds"] += time.time() - t0

    def _summary(self, step) -> dict:
        st = self.state
        return {"best_metric": st["best_metric"], "best_step": st["best_step"],
                "metric": self.metric, "global_step": step, "total_steps": self.total_steps,
                "train_seconds": st["train_seconds"], "eval_seconds": st["eval_seconds"],
                "checkpoint_seconds": st["checkpoint_seconds"],
                "training_seconds": st["train_seconds"] - st["eval_seconds"] - st["checkpoint_seconds"],
                "world_size": self.world,
                **({"weights_sha256": st["weights_sha256"]} if "weights_sha256" in st else {}),
                "finished": step >= self.total_steps}
