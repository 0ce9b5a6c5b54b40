"""BiT and BinaryBERT recipes: their quantizers against numpy formulas (forward, pseudo-gradients,
first-batch initialisation), the recipes' structure, and each recipe trained end to end."""

import json
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddlenlp.transformers import BertForSequenceClassification

from conftest import GLUE_DIR, tiny_bert_config
from paddle_bibert import BinarizeConfig, binarize_model, load_binarized, save_binarized
from paddle_bibert.quant.layers import BiLinear
from paddle_bibert.quant.quantizers import get_quantizer
from paddle_bibert.surgery import RECIPES


def np_sign(x):
    return np.where(np.signbit(x), -1.0, 1.0)


def np_round_away(q):
    return np.sign(q) * np.floor(np.abs(q) + 0.5)


def _run(q, x, g):
    """Forward ``q`` on ``x`` in training mode, backward ``g``; returns y, dx."""
    xt = paddle.to_tensor(x, stop_gradient=False)
    q.train()
    y = q(xt)
    (y * paddle.to_tensor(g)).sum().backward()
    return y.numpy(), xt.grad.numpy()


@pytest.mark.parametrize("name,factor", [("elastic_sign", 2.0), ("elastic_sign_mean", 1.0)])
def test_elastic_sign_forward_gradients_and_first_batch_init(rng, name, factor):
    x = rng.standard_normal((6, 5)).astype("float32")
    g = rng.standard_normal((6, 5)).astype("float32")
    q = get_quantizer(name, channels=5)
    b = (rng.standard_normal(5) * 0.3).astype("float32")
    q.shift.set_value(b)
    y, dx = _run(q, x, g)
    xs = x.astype(np.float64) + b
    a = factor * np.abs(xs).mean()  # set by the first training batch, on the shifted input
    assert float(q.alpha) == pytest.approx(a, rel=1e-5) and float(q.initialized) == 1
    np.testing.assert_allclose(y, a * np_sign(xs), rtol=1e-5)
    inside = (np.abs(xs / a) <= 1).astype(np.float64)
    np.testing.assert_allclose(dx, g * inside, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(q.shift.grad.numpy(), (g * inside).sum(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q.alpha.grad.numpy(), [(np_sign(xs) * g).sum() / np.sqrt(x.size)], rtol=1e-4)
    # a second batch does not re-initialise the scale
    q.alpha.clear_gradient()
    _run(q, x * 10, g)
    assert float(q.alpha) == pytest.approx(a, rel=1e-5)


def test_elastic_unsigned_forward_gradients_and_init(rng):
    x = np.abs(rng.standard_normal((4, 7))).astype("float32") * 0.5
    x[0, :3] = [-0.2, 0.0, 3.0]
    g = rng.standard_normal((4, 7)).astype("float32")
    q = get_quantizer("elastic_unsigned")  # no channels: no shift (the attention map's form)
    assert q.shift is None
    y, dx = _run(q, x, g)
    a = 4 * np.abs(x.astype(np.float64)).mean()
    assert float(q.alpha) == pytest.approx(a, rel=1e-5)
    r = x / a
    np.testing.assert_allclose(y, a * (r > 0.5), rtol=1e-5)  # {0, a}; halves round down (torch)
    inside = ((r >= 0) & (r <= 1)).astype(np.float64)
    np.testing.assert_allclose(dx, g * inside, rtol=1e-5, atol=1e-7)
    ga = (((r > 1) + inside * ((r > 0.5) - r)) * g).sum() / np.sqrt(x.size)
    np.testing.assert_allclose(q.alpha.grad.numpy(), [ga], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,qn,qp", [("lsq2", 2, 1), ("lsq4", 8, 7), ("lsq2_unsigned", 0, 3),
                                        ("lsq4_unsigned", 0, 15)])
def test_lsq_forward_gradients_and_init(rng, name, qn, qp):
    x = (rng.standard_normal((5, 8)) * 1.5).astype("float32")
    x[0, :2] = [-40.0, 40.0]  # clipped below and above
    g = rng.standard_normal((5, 8)).astype("float32")
    q = get_quantizer(name)
    assert not q.binary
    y, dx = _run(q, x, g)
    s = 2 * np.abs(x.astype(np.float64)).mean() / np.sqrt(qp)
    assert float(q.step) == pytest.approx(s, rel=1e-5)
    r = x / s
    np.testing.assert_allclose(y, s * np.clip(np_round_away(r), -qn, qp), rtol=1e-5, atol=1e-6)
    assert len(np.unique(np.round(y / s).astype(int))) <= qn + qp + 1
    inside = ((r >= -qn) & (r <= qp)).astype(np.float64)
    np.testing.assert_allclose(dx, g * inside, rtol=1e-5, atol=1e-7)
    gs = (g * (inside * (np_round_away(r) - r) - qn * (r < -qn) + qp * (r > qp))).sum() / np.sqrt(x.size * qp)
    np.testing.assert_allclose(q.step.grad.numpy(), [gs], rtol=1e-4, atol=1e-6)


def test_tensor_mean_sign_one_scale_per_matrix(rng):
    w = rng.standard_normal((6, 4)).astype("float32") * 0.5
    w[0, 0] = 1.9  # outside the clip window after centring
    g = rng.standard_normal((6, 4)).astype("float32")
    wt = paddle.to_tensor(w, stop_gradient=False)
    y = get_quantizer("tensor_mean_sign")(wt)
    (y * paddle.to_tensor(g)).sum().backward()
    wc = w.astype(np.float64) - w.mean()
    np.testing.assert_allclose(y.numpy(), np.abs(w).mean() * np_sign(wc), rtol=1e-5)
    m = (np.abs(wc) <= 1) * g  # STE on the clipped centred weight, through the centring
    np.testing.assert_allclose(wt.grad.numpy(), m - m.mean(), rtol=1e-4, atol=1e-6)


def test_bit_recipe_structure_and_bad_bits():
    paddle.seed(0)
    m = BertForSequenceClassification(tiny_bert_config())
    _, report = binarize_model(m, BinarizeConfig.from_recipe("bit"))
    layer = m.bert.encoder.layers[0]
    assert layer.activation is F.relu
    att = layer.self_attn
    assert att.attention == "softmax" and att.attention_quantizer.name == "elastic_unsigned"
    assert {q.name for q in (att.q_quantizer, att.k_quantizer, att.v_quantizer)} == {"elastic_sign"}
    assert len({id(q) for q in (att.q_quantizer, att.k_quantizer, att.v_quantizer)}) == 3
    assert isinstance(layer.linear2, BiLinear) and layer.linear2.act_quantizer.name == "elastic_unsigned"
    assert layer.linear1.act_quantizer.name == "elastic_sign"
    assert layer.linear1.act_quantizer.shift.shape == [layer.linear1.in_features]
    assert layer.linear1.weight_quantizer.name == "tensor_mean_sign"
    assert (m.bibert_config.recipe, m.bibert_config.act_bits) == ("bit", 1)
    assert BinarizeConfig.from_recipe("binarybert", 4).act_quantizer == "lsq4"
    assert (BinarizeConfig.from_recipe("bit", 2).recipe, BinarizeConfig.from_recipe("bit", 2).act_bits) == ("bit", 2)
    with pytest.raises(ValueError, match="recipe 'bibert' has activation bits \\[1\\], not 2"):
        BinarizeConfig.from_recipe("bibert", 2)
    with pytest.raises(ValueError, match="unknown recipe 'bitt'"):
        BinarizeConfig.from_recipe("bitt")
    with pytest.raises(ValueError, match="takes no attention_quantizer"):
        BinarizeConfig(attention="bool", attention_quantizer="elastic_unsigned")


@pytest.mark.parametrize("recipe,bits", [("bit", 1), ("bit", 2), ("binarybert", 4)])
def test_learned_quantizer_state_saves_and_reloads(tmp_path, recipe, bits):
    paddle.seed(0)
    m = BertForSequenceClassification(tiny_bert_config())
    binarize_model(m, BinarizeConfig.from_recipe(recipe, bits))
    ids = paddle.to_tensor(np.random.default_rng(1).integers(1, 60, (3, 9)))
    m.train()
    m(ids)  # initialises every scale / step on this batch
    m.eval()
    want = m(ids).numpy()
    save_binarized(m, str(tmp_path))
    r = load_binarized(str(tmp_path))
    r.eval()
    states = [n for n, _ in r.state_dict().items() if "quantizer." in n]
    assert states and all(float(r.state_dict()[n].abs().sum()) > 0 for n in states if n.endswith("initialized"))
    np.testing.assert_allclose(r(ids).numpy(), want, rtol=1e-5, atol=1e-6)


def test_quantizer_parameters_train_at_their_own_rate_without_decay():
    from paddle_bibert.training.trainer import TrainArgs, Trainer

    paddle.seed(0)
    m = BertForSequenceClassification(tiny_bert_config())
    binarize_model(m, BinarizeConfig.from_recipe("bit"))

    class Loader(list):
        batch_sampler = None

    t = Trainer(m, None, Loader([0, 1]), None, TrainArgs(output_dir="unused", task_name="sst-2",
                                                          learning_rate=5e-4), lambda *a: None)
    qparams = [p for n, p in m.named_parameters() if "quantizer." in n]
    assert qparams and all(p.optimize_attr["learning_rate"] == pytest.approx(1e-4 / 5e-4) for p in qparams)
    others = [p for n, p in m.named_parameters() if "quantizer." not in n]
    assert all(p.optimize_attr["learning_rate"] == 1.0 for p in others)
    decay = [p for p in m.parameters() if t.optimizer._apply_decay_param_fun(p.name)]
    assert decay and not any(p.name == q.name for p in decay for q in qparams)


# ---- end to end on real-data slices -----------------------------------------------------

ALL_FLAGS = ["--pred_distill", "--query_distill", "--key_distill", "--value_distill",
             "--intermediate_distill"]


@pytest.fixture(scope="module")
def slice_and_teacher(tmp_path_factory):
    from paddlenlp.transformers import BertTokenizer

    from paddle_bibert.commands import run_glue
    from paddle_bibert.convert import packaged_minilm_path

    root = tmp_path_factory.mktemp("recipes")
    for task, n_train, n_dev in (("SST-2", 32, 16), ("MRPC", 32, 16)):
        os.makedirs(root / "glue" / task)
        for split, n in (("train", n_train), ("dev", n_dev)):
            with open(os.path.join(GLUE_DIR, task, f"{split}.tsv")) as f:
                lines = [next(f) for _ in range(n + 1)]
            (root / "glue" / task / f"{split}.tsv").write_text("".join(lines))
    init = str(root / "init")
    paddle.seed(0)
    BertForSequenceClassification(tiny_bert_config(vocab_size=30522, hidden_size=16, intermediate_size=32,
                                                   max_position_embeddings=128)).save_pretrained(init)
    BertTokenizer(os.path.join(packaged_minilm_path(), "vocab.txt")).save_pretrained(init)
    teachers = {}
    for task in ("sst-2", "mrpc"):
        out = root / f"teacher-{task}"
        run_glue(["--task_name", task, "--data_dir", str(root / "glue"), "--model_name_or_path", init,
                  "--max_seq_length", "32", "--batch_size", "8", "--max_steps", "4", "--save_steps", "4",
                  "--learning_rate", "1e-3", "--output_dir", str(out), "--no_progress"], log=lambda m: None)
        teachers[task] = str(out)
    return str(root / "glue"), teachers


def _distill_args(glue, teacher, out, task="sst-2", *extra):
    return ["--task_name", task, "--data_dir", glue, "--teacher_path", teacher, "--max_seq_length", "32",
            "--batch_size", "8", "--max_steps", "3", "--save_steps", "3", "--logging_steps", "1",
            "--learning_rate", "1e-3", "--output_dir", str(out), "--no_progress", *extra]


@pytest.mark.parametrize("recipe,bits,flags", [
    ("bibert_elastic", 1, ALL_FLAGS),
    ("bit", 1, ["--pred_distill", "--intermediate_distill", "--hidden_loss", "mse", "--gold_weight", "0"]),
    ("bit", 2, ["--pred_distill", "--intermediate_distill", "--hidden_loss", "mse"]),
    ("binarybert", 1, ["--pred_distill"]),
    ("binarybert", 2, ["--pred_distill"]),
    ("binarybert", 4, ["--pred_distill"]),
])
def test_each_recipe_trains_end_to_end(slice_and_teacher, tmp_path, recipe, bits, flags):
    from paddle_bibert.commands import task_distill
    from paddle_bibert.surgery import CONFIG_NAME

    glue, teachers = slice_and_teacher
    log = []
    s = task_distill(_distill_args(glue, teachers["sst-2"], tmp_path / "s", "sst-2", "--bi", "--recipe", recipe,
                                   "--act_bits", str(bits), *flags), log=log.append)
    assert s["finished"] and s["global_step"] == 3
    assert any(f"binarized the student ({recipe} W1A{bits}," in m for m in log)
    train = [m for m in log if m.startswith("[train]")]
    assert len(train) == 3 and all("hidden" in m for m in train) == ("--intermediate_distill" in flags)
    losses = [float(m.rsplit("loss ", 1)[1]) for m in train]
    assert all(np.isfinite(losses)) and all(x > 0 for x in losses)
    cfg = (tmp_path / "s" / "best_model" / CONFIG_NAME).read_text()
    assert f"recipe: {recipe}\nact_bits: {bits}\n" in cfg
    # the saved student is the trained one (its latent weights moved from the teacher's) and
    # scores on the dev slice what the run reported, recomputed here from its logits
    student = load_binarized(str(tmp_path / "s" / "best_model"))
    teacher = paddle.load(os.path.join(teachers["sst-2"], "best_model", "model_state.pdparams"))
    w = student.state_dict()
    assert any(not np.array_equal(w[k].numpy(), teacher[k].numpy()) for k in teacher if "weight" in k)
    from paddle_bibert.commands import DistillArgs, _data, parse_args, resolve_model_path
    from paddle_bibert.convert import load_tokenizer

    args = parse_args(DistillArgs, _distill_args(glue, teachers["sst-2"], tmp_path / "x"))
    dev = _data(args, load_tokenizer(resolve_model_path(teachers["sst-2"])))[2]
    with paddle.no_grad():
        hits = [(student(b["input_ids"], token_type_ids=b["token_type_ids"]).numpy().argmax(-1)
                 == b["labels"].numpy()) for b in dev]
    assert s["student_metric"] == pytest.approx(np.concatenate(hits).mean())


def test_hidden_mse_is_the_sum_of_per_layer_mse(slice_and_teacher):
    from paddle_bibert.distill.distiller import DistillConfig, Distiller

    rng = np.random.default_rng(0)
    s_rec = {"hidden": [paddle.to_tensor(rng.standard_normal((2, 3, 4)).astype("float32")) for _ in range(3)]}
    t_rec = {"hidden": [paddle.to_tensor(rng.standard_normal((2, 3, 4)).astype("float32")) for _ in range(3)]}

    d = Distiller.__new__(Distiller)
    d.config, d.k, d.global_batch, d.is_regression = (DistillConfig(intermediate_distill=True, hidden_loss="mse"),
                                                      1, False, False)
    total, terms = d.terms(None, s_rec, None, t_rec)
    want = sum(((a.numpy().astype(np.float64) - b.numpy()) ** 2).mean() for a, b in zip(s_rec["hidden"], t_rec["hidden"]))
    assert float(terms["hidden"]) == pytest.approx(want, rel=1e-5) and float(total) == pytest.approx(want, rel=1e-5)


def test_multistep_chain_w1a2_then_w1a1(slice_and_teacher, tmp_path):
    from paddle_bibert.commands import multistep_distill

    glue, teachers = slice_and_teacher
    out = tmp_path / "chain"
    log = []
    argv = _distill_args(glue, teachers["mrpc"], out, "mrpc", "--recipe", "bit", "--stages", "2,1",
                         "--pred_distill", "--intermediate_distill", "--hidden_loss", "mse")
    s = multistep_distill(argv, log=log.append)
    assert s["finished"] and [st["act_bits"] for st in s["stages"]] == [2, 1]
    st1, st2 = s["stages"]
    # the W1A2 stage's best model is the W1A1 stage's teacher: its metric is what stage 2 reports
    assert st2["teacher_metric"] == pytest.approx(st1["student_metric"])
    assert s["teacher_metric"] == st1["teacher_metric"] and s["student_metric"] == st2["student_metric"]
    assert "recipe: bit\nact_bits: 2\n" in (out / "stage1-w1a2" / "best_model" / "bibert_config.yaml").read_text()
    assert "recipe: bit\nact_bits: 1\n" in (out / "stage2-w1a1" / "best_model" / "bibert_config.yaml").read_text()
    assert json.loads((out / "summary.json").read_text())["stages"][1]["output_dir"].endswith("stage2-w1a1")
    # rerun with --resume: both stages are kept, nothing retrains
    log.clear()
    s2 = multistep_distill(argv + ["--resume"], log=log.append)
    assert s2["stages"] == s["stages"] and sum("finished earlier" in m for m in log) == 2
    assert not any(m.startswith("[train]") for m in log)
    with pytest.raises(ValueError, match="the last stage is 1"):
        multistep_distill(argv + ["--stages", "2,4"], log=log.append)


def test_multistep_eval_packed_scores_only_the_1bit_stage_packed(slice_and_teacher, tmp_path):
    from paddle_bibert.commands import multistep_distill

    glue, teachers = slice_and_teacher
    out = tmp_path / "chain"
    s = multistep_distill(_distill_args(glue, teachers["mrpc"], out, "mrpc", "--recipe", "bit", "--stages", "2,1",
                                        "--pred_distill", "--eval_packed"), log=lambda m: None)
    assert s["finished"]
    packed = [json.loads((out / d / "summary.json").read_text())["arguments"]["eval_packed"]
              for d in ("stage1-w1a2", "stage2-w1a1")]
    assert packed == [False, True]  # a W1A2 student has no packed form


def test_zero_shift_keeps_the_sign_of_gelu_underflow():
    """sign(gelu(h) + b) with b = 0 must stay sign(h) where float32 GELU returns -0.0 (spec
    section 1); plain float addition would make it -0.0 + 0.0 = +0.0 -> +1."""
    q = get_quantizer("elastic_sign", channels=4)
    q.eval()
    q.alpha.set_value(np.array([0.5], np.float32))
    h = paddle.to_tensor(np.array([[-8.0, -30.0, 2.0, 0.0]], np.float32))
    g = F.gelu(h)
    assert np.signbit(g.numpy()[0, :2]).all()
    np.testing.assert_array_equal(q(g).numpy(), [[-0.5, -0.5, 0.5, 0.5]])
