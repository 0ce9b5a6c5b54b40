"""GLUE metrics, with the definitions and key names of GLUE / BiBERT's utils_glue.

Keys returned by ``compute_metrics``:
  every classification task: ``acc``
  MRPC, QQP:                  ``acc``, ``f1`` (positive class 1), ``acc_and_f1`` (their mean)
  CoLA:                       ``acc``, ``mcc`` (Matthews correlation)
  STS-B:                      ``pearson``, ``spearmanr``, ``corr`` (their mean)

``main_metric(task)`` is the key used to keep the best checkpoint; it follows
BiBERT's quant_task_glue.py: ``mcc`` for CoLA, ``corr`` for STS-B and ``acc``
for all others, including MRPC/QQP where BiBERT selects on accuracy and only
reports F1 (see TASKS in glue.py).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from .glue import get_task


def main_metric(task: str) -> str:
    """Key of ``compute_metrics(task, ...)`` by which checkpoints are compared (higher is better)."""
    return get_task(task).metric


def compute_metrics(task: str, preds, labels) -> dict[str, float]:
    """Score predictions against gold labels.

    preds: classification logits ``[N, num_labels]`` (argmax is taken here) or
    already-chosen class ids ``[N]``; for STS-B the raw scores ``[N]`` or ``[N, 1]``.
    labels: ``[N]`` class ids or scores.  Anything ``np.asarray`` accepts works
    (lists, numpy arrays, paddle tensors).

    With constant predictions Pearson/Spearman are undefined and come back as NaN
    (never "better" than a real score); MCC is 0 by sklearn's convention.
    """
    info = get_task(task)
    preds = np.asarray(preds)
    labels = np.asarray(labels).reshape(-1)
    if info.is_regression:
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
    elif preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    if preds.ndim != 1:
        raise ValueError(
            f"{info.name}: preds must be [N, num_labels] logits or [N] "
            f"{'scores' if info.is_regression else 'class ids'}, got shape {preds.shape}"
        )
    if len(preds) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"{info.name}: got {len(preds)} predictions for {len(labels)} labels; "
            f"pass one prediction per example of a non-empty split"
        )

    if info.is_regression:
        pearson = float(pearsonr(preds, labels)[0])
        spearman = float(spearmanr(preds, labels)[0])
        return {"pearson": pearson, "spearmanr": spearman, "corr": (pearson + spearman) / 2}

    acc = float((preds == labels).mean())
    result = {"acc": acc}
    if info.name == "cola":
        result["mcc"] = float(matthews_corrcoef(labels, preds))
    elif info.name in ("mrpc", "qqp"):
        f1 = float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0))
        result.update(f1=f1, acc_and_f1=(acc + f1) / 2)
    return result
