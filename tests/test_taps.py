"""Taps read pre-binarization Q/K/V and hidden states from teacher and student alike."""

import numpy as np
import paddle
import pytest

from paddle_bibert import Taps, binarize_model

from test_surgery import IDS, make_model


def test_teacher_taps_match_hidden_states_and_projections():
    model = make_model(seed=4)
    ids = paddle.to_tensor(IDS)
    with Taps(model) as taps:
        out = model(ids, output_hidden_states=True, return_dict=True)
    hidden = out.hidden_states
    assert len(taps["hidden"]) == 3 and len(taps["q"]) == 2
    for mine, ref in zip(taps["hidden"], hidden):
        np.testing.assert_array_equal(mine.numpy(), ref.numpy())
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    x = hidden[0].numpy()
    for m in "qkv":
        w = sd[f"bert.encoder.layers.0.self_attn.{m}_proj.weight"]
        b = sd[f"bert.encoder.layers.0.self_attn.{m}_proj.bias"]
        ref = (x @ w + b).reshape(3, 8, 4, 8).transpose(0, 2, 1, 3)  # [B, H, L, d_head]
        np.testing.assert_allclose(taps[m][0].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_student_taps_are_pre_binarization_and_hooks_removed():
    model = make_model(seed=5)
    binarize_model(model)
    with Taps(model, streams=("q", "hidden")) as taps:
        model(paddle.to_tensor(IDS))
    assert set(taps.records) == {"q", "hidden"}
    q = taps["q"][1].numpy()
    assert len(np.unique(q)) > 10  # real-valued, not the {-1, +1} that the attention uses
    x = np.where(np.signbit(taps["hidden"][1].numpy()), -1.0, 1.0)
    w = model.bert.encoder.layers[1].self_attn.q_proj.weight.numpy()
    wb = np.abs(w).mean(0) * np.where(np.signbit(w - w.mean(0)), -1.0, 1.0)
    ref = (x @ wb + model.bert.encoder.layers[1].self_attn.q_proj.bias.numpy())
    np.testing.assert_allclose(q, ref.reshape(3, 8, 4, 8).transpose(0, 2, 1, 3), rtol=1e-4, atol=1e-4)
    assert not model.bert.encoder.layers[1].self_attn.q_proj._forward_post_hooks


def test_taps_reject_model_without_encoder():
    with pytest.raises(ValueError, match="no TransformerEncoder"):
        Taps(paddle.nn.Linear(2, 2))
