"""The BiBERT / TinyBERT-style distiller: which tensors to compare, and the total loss.

Layer mapping when the student is shallower (k = teacher layers / student layers):
attention (Q/K/V) of student layer i <- teacher layer i*k + k - 1; hidden state j (0 = the
embedding output) <- teacher hidden state j*k. The total loss is the unweighted sum of the
enabled terms; every enabled term appears in the returned dict (and so in the logs). With a
``TeacherForcing`` (forcing.py) the student's layers take the teacher's mapped hidden states as
inputs while its weight is above 0.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Tuple

import paddle
import paddle.nn.functional as F

from ..distributed import world_size
from .losses import dmd, pred_loss, relation_dmd
from .prefetch import TEACHER_OUTPUTS
from .taps import Taps

__all__ = ["DistillConfig", "Distiller"]


@dataclass
class DistillConfig:
    pred_distill: bool = False
    query_distill: bool = False
    key_distill: bool = False
    value_distill: bool = False
    intermediate_distill: bool = False
    temperature: float = 1.0
    gold_weight: float = 0.5
    hidden_loss: str = "dmd"  # or "mse" (BiT): the loss of intermediate_distill

    FLAGS = ("pred_distill", "query_distill", "key_distill", "value_distill", "intermediate_distill")

    def __post_init__(self):  # a config without a loss is refused where it is made, before any model loads
        if not any(getattr(self, f) for f in self.FLAGS):
            raise ValueError("no distillation loss is enabled: pass at least one of "
                             + ", ".join("--" + f for f in self.FLAGS))

    def streams(self):
        s = [x for x, f in (("q", self.query_distill), ("k", self.key_distill),
                            ("v", self.value_distill), ("hidden", self.intermediate_distill)) if f]
        return tuple(s)


class Distiller:
    """``loss(batch) -> (total, {term: value})`` for a student taught by a frozen teacher."""

    def __init__(self, student, teacher, config: DistillConfig, is_regression: bool = False,
                 forcing=None, teacher_cache=None):
        self.student, self.teacher, self.config = student, teacher, config
        # what the student's forward goes through: the student itself, or its paddle.DataParallel
        # wrapper under the launcher (set by the caller, see paddle_bibert.distributed.wrap)
        self.student_call = student
        self.global_batch = world_size() > 1  # DMD norms over all ranks' batches
        self.is_regression = is_regression
        self.forcing = forcing  # a TeacherForcing, or None
        self.teacher_cache = teacher_cache  # a TeacherCache (cache.py), or None: the teacher runs
        teacher.eval()
        for p in teacher.parameters():
            p.stop_gradient = True
        streams = config.streams()
        # forcing feeds the student the teacher's hidden states, so the teacher records them
        t_streams = streams + (("hidden",) if forcing is not None and "hidden" not in streams else ())
        self.student_taps = Taps(student, streams) if streams else None
        self.teacher_taps = Taps(teacher, t_streams) if t_streams else None
        self.student_layers = Taps(student, ()).layers if t_streams else None  # in order
        self.k = 1
        if t_streams:
            ls, lt = len(self.student_layers), self.teacher_taps.num_layers
            if lt % ls:
                raise ValueError(f"teacher has {lt} layers, student {ls}: the teacher's depth must be a "
                                 "multiple of the student's")
            self.k = lt // ls

    def _forward(self, model, taps, batch):
        if taps is None:
            return model(batch["input_ids"], token_type_ids=batch["token_type_ids"]), None
        with taps:
            logits = model(batch["input_ids"], token_type_ids=batch["token_type_ids"])
        return logits, dict(taps.records)

    def teacher_forward(self, batch):
        if self.teacher_cache is not None:
            return self.teacher_cache.outputs(batch, self.teacher_live)
        return self.teacher_live(batch)

    def teacher_live(self, batch):
        with paddle.no_grad():
            return self._forward(self.teacher, self.teacher_taps, batch)

    def student_forward(self, batch, t_rec=None):
        if self.forcing is None:
            return self._forward(self.student_call, self.student_taps, batch)
        with self.forcing.applied(self.student_layers, t_rec["hidden"], self.k):
            return self._forward(self.student_call, self.student_taps, batch)

    def loss(self, batch) -> Tuple[paddle.Tensor, Dict[str, paddle.Tensor]]:
        t_out = batch.get(TEACHER_OUTPUTS)  # computed ahead (TeacherPrefetch), else now
        t_logits, t_rec = t_out if t_out is not None else self.teacher_forward(batch)
        s_logits, s_rec = self.student_forward(batch, t_rec)
        return self.terms(s_logits, s_rec, t_logits, t_rec, batch.get("labels"))

    def terms(self, s_logits, s_rec, t_logits, t_rec, labels=None):
        """The enabled loss terms from both models' outputs and taps; returns (total, terms)."""
        c, k, g = self.config, self.k, self.global_batch
        terms = {}
        if c.pred_distill:
            terms["pred"] = pred_loss(s_logits, t_logits, labels, self.is_regression,
                                      c.temperature, c.gold_weight)
        for flag, stream in (("query_distill", "q"), ("key_distill", "k"), ("value_distill", "v")):
            if getattr(c, flag):
                terms[stream] = paddle.add_n([relation_dmd(s, t_rec[stream][i * k + k - 1], g)
                                              for i, s in enumerate(s_rec[stream])])
        if c.intermediate_distill:
            if c.hidden_loss == "mse":
                terms["hidden"] = paddle.add_n([F.mse_loss(s, t_rec["hidden"][j * k])
                                                for j, s in enumerate(s_rec["hidden"])])
            else:
                terms["hidden"] = paddle.add_n([dmd(s, t_rec["hidden"][j * k], g)
                                                for j, s in enumerate(s_rec["hidden"])])
        total = paddle.add_n(list(terms.values()))
        return total, terms

    __call__ = loss
