"""Dev evaluation on the packed runtime (``--eval_packed``) and ``--evaluation_strategy``."""

import json

import numpy as np
import paddle
import pytest

from paddle_bibert import load_binarized
from paddle_bibert.commands import run_glue, task_distill
from paddle_bibert.training.packed_eval import evaluate_packed
from paddle_bibert.training.trainer import evaluate

from test_commands import ALL_FLAGS, Log, common, glue_slice, tiny_model_dir  # noqa: F401
from test_export import padded_ids, trained_1bit_model


def batches(num_labels, seed=0, n=6, b=8, length=23):
    """Padded random batches with labels, as the dev loader yields them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = padded_ids(rng, b, length)
        labels = rng.random(b) * 5 if num_labels == 1 else rng.integers(0, num_labels, b)
        out.append({"input_ids": paddle.to_tensor(ids), "token_type_ids": paddle.zeros_like(paddle.to_tensor(ids)),
                    "labels": paddle.to_tensor(labels.astype("float32" if num_labels == 1 else "int64"))})
    return out


@pytest.mark.parametrize("recipe", ["bibert", "bit", {"recipe": "bit", "act_quantizer": "elastic_sign_mean"}],
                         ids=str)
def test_packed_evaluation_scores_what_paddle_scores(recipe):
    """A regression head makes the metric a continuous function of every logit: the packed
    runtime's Pearson/Spearman must be Paddle's, and the model must be left as it was."""
    model = trained_1bit_model(recipe, num_labels=1)
    model.train()
    dev = batches(1)
    packed = evaluate_packed(model, dev, "sts-b")
    assert model.training  # evaluation does not switch a training model to eval mode for good
    paddle_metrics = evaluate(model, dev, "sts-b")
    model.eval()
    scores = np.concatenate([model(d["input_ids"]).numpy() for d in dev])
    assert scores.std() > 0.01  # not a degenerate, constant prediction
    for k in ("pearson", "spearmanr"):
        assert packed[k] == pytest.approx(paddle_metrics[k], abs=1e-4), k


def test_packed_evaluation_follows_the_weights_it_is_given():
    """Each evaluation packs the model's current weights (the weight average's, during a run)."""
    model = trained_1bit_model("bit", num_labels=1)
    dev = batches(1, seed=1)
    before = evaluate_packed(model, dev, "sts-b")
    with paddle.no_grad():
        for p in model.bert.encoder.layers[0].linear1.parameters():
            p.set_value(-p)
    after = evaluate_packed(model, dev, "sts-b")
    assert after["pearson"] != pytest.approx(before["pearson"], abs=1e-4)
    assert after["pearson"] == pytest.approx(evaluate(model, dev, "sts-b")["pearson"], abs=1e-4)


def _student(glue_slice, tiny_model_dir, tmp_path, task, *flags):  # noqa: F811
    teacher = tmp_path / "t"
    if not teacher.exists():
        run_glue(common(glue_slice, task, teacher, "--model_name_or_path", tiny_model_dir, "--max_steps", "3"),
                 log=Log())
    return common(glue_slice, task, tmp_path / "s", "--teacher_path", str(teacher), "--max_steps", "6",
                  "--learning_rate", "1e-3", "--bi", *flags)


def test_eval_packed_keeps_the_packed_metric_of_the_best_model(glue_slice, tiny_model_dir, tmp_path,  # noqa: F811
                                                              monkeypatch):
    from paddle_bibert.training import packed_eval

    calls = []
    monkeypatch.setattr(packed_eval, "evaluate_packed", lambda *a: calls.append(1) or evaluate_packed(*a))
    log = Log()
    s = task_distill(_student(glue_slice, tiny_model_dir, tmp_path, "sst-2", "--recipe", "bit",
                              "--pred_distill", "--intermediate_distill", "--hidden_loss", "mse",
                              "--ema_decay", "0.5", "--eval_packed"), log=log)
    hist = json.loads((tmp_path / "s" / "checkpoint-6" / "trainer_state.json").read_text())["history"]
    assert [e["step"] for e in hist] == [3, 6] and len(calls) == 2  # the runtime scored both
    assert s["best_metric"] == max(e["acc"] for e in hist)
    # the kept model (the weight average at the best evaluation), packed again, scores the same
    from paddle_bibert.commands import DistillArgs, _data, parse_args
    from paddle_bibert.convert import load_tokenizer

    best = load_binarized(str(tmp_path / "s" / "best_model"))
    args = parse_args(DistillArgs, _student(glue_slice, tiny_model_dir, tmp_path, "sst-2"))
    dev = _data(args, load_tokenizer(tiny_model_dir))[2]
    assert evaluate_packed(best, dev, "sst-2")["acc"] == s["best_metric"]
    # Paddle's float forward of the same model: one sentence of 24 may fall the other way
    assert abs(evaluate(best, dev, "sst-2")["acc"] - s["best_metric"]) <= 1 / 24 + 1e-9


def test_eval_packed_needs_a_1bit_student(glue_slice, tiny_model_dir, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="pass --bi too"):
        task_distill([a for a in _student(glue_slice, tiny_model_dir, tmp_path, "sst-2", "--pred_distill",
                                          "--eval_packed") if a != "--bi"], log=Log())
    with pytest.raises(ValueError, match=r"not 1-bit.*drop --eval_packed"):
        task_distill(_student(glue_slice, tiny_model_dir, tmp_path, "sst-2", "--recipe", "bit", "--act_bits", "2",
                              "--pred_distill", "--eval_packed"), log=Log())
    assert not (tmp_path / "s").exists()  # refused before any training


def test_evaluation_strategy_epoch_evaluates_at_epoch_ends_and_checkpoints_as_before(glue_slice, tiny_model_dir,  # noqa: F811
                                                                                    tmp_path):
    log = Log()
    s = run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                        "--num_train_epochs", "2.5", "--save_steps", "4", "--evaluation_strategy", "epoch"), log=log)
    assert s["total_steps"] == 15  # 48 examples / 8 per batch = 6 steps an epoch
    assert [m.split(":")[0] for m in log if m.startswith("[eval]")] == \
        ["[eval] step 6", "[eval] step 12", "[eval] step 15"]  # each epoch's end, and the last step
    state = json.loads((tmp_path / "t" / "checkpoint-15" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["history"]] == [6, 12, 15]
    part = run_glue(common(glue_slice, "sst-2", tmp_path / "u", "--model_name_or_path", tiny_model_dir,
                           "--num_train_epochs", "2.5", "--save_steps", "4", "--evaluation_strategy", "epoch",
                           "--stop_at_step", "9"), log=Log())
    assert not part["finished"] and (tmp_path / "u" / "checkpoint-8").is_dir()  # checkpoints every 4 steps
    with pytest.raises(ValueError, match="--evaluation_strategy must be one of steps, epoch"):
        run_glue(common(glue_slice, "sst-2", tmp_path / "v", "--model_name_or_path", tiny_model_dir,
                        "--evaluation_strategy", "epochs"), log=Log())
