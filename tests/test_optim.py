"""BertAdam (--optimizer bertadam) against a numpy transcription of its update rule."""

import numpy as np
import paddle
import pytest

from paddle_bibert.training.optim import BertAdam


def numpy_bertadam(p, grads, lrs, decay, lr_mult=1.0, b1=0.9, b2=0.999, eps=1e-6, wd=0.01, max_norm=1.0):
    p, m, v = p.astype(np.float64), np.zeros(p.shape), np.zeros(p.shape)
    for g, lr in zip(grads, lrs):
        g = g.astype(np.float64)
        coef = max_norm / (np.sqrt((g * g).sum()) + 1e-6)  # each tensor clipped on its own
        g = g * min(coef, 1.0)
        m = b1 * m + (1 - b1) * g  # no bias correction
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * lr_mult * (m / (np.sqrt(v) + eps) + (wd * p if decay else 0))
    return p


def test_bertadam_matches_numpy_recurrence_with_per_tensor_clipping(rng):
    shapes = {"w": (3, 4), "bias": (4,), "scale": (1,)}
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    # w's gradients have norm ~10 (clipped to 1), bias's ~0.1 (not clipped), so a global clip
    # would scale bias's too
    grads = {k: [(10 if k == "w" else 0.05) * rng.standard_normal(s).astype(np.float32) for _ in range(4)]
             for k, s in shapes.items()}
    params = {k: paddle.create_parameter(list(s), "float32", default_initializer=paddle.nn.initializer.Assign(init[k]))
              for k, s in shapes.items()}
    params["scale"].optimize_attr["learning_rate"] = 0.5  # a quantizer's own rate
    lrs = [0.0, 0.01, 0.02, 0.015]  # warm-up starts at 0, as the authors' schedule does
    sched = paddle.optimizer.lr.LambdaDecay(1.0, lambda step: (lrs + [0.0])[step])
    decayed = {params["w"].name}
    opt = BertAdam(sched, list(params.values()), weight_decay=0.01, apply_decay_param_fun=lambda n: n in decayed)
    for t in range(4):
        loss = sum((params[k] * paddle.to_tensor(grads[k][t])).sum() for k in params)
        loss.backward()
        opt.step()
        opt.clear_grad()
        sched.step()
    for k in params:
        expect = numpy_bertadam(init[k], grads[k], lrs, decay=k == "w", lr_mult=0.5 if k == "scale" else 1.0)
        np.testing.assert_allclose(params[k].numpy(), expect, rtol=2e-6, atol=1e-7, err_msg=k)
    assert np.linalg.norm(grads["w"][0]) > 5 and np.linalg.norm(grads["bias"][0]) < 1


def test_bertadam_state_round_trip_and_foreign_state_refused(rng):
    p = paddle.create_parameter([2, 2], "float32")
    opt = BertAdam(0.1, [p])
    (p * 3.0).sum().backward()
    opt.step()
    state = opt.state_dict()
    assert sorted(state) == sorted([p.name + "_bertadam_m", p.name + "_bertadam_v"])
    other = BertAdam(0.1, [p])
    other.set_state_dict({k: v.numpy() for k, v in state.items()})
    for a, b in zip(opt._moments[p.name], other._moments[p.name]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="not BertAdam's"):
        other.set_state_dict({p.name + "_moment1_0": state[p.name + "_bertadam_m"]})


def test_weight_decay_skips_biases_layernorms_and_learned_quantizers():
    from paddlenlp.transformers import BertForSequenceClassification

    from conftest import tiny_bert_config
    from paddle_bibert import BinarizeConfig, binarize_model
    from paddle_bibert.training.trainer import _decay_params

    model = BertForSequenceClassification(tiny_bert_config())
    binarize_model(model, BinarizeConfig.from_recipe("bit"))
    decayed = set(_decay_params(model))
    by_path = {n: p.name in decayed for n, p in model.named_parameters()}
    assert by_path["bert.encoder.layers.0.linear1.weight"] and by_path["classifier.weight"]
    assert by_path["bert.embeddings.word_embeddings.weight"]
    assert not by_path["bert.encoder.layers.0.linear1.bias"] and not by_path["bert.encoder.layers.0.norm1.weight"]
    quantizer = [n for n in by_path if "_quantizer." in n]
    assert quantizer and not any(by_path[n] for n in quantizer)
