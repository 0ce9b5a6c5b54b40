"""binarize_model: what is replaced, the numbers it computes (vs numpy), training, save/reload."""

import numpy as np
import paddle
import pytest
from paddle import nn
from paddlenlp.transformers import BertForSequenceClassification
from scipy.special import erf

from paddle_bibert import (BiEmbedding, BiLinear, BiMultiHeadAttention, BinarizeConfig,
                           binarize_model, load_binarized, save_binarized)
from paddle_bibert.surgery import CONFIG_NAME

from conftest import tiny_bert_config


def np_sign(x):
    return np.where(np.signbit(x), -1.0, 1.0)


def np_binw(w, axis=0):  # [in, out] weight: per output channel
    return np.abs(w).mean(axis=axis, keepdims=True) * np_sign(w - w.mean(axis=axis, keepdims=True))


def np_ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def np_bibert_logits(sd, ids, cfg, eps_emb, eps_layer, attention="bool"):
    """The BiBERT equations (spec sections 1-2), eval mode, from the raw state dict."""
    w = {k: v.astype(np.float64) for k, v in sd.items()}
    b_, n = ids.shape
    heads, d = cfg.num_attention_heads, cfg.hidden_size
    dh = d // heads
    rows = w["bert.embeddings.word_embeddings.weight"][ids]
    x = np_binw(rows, axis=-1) + w["bert.embeddings.position_embeddings.weight"][np.arange(n)][None] \
        + w["bert.embeddings.token_type_embeddings.weight"][0]
    x = np_ln(x, w["bert.embeddings.layer_norm.weight"], w["bert.embeddings.layer_norm.bias"], eps_emb)
    mask = np.where(ids == cfg.pad_token_id, -1e4, 0.0)[:, None, None, :]

    def blin(name, h):
        return np_sign(h) @ np_binw(w[name + ".weight"]) + w[name + ".bias"]

    def split(t):
        return t.reshape(b_, n, heads, dh).transpose(0, 2, 1, 3)

    for i in range(cfg.num_hidden_layers):
        p = f"bert.encoder.layers.{i}."
        q, k, v = (split(blin(p + f"self_attn.{m}_proj", x)) for m in "qkv")
        s = np_sign(q) @ np_sign(k).transpose(0, 1, 3, 2) / np.sqrt(dh) + mask
        if attention == "bool":
            a = (s > 0).astype(np.float64)
        else:  # softmax_sign baseline: sign of a positive map is 1 on every unmasked key
            a = np.broadcast_to(mask > -1e2, s.shape).astype(np.float64)
        ctx = (a @ np_sign(v)).transpose(0, 2, 1, 3).reshape(b_, n, d)
        x = np_ln(x + blin(p + "self_attn.out_proj", ctx), w[p + "norm1.weight"], w[p + "norm1.bias"], eps_layer)
        h = blin(p + "linear1", x)
        gelu = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = np_ln(x + blin(p + "linear2", gelu), w[p + "norm2.weight"], w[p + "norm2.bias"], eps_layer)
    pooled = np.tanh(blin("bert.pooler.dense", x[:, 0]))
    return pooled @ w["classifier.weight"] + w["classifier.bias"]


def make_model(seed=0, **kw):
    """Tiny BERT with every parameter random (non-zero biases: with zero biases and even
    widths, binary dot products tie at exactly 0 and float summation order decides the sign)."""
    paddle.seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(**kw))
    rng = np.random.default_rng(seed)
    model.set_state_dict({k: (rng.standard_normal(v.shape) * (0.5 if v.ndim > 1 else 0.1)
                              + (1.0 if "norm" in k and k.endswith("weight") else 0.0)).astype("float32")
                          for k, v in model.state_dict().items()})
    model.eval()
    return model


IDS = np.array([[2, 17, 33, 9, 41, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 12], [3, 59, 0, 0, 0, 0, 0, 0]])


def test_replaced_modules_exactly_bibert_111():
    model, report = binarize_model(make_model())
    replaced = set(report.replaced_paths)
    expect = {"bert.embeddings.word_embeddings", "bert.pooler.dense"}
    for i in range(2):
        p = f"bert.encoder.layers.{i}."
        expect |= {p + "self_attn", p + "linear1", p + "linear2"}
        expect |= {p + f"self_attn.{m}" for m in ("q_proj", "k_proj", "v_proj", "out_proj")}
    assert replaced == expect
    assert {p for p, _ in report.kept} == {"bert.embeddings.position_embeddings",
                                           "bert.embeddings.token_type_embeddings", "classifier"}
    assert type(model.classifier) is nn.Linear
    assert type(model.bert.embeddings.position_embeddings) is nn.Embedding
    assert type(model.bert.embeddings.layer_norm) is nn.LayerNorm
    assert isinstance(model.bert.embeddings.word_embeddings, BiEmbedding)
    att = model.bert.encoder.layers[0].self_attn
    assert isinstance(att, BiMultiHeadAttention) and att.attention == "bool"
    assert all(isinstance(getattr(att, f"{m}_proj"), BiLinear) for m in "qkv")
    assert "bert.pooler.dense: Linear -> BiLinear" in str(report)


@pytest.mark.parametrize("attention", ["bool", "softmax_sign"])
def test_logits_match_independent_numpy_forward(attention):
    model = make_model(seed=1)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    binarize_model(model, {"attention": attention})
    # Binary activations make the forward sensitive to near-zero values; these inputs give a
    # margin far above float32 rounding (checked by the numpy forward itself being stable).
    logits = model(paddle.to_tensor(IDS)).numpy()
    eps_emb = model.bert.embeddings.layer_norm._epsilon
    eps_layer = model.bert.encoder.layers[0].norm1._epsilon
    ref = np_bibert_logits(sd, IDS, cfg, eps_emb, eps_layer, attention)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)
    # and binarization really changed the function
    fp = make_model(seed=1)(paddle.to_tensor(IDS)).numpy()
    assert np.abs(fp - logits).max() > 1e-3


def test_attention_masks_all_forms_and_padded_keys_get_zero(rng):
    att = BiMultiHeadAttention(16, 4, need_weights=True)
    x = paddle.to_tensor(rng.standard_normal((2, 5, 16)).astype("float32"))
    keep = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    forms = {
        "float": paddle.to_tensor(((1 - keep) * -1e4)[:, None, None, :].astype("float32")),
        "bool": paddle.to_tensor(keep[:, None, None, :].astype(bool)),
        "int": paddle.to_tensor(keep[:, None, None, :].astype("int64")),
    }
    outs = {k: att(x, attn_mask=m) for k, m in forms.items()}
    for k, (out, a) in outs.items():
        a = a.numpy()
        assert set(np.unique(a)) <= {0.0, 1.0}, k
        assert (a[0, :, :, 3:] == 0).all(), k
        np.testing.assert_array_equal(out.numpy(), outs["float"][0].numpy())
    # unmasked map is exactly the bool of the binarized scores
    q, k = (np_sign(getattr(att, f"{m}_proj")(x).numpy().reshape(2, 5, 4, 4).transpose(0, 2, 1, 3))
            for m in "qk")
    s = q @ k.transpose(0, 1, 3, 2) / 2.0
    np.testing.assert_array_equal(outs["float"][1].numpy()[1], (s[1] > 0).astype(np.float32))


def test_baseline_softmax_sign_map_is_all_ones_except_padding(rng):
    att = BiMultiHeadAttention(16, 4, attention="softmax_sign", need_weights=True)
    x = paddle.to_tensor(rng.standard_normal((1, 4, 16)).astype("float32"))
    _, a = att(x, attn_mask=paddle.to_tensor([[[[1, 1, 1, 0]]]]))
    np.testing.assert_array_equal(a.numpy()[0, :, :, :3], 1.0)
    np.testing.assert_array_equal(a.numpy()[0, :, :, 3], 0.0)


def test_training_steps_lower_loss_and_reach_every_latent_weight():
    model = make_model(seed=2)
    model.train()
    binarize_model(model)
    ids = paddle.to_tensor(IDS)
    labels = paddle.to_tensor([0, 1, 1])
    opt = paddle.optimizer.AdamW(learning_rate=5e-3, parameters=model.parameters())
    losses = []
    for step in range(15):
        loss = nn.functional.cross_entropy(model(ids), labels)
        loss.backward()
        if step == 0:
            no_grad = [n for n, p in model.named_parameters()
                       if p.grad is None or not np.abs(p.grad.numpy()).sum() > 0]
            # token_type row 1 is never used; everything else must receive a gradient
            assert no_grad == [], no_grad
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_save_and_reload_identical_logits(tmp_path):
    model = make_model(seed=3)
    binarize_model(model, {"ffn_in": False})
    save_binarized(model, str(tmp_path))
    assert (tmp_path / CONFIG_NAME).exists()
    again = load_binarized(str(tmp_path), BertForSequenceClassification)
    again.eval()
    ids = paddle.to_tensor(IDS)
    np.testing.assert_array_equal(model(ids).numpy(), again(ids).numpy())
    att = again.bert.encoder.layers[1].self_attn
    assert isinstance(att, BiMultiHeadAttention) and att.attention == "bool"
    assert type(again.bert.encoder.layers[1].linear1) is nn.Linear  # the switched-off part


def test_reload_with_learned_quantizer_state_is_quiet_and_complete(tmp_path, capfd):
    import logging

    from paddlenlp.utils.log import logger

    model = make_model(seed=4)
    binarize_model(model, BinarizeConfig.from_recipe("bit"))
    model.train()
    model(paddle.to_tensor(IDS))  # the first batch sets the elastic scales
    save_binarized(model, str(tmp_path))
    said = []  # PaddleNLP's logger writes to the stream it found at import, so listen to it
    listener = logging.Handler(logging.DEBUG)
    listener.emit = lambda record: said.append(record.getMessage())
    logger.logger.addHandler(listener)
    level = logger.logger.level
    logger.set_level("DEBUG")
    capfd.readouterr()
    try:
        again = load_binarized(str(tmp_path))
    finally:
        logger.logger.removeHandler(listener)
        logger.logger.setLevel(level)
    out = capfd.readouterr()
    assert (out.out + out.err).strip() == "" and said == []  # no "weights not used" lines
    want = model.state_dict()
    assert again.state_dict().keys() == want.keys() and any("quantizer.alpha" in k for k in want)
    for k, v in again.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), want[k].numpy(), err_msg=k)
    # a file that lacks weights of the model is refused, naming one
    state = paddle.load(str(tmp_path / "model_state.pdparams"))
    del state["classifier.weight"]
    paddle.save(state, str(tmp_path / "model_state.pdparams"))
    with pytest.raises(ValueError, match="lacks 1 of the model's weights .first: classifier.weight"):
        load_binarized(str(tmp_path))


def test_a_model_saved_under_the_former_names_reloads(tmp_path):
    """Folders written before the recipe was called ``recipe`` (config key ``method: bit_a2``
    or ``preset:``) and the quantizers ``act_quantizer`` / ``q_quantizer`` (``input_quantizer``
    / ``qkv_quantizer``) load to the same model."""
    import yaml

    model = make_model(seed=6)
    binarize_model(model, BinarizeConfig.from_recipe("bit", act_bits=2))
    model.train()
    model(paddle.to_tensor(IDS))  # the first batch sets the learned scales
    save_binarized(model, str(tmp_path))
    cfg = yaml.safe_load((tmp_path / CONFIG_NAME).read_text())
    assert (cfg.pop("recipe"), cfg.pop("act_bits")) == ("bit", 2)
    (tmp_path / CONFIG_NAME).write_text(yaml.safe_dump({"method": "bit_a2", **cfg}))
    weights = str(tmp_path / "model_state.pdparams")
    state = paddle.load(weights)
    old = {k.replace(".act_quantizer.", ".input_quantizer.").replace(".q_quantizer.", ".qkv_quantizer."): v
           for k, v in state.items()}
    assert any(".input_quantizer." in k for k in old) and any(".qkv_quantizer." in k for k in old)
    paddle.save(old, weights)
    again = load_binarized(str(tmp_path))
    assert again.bibert_config == model.bibert_config
    for k, v in again.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k].numpy(), err_msg=k)
    assert BinarizeConfig.from_dict({"preset": "bit", "act_bits": 2}) == model.bibert_config
    with pytest.raises(ValueError, match="act_bits needs a recipe"):
        BinarizeConfig.from_dict({"act_bits": 2})


def test_config_switches_and_yaml(tmp_path):
    cfg = BinarizeConfig(word_embeddings=False, pooler=False, attention="softmax")
    path = tmp_path / "b.yaml"
    cfg.to_yaml(str(path))
    model, report = binarize_model(make_model(), str(path))
    assert type(model.bert.embeddings.word_embeddings) is nn.Embedding
    assert type(model.bert.pooler.dense) is nn.Linear
    assert model.bert.encoder.layers[0].self_attn.attention == "softmax"
    assert BinarizeConfig.from_recipe("baseline").attention == "softmax_sign"


def test_filter_fn_chooses_modules():
    model, report = binarize_model(make_model(), filter_fn=lambda m, fqn: fqn == "classifier")
    assert report.replaced_paths == ["classifier"]
    assert isinstance(model.classifier, BiLinear)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="found nothing to binarize"):
        binarize_model(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="unknown binarization config key.*'atention'"):
        binarize_model(make_model(), {"atention": "bool"})
    with pytest.raises(ValueError, match="unknown quantizer 'sgn'"):
        binarize_model(make_model(), {"act_quantizer": "sgn"})
    with pytest.raises(ValueError, match="unknown mode"):
        BinarizeConfig(attention="softmax-sign")
    model, _ = binarize_model(make_model())
    with pytest.raises(RuntimeError, match="already binarized"):
        binarize_model(model)


def test_ernie_binarizes_and_runs():
    from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification

    paddle.seed(0)
    cfg = ErnieConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, num_labels=3)
    model = ErnieForSequenceClassification(cfg)
    model.eval()
    fp = model(paddle.to_tensor(IDS)).numpy()
    model, report = binarize_model(model)
    assert "ernie.encoder.layers.1.self_attn" in report.replaced_paths
    assert "ernie.embeddings.word_embeddings" in report.replaced_paths
    out = model(paddle.to_tensor(IDS)).numpy()
    assert out.shape == (3, 3) and np.isfinite(out).all() and np.abs(out - fp).max() > 1e-4


def _train_mode_attention(recipe, act_bits, rng, p=0.1, length=12, scale=1.0):
    """Layer 0's binarized attention of a tiny BERT with attention dropout p, in training mode,
    returning its map; plus what enters the attention-output quantizer and its input gradient."""
    paddle.seed(3)
    model = BertForSequenceClassification(tiny_bert_config(attention_probs_dropout_prob=p))
    binarize_model(model, BinarizeConfig.from_recipe(recipe, act_bits=act_bits))
    att = model.bert.encoder.layers[0].self_attn
    att.need_weights = True
    att.train()
    seen = {}

    def keep_input(layer, inputs):
        seen["context"] = inputs[0]
        inputs[0].register_hook(lambda g: seen.__setitem__("grad", g.numpy()))

    att.out_proj.act_quantizer.register_forward_pre_hook(keep_input)
    x = paddle.to_tensor(scale * rng.standard_normal((2, length, 32)).astype("float32"))
    out, a = att(x)
    out.sum().backward()
    return att, a.numpy(), seen["context"].numpy(), seen["grad"]


def test_attention_dropout_keeps_the_bool_map_binary_and_the_context_integer(rng):
    # Dropout acts on the scores before the bool function (as BiBERT's authors do), so in
    # training the map stays in {0, 1} and A @ sign(V) is an integer; dropout after the map
    # would make it {0, 1/(1-p)}. The attention-output input's STE passes gradient where the
    # context is -1 or +1 (|x| <= 1). No dropout exists at inference, so the packed runtime's
    # eval-mode equivalence (test_runtime.py) is untouched.
    _, a, context, grad = _train_mode_attention("bibert", 1, rng)
    assert set(np.unique(a)) == {0.0, 1.0}
    np.testing.assert_array_equal(context, np.round(context))
    unit = np.abs(context) == 1
    assert unit.sum() > 20
    assert (grad[unit] != 0).all()
    assert (grad[np.abs(context) > 1] == 0).all()


def test_attention_dropout_before_every_kind_of_map(rng):
    # sign of softmax: all ones without dropout; dropout removes entries but leaves {0, 1}
    _, a, context, _ = _train_mode_attention("baseline", 1, rng)
    assert set(np.unique(a)) == {0.0, 1.0} and 0.02 < (a == 0).mean() < 0.3
    np.testing.assert_array_equal(context, np.round(context))
    # BiT's {0, a} map of the softmax: dropout on the probabilities, so the map's non-zero
    # entries are the quantizer's scale itself, not scale / (1 - p)
    att, a, _, _ = _train_mode_attention("bit", 1, rng, scale=5.0)  # peaked: some probabilities reach a/2
    alpha = float(att.attention_quantizer.alpha)
    assert set(np.unique(a)) <= {0.0, np.float32(alpha)} and (a > 0).any()
    # an LSQ map (2 bits): multiples 0..3 of its step
    att, a, _, _ = _train_mode_attention("bit", 2, rng)
    steps = a / float(att.attention_quantizer.step)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-5)
    assert np.round(steps).max() <= 3 and len(np.unique(np.round(steps))) > 1
