"""Distillation losses against numpy formulas, and every flag switching exactly its term."""

import numpy as np
import paddle
import pytest
from paddlenlp.transformers import BertForSequenceClassification

from paddle_bibert import Taps, binarize_model
from paddle_bibert.distill.distiller import DistillConfig, Distiller
from paddle_bibert.distill import losses
from paddle_bibert.distill.losses import dmd, pred_loss, relation, relation_dmd, soft_cross_entropy

from test_surgery import IDS, make_model


def np_relation(x):
    return x @ x.transpose(0, 1, 3, 2) / np.sqrt(x.shape[-1])


def np_dmd(s, t):
    s = np.where(s <= -1e2, 0, s).astype(np.float64)
    t = np.where(t <= -1e2, 0, t).astype(np.float64)
    return np.sqrt(((s / np.sqrt((s ** 2).sum()) - t / np.sqrt((t ** 2).sum())) ** 2).sum())


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_relation_and_dmd_normalise_over_whole_tensor(rng):
    xs = rng.standard_normal((2, 3, 5, 4)).astype("float32")
    xt = (rng.standard_normal((2, 3, 5, 4)) * 3).astype("float32")
    np.testing.assert_allclose(relation(paddle.to_tensor(xs)).numpy(), np_relation(xs), rtol=1e-5, atol=1e-6)
    got = float(dmd(relation(paddle.to_tensor(xs)), relation(paddle.to_tensor(xt))))
    assert got == pytest.approx(np_dmd(np_relation(xs), np_relation(xt)), rel=1e-5)
    # not per-row or per-head normalisation: scaling one head changes the loss
    xt2 = xt.copy()
    xt2[:, 0] *= 5
    assert abs(float(dmd(relation(paddle.to_tensor(xs)), relation(paddle.to_tensor(xt2)))) - got) > 1e-3
    # scale invariance of a whole tensor: direction only
    assert float(dmd(paddle.to_tensor(xs), paddle.to_tensor(xs * 7))) == pytest.approx(0, abs=1e-5)
    masked = xs.copy()
    masked[0, 0, 0, 0] = -1e4
    assert float(dmd(paddle.to_tensor(masked), paddle.to_tensor(xt))) == pytest.approx(np_dmd(masked, xt), rel=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        dmd(paddle.to_tensor(xs), paddle.to_tensor(xs[:, :2]))


def _np_relation_dmd_grad(xs, xt, eps=1e-4):
    """Central finite differences of the numpy reference, in float64, w.r.t. the student."""
    xs = xs.astype(np.float64)
    g = np.zeros_like(xs)
    for i in np.ndindex(xs.shape):
        up, dn = xs.copy(), xs.copy()
        up[i] += eps
        dn[i] -= eps
        g[i] = (np_dmd(np_relation(up), np_relation(xt)) - np_dmd(np_relation(dn), np_relation(xt))) / (2 * eps)
    return g


@pytest.mark.parametrize("case", ["gram", "masked", "near"])
def test_relation_dmd_value_and_gradient_match_numpy(rng, monkeypatch, case):
    xs = rng.standard_normal((2, 3, 6, 4)).astype("float32")
    xt = (rng.standard_normal((2, 3, 6, 4)) * 2).astype("float32")
    if case == "masked":  # one pair of rows far apart: a relation entry below -100 is zeroed
        xs[0, 1, 2], xs[0, 1, 4] = 12.0, -12.0
    if case == "near":  # the student's relations all but equal the teacher's: too close for cos
        xt = xs * np.float32(1.5) + np.float32(1e-3) * rng.standard_normal(xs.shape).astype("float32")
    formed = []
    real_relation = losses.relation
    monkeypatch.setattr(losses, "relation", lambda x: formed.append(1) or real_relation(x))
    x = paddle.to_tensor(xs, stop_gradient=False)
    got = relation_dmd(x, paddle.to_tensor(xt))
    got.backward()
    want = np_dmd(np_relation(xs.astype(np.float64)), np_relation(xt.astype(np.float64)))
    assert float(got) == pytest.approx(want, rel=1e-4, abs=1e-6)
    # the Gram form is used exactly when it is safe; otherwise the relations are formed
    assert bool(formed) == (case != "gram")
    if case == "masked":
        assert np_relation(xs).min() <= -1e2
    tol = dict(rtol=2e-3, atol=2e-4) if case != "near" else dict(rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(x.grad.numpy(), _np_relation_dmd_grad(xs, xt.astype(np.float64)), **tol)


def test_global_batch_dmd_gives_the_one_process_value_and_gradient(rng, monkeypatch):
    """Data parallel: each rank's DMD term has the global-batch value, and the ranks' gradients
    averaged (as DataParallel does) equal the gradient over the global batch (numpy formula)."""
    from paddle_bibert import distributed

    s = rng.standard_normal((4, 2, 5, 5)).astype("float32")
    t = (rng.standard_normal((4, 2, 5, 5)) * 2).astype("float32")
    s[3, 1, 0, 2] = -1e4  # a masked entry on the second rank
    a = np.where(s <= -1e2, 0, s).astype(np.float64)
    b = np.where(t <= -1e2, 0, t).astype(np.float64)
    u, v = a / np.linalg.norm(a), b / np.linalg.norm(b)
    d = np.linalg.norm(u - v)
    grad = ((u - v) - u * np.sum(u * (u - v))) / (d * np.linalg.norm(a))
    grad[s <= -1e2] = 0

    # one process: the global-batch form equals the plain one
    x = paddle.to_tensor(s, stop_gradient=False)
    loss = dmd(x, paddle.to_tensor(t), global_batch=True)
    loss.backward()
    assert float(loss) == pytest.approx(d, rel=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-3, atol=1e-6)

    # two simulated ranks holding examples 0-1 and 2-3; all_reduce_sum returns the sum of both
    # ranks' [<a,a>, <a,b>, <b,b>]
    halves = (slice(0, 2), slice(2, 4))
    totals = np.sum([[np.sum(a[h] * a[h]), np.sum(a[h] * b[h]), np.sum(b[h] * b[h])] for h in halves], axis=0)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda z: paddle.to_tensor(totals.astype("float32")))
    for h in halves:
        x = paddle.to_tensor(s[h], stop_gradient=False)
        loss = dmd(x, paddle.to_tensor(t[h]), global_batch=True)
        loss.backward()
        assert float(loss) == pytest.approx(d, rel=1e-5)
        np.testing.assert_allclose(x.grad.numpy() / 2, grad[h], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_soft_cross_entropy_and_pred_loss(rng, temperature):
    s = rng.standard_normal((6, 3)).astype("float32")
    t = rng.standard_normal((6, 3)).astype("float32")
    y = np.array([0, 2, 1, 1, 0, 2])
    pt = np.exp(np_log_softmax(t / temperature))
    soft = (-pt * np_log_softmax(s / temperature)).mean()  # mean over every element
    got = float(soft_cross_entropy(paddle.to_tensor(s), paddle.to_tensor(t), temperature))
    assert got == pytest.approx(soft, rel=1e-5)
    gold = -np_log_softmax(s)[np.arange(6), y].mean()
    got = float(pred_loss(paddle.to_tensor(s), paddle.to_tensor(t), paddle.to_tensor(y),
                          temperature=temperature))
    assert got == pytest.approx(soft + 0.5 * gold, rel=1e-5)


def test_regression_pred_loss_is_mse(rng):
    s, t = rng.standard_normal((5, 1)).astype("float32"), rng.standard_normal((5,)).astype("float32")
    got = float(pred_loss(paddle.to_tensor(s), paddle.to_tensor(t), paddle.to_tensor(t), is_regression=True))
    assert got == pytest.approx(((s[:, 0] - t) ** 2).mean(), rel=1e-5)


FLAG_TERM = {"pred_distill": "pred", "query_distill": "q", "key_distill": "k",
             "value_distill": "v", "intermediate_distill": "hidden"}


def _pair(student_layers=2, teacher_layers=4):
    teacher = make_model(seed=7, num_hidden_layers=teacher_layers)
    student = make_model(seed=8, num_hidden_layers=student_layers)
    binarize_model(student)
    return student, teacher


def _batch():
    return {"input_ids": paddle.to_tensor(IDS), "token_type_ids": paddle.zeros_like(paddle.to_tensor(IDS)),
            "labels": paddle.to_tensor([0, 1, 1])}


@pytest.mark.parametrize("flag", list(FLAG_TERM))
def test_each_flag_switches_exactly_its_term_and_it_has_gradient(flag):
    student, teacher = _pair()
    total, terms = Distiller(student, teacher, DistillConfig(**{flag: True}))(_batch())
    assert set(terms) == {FLAG_TERM[flag]}
    assert float(total) == pytest.approx(float(terms[FLAG_TERM[flag]])) and float(total) > 0
    total.backward()
    g = student.bert.encoder.layers[0].linear1.weight.grad
    assert g is not None and np.abs(g.numpy()).sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_all_flags_sum_and_layer_mapping_matches_numpy():
    student, teacher = _pair()
    conf = DistillConfig(**{f: True for f in FLAG_TERM})
    batch = _batch()
    total, terms = Distiller(student, teacher, conf)(batch)
    assert set(terms) == set(FLAG_TERM.values())
    assert float(total) == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-5)
    # independent recomputation of the mapped terms from the two models' own taps
    with Taps(student) as ts, paddle.no_grad():
        s_logits = student(batch["input_ids"])
    with Taps(teacher) as tt, paddle.no_grad():
        t_logits = teacher(batch["input_ids"])
    k = 2  # 4 teacher layers / 2 student layers: student i <- teacher 2i+1; hidden j <- 2j
    for stream in "qkv":
        ref = sum(np_dmd(np_relation(ts[stream][i].numpy()), np_relation(tt[stream][i * k + k - 1].numpy()))
                  for i in range(2))
        assert float(terms[stream]) == pytest.approx(ref, rel=1e-4)
    ref = sum(np_dmd(ts["hidden"][j].numpy(), tt["hidden"][j * k].numpy()) for j in range(3))
    assert float(terms["hidden"]) == pytest.approx(ref, rel=1e-4)


def test_no_flag_and_bad_depth_rejected():
    student, teacher = _pair()
    with pytest.raises(ValueError, match="no distillation loss is enabled"):
        Distiller(student, teacher, DistillConfig())
    student3 = make_model(seed=9, num_hidden_layers=3)
    with pytest.raises(ValueError, match="multiple of the student"):
        Distiller(student3, teacher, DistillConfig(query_distill=True))
