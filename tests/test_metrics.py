"""compute_metrics against hand-written numpy formulas on fixed arrays."""

import math

import numpy as np
import pytest

from paddle_bibert.data.glue import TASKS
from paddle_bibert.data.metrics import compute_metrics, main_metric

# confusion matrix: TP=4, FN=2, FP=1, TN=3
LABELS = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
PREDS = np.array([1, 1, 1, 1, 0, 0, 1, 0, 0, 0])


def _logits(preds, num_labels=2, seed=0):
    """Random logits whose argmax is ``preds``."""
    logits = np.random.default_rng(seed).normal(size=(len(preds), num_labels))
    logits[np.arange(len(preds)), preds] = logits.max(axis=1) + 1.0
    return logits.astype("float32")


def _confusion(preds, labels):
    tp = np.sum((preds == 1) & (labels == 1))
    fp = np.sum((preds == 1) & (labels == 0))
    fn = np.sum((preds == 0) & (labels == 1))
    tn = np.sum((preds == 0) & (labels == 0))
    return tp, fp, fn, tn


def _pearson(x, y):
    dx, dy = x - x.mean(), y - y.mean()
    return np.sum(dx * dy) / math.sqrt(np.sum(dx * dx) * np.sum(dy * dy))


def _average_ranks(a):
    """1-based ranks, ties get the mean of the ranks they span."""
    sorted_a = np.sort(a)
    return np.array([np.flatnonzero(sorted_a == v).mean() + 1 for v in a])


def test_accuracy_f1_mrpc():
    tp, fp, fn, tn = _confusion(PREDS, LABELS)
    acc = (tp + tn) / len(LABELS)
    f1 = 2 * tp / (2 * tp + fp + fn)
    result = compute_metrics("mrpc", _logits(PREDS), LABELS)
    assert set(result) == {"acc", "f1", "acc_and_f1"}
    assert result["acc"] == pytest.approx(acc) == pytest.approx(0.7)
    assert result["f1"] == pytest.approx(f1) == pytest.approx(8 / 11)
    assert result["acc_and_f1"] == pytest.approx((acc + f1) / 2)
    assert compute_metrics("QQP", PREDS, LABELS) == pytest.approx(result)  # class ids work too


def test_matthews_cola():
    tp, fp, fn, tn = _confusion(PREDS, LABELS)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    result = compute_metrics("cola", _logits(PREDS), LABELS)
    assert result["mcc"] == pytest.approx(mcc) == pytest.approx(10 / math.sqrt(600))
    assert result["acc"] == pytest.approx(0.7)
    assert compute_metrics("cola", _logits(1 - LABELS), LABELS)["mcc"] == pytest.approx(-1.0)


def test_accuracy_multiclass():
    labels = np.array([0, 1, 2, 2, 1, 0, 2])
    preds = np.array([0, 2, 2, 2, 1, 1, 0])
    result = compute_metrics("mnli", _logits(preds, num_labels=3), labels)
    assert result == {"acc": pytest.approx(np.mean(preds == labels))}
    assert result["acc"] == pytest.approx(4 / 7)


def test_pearson_spearman_stsb():
    labels = np.array([0.0, 1.2, 2.5, 2.5, 3.1, 4.0, 4.8, 5.0])
    preds = np.array([0.4, 1.0, 2.0, 3.4, 3.4, 3.9, 4.1, 4.9])  # ties in both arrays
    result = compute_metrics("sts-b", preds[:, None], labels)  # [N, 1] model output
    pearson = _pearson(preds, labels)
    spearman = _pearson(_average_ranks(preds), _average_ranks(labels))
    assert set(result) == {"pearson", "spearmanr", "corr"}
    assert result["pearson"] == pytest.approx(pearson)
    assert result["spearmanr"] == pytest.approx(spearman)
    assert result["corr"] == pytest.approx((pearson + spearman) / 2)
    assert pearson != pytest.approx(spearman)  # the two keys are not swapped unnoticed


def test_spearman_known_value():
    # no ties: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 4 / 120
    result = compute_metrics("stsb", [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0])
    assert result["spearmanr"] == pytest.approx(0.8)


def test_main_metric_follows_bibert():
    assert main_metric("CoLA") == "mcc"
    assert main_metric("sts-b") == "corr"
    assert main_metric("mrpc") == "acc"
    assert main_metric("sst2") == "acc"
    for task in TASKS:
        if TASKS[task].is_regression:
            result = compute_metrics(task, [0.5, 1.5, 2.0], [0.0, 1.0, 1.0])
        else:
            result = compute_metrics(task, _logits(np.array([0, 1, 1])), [0, 1, 0])
        assert main_metric(task) in result


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics("sst-2", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="got shape"):
        compute_metrics("sst-2", np.zeros((2, 2, 2)), [0, 1])
    with pytest.raises(ValueError, match="unknown task"):
        compute_metrics("squad", [0], [0])
