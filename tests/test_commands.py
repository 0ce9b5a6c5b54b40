"""End to end: run_glue.py and task_distill.py on a tiny random BERT over real-data slices."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import GLUE_DIR, REPO, tiny_bert_config
from paddle_bibert.commands import run_glue, task_distill


ALL_FLAGS = ["--pred_distill", "--query_distill", "--key_distill", "--value_distill",
             "--intermediate_distill"]


@pytest.fixture(scope="module")
def glue_slice(tmp_path_factory):
    """First rows of the real train/dev files of three tasks, in GLUE layout."""
    root = tmp_path_factory.mktemp("glue")
    for task, n_train, n_dev in (("SST-2", 48, 24), ("MRPC", 40, 20), ("STS-B", 40, 20)):
        os.makedirs(root / task)
        for split, n in (("train", n_train), ("dev", n_dev)):
            with open(os.path.join(GLUE_DIR, task, f"{split}.tsv")) as f:
                lines = [next(f) for _ in range(n + 1)]
            (root / task / f"{split}.tsv").write_text("".join(lines))
    return str(root)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from paddlenlp.transformers import BertForSequenceClassification, BertTokenizer

    from paddle_bibert.convert import packaged_minilm_path

    d = str(tmp_path_factory.mktemp("tiny"))
    paddle.seed(0)
    model = BertForSequenceClassification(tiny_bert_config(
        vocab_size=30522, hidden_size=16, intermediate_size=32, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=128))
    model.save_pretrained(d)
    BertTokenizer(os.path.join(packaged_minilm_path(), "vocab.txt")).save_pretrained(d)
    return d


def common(data_dir, task, out, *extra):
    return ["--task_name", task, "--data_dir", data_dir, "--max_seq_length", "32", "--batch_size", "8",
            "--logging_steps", "2", "--save_steps", "3", "--output_dir", str(out), "--no_progress",
            "--seed", "3", *extra]


class Log(list):
    def __call__(self, msg):
        self.append(msg)


@pytest.mark.parametrize("task,metric", [("sst-2", "acc"), ("mrpc", "acc"), ("sts-b", "corr")])
def test_teacher_then_binarized_student(glue_slice, tiny_model_dir, tmp_path, task, metric):
    teacher_out = tmp_path / "teacher"
    log = Log()
    summary = run_glue(common(glue_slice, task, teacher_out, "--model_name_or_path", tiny_model_dir,
                              "--num_train_epochs", "1", "--learning_rate", "1e-3"), log=log)
    assert summary["metric"] == metric and summary["finished"]
    assert os.path.isfile(teacher_out / "best_model" / "model_state.pdparams")
    assert json.loads((teacher_out / "summary.json").read_text())["best_step"] == summary["best_step"]
    assert any(m.startswith("[eval] step 3") for m in log)

    log = Log()
    s = task_distill(common(glue_slice, task, tmp_path / "student", "--teacher_path", str(teacher_out),
                            "--max_steps", "4", "--learning_rate", "1e-3", "--bi", *ALL_FLAGS), log=log)
    assert s["bi"] and s["teacher_metric"] == pytest.approx(summary["best_metric"])
    assert s["retention"] == pytest.approx(s["student_metric"] / s["teacher_metric"])
    train_lines = [m for m in log if m.startswith("[train]")]
    for term in ("pred", "q ", "k ", "v ", "hidden", "loss"):
        assert all(f" {term}" in m or f": {term}" in m for m in train_lines), (term, train_lines)
    best = tmp_path / "student" / "best_model"
    assert (best / "bibert_config.yaml").exists()
    from paddle_bibert import load_binarized
    from paddlenlp.transformers import BertForSequenceClassification
    reloaded = load_binarized(str(best), BertForSequenceClassification)
    assert type(reloaded.bert.encoder.layers[0].self_attn).__name__ == "BiMultiHeadAttention"


def test_flag_off_contributes_nothing(glue_slice, tiny_model_dir, tmp_path):
    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                    "--max_steps", "3"), log=Log())
    log = Log()
    task_distill(common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", str(tmp_path / "t"),
                        "--max_steps", "2", "--pred_distill", "--key_distill"), log=log)
    lines = [m for m in log if m.startswith("[train]")]
    assert lines and all(" k " in m and "pred" in m and " q " not in m and "hidden" not in m for m in lines)


@pytest.mark.parametrize("dropout", [None, 0.0, 0.3])
def test_student_dropout_sets_every_dropout_of_the_student(glue_slice, tiny_model_dir, tmp_path, dropout):
    """The tiny checkpoint has 0.1; the student trains (and is saved) with what the flag says, in train
    mode: with 0 its training-mode logits are its evaluation-mode ones, otherwise they differ."""
    from paddle_bibert import load_binarized

    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                    "--max_steps", "1"), log=Log())
    extra = [] if dropout is None else ["--student_dropout", str(dropout)]
    task_distill(common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", str(tmp_path / "t"),
                        "--max_steps", "1", "--bi", "--recipe", "bit", "--pred_distill", *extra), log=Log())
    student = load_binarized(str(tmp_path / "s" / "best_model"))
    expected = 0.1 if dropout is None else dropout
    cfg = student.config
    assert (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob) == (expected, expected)
    layers = dict(student.named_sublayers())  # (each encoder layer's own .dropout is BERT's act_dropout, 0)
    probs = {round(m.p, 6) for n, m in layers.items() if isinstance(m, paddle.nn.Dropout) and not
             (".layers." in n and n.endswith(".dropout"))}
    probs |= {round(m.dropout, 6) for m in layers.values() if type(m).__name__.endswith("MultiHeadAttention")}
    assert probs == {expected}
    ids = paddle.to_tensor(np.random.default_rng(0).integers(1000, 2000, (4, 12)))
    student.eval()
    plain = student(ids).numpy()
    student.train()
    paddle.seed(1)
    dropped = student(ids).numpy()
    if expected == 0:
        np.testing.assert_allclose(dropped, plain, rtol=1e-5, atol=1e-6)
    else:
        assert np.abs(dropped - plain).max() > 1e-4


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_word_embeddings_keeps_the_teachers_rows_and_trains_the_rest(glue_slice, tiny_model_dir,
                                                                          tmp_path, freeze):
    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                    "--max_steps", "1"), log=Log())
    extra = ["--freeze_word_embeddings"] if freeze else []
    task_distill(common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", str(tmp_path / "t"),
                        "--max_steps", "3", "--learning_rate", "1e-2", "--bi", "--recipe", "bit",
                        "--pred_distill", "--ema_decay", "0.5", *extra), log=Log())
    teacher = paddle.load(str(tmp_path / "t" / "best_model" / "model_state.pdparams"))
    student = paddle.load(str(tmp_path / "s" / "checkpoint-3" / "model.pdparams"))
    word = "bert.embeddings.word_embeddings.weight"
    same = np.array_equal(student[word].numpy(), teacher[word].numpy())
    assert same == freeze
    for name in ("bert.encoder.layers.0.linear1.weight", "bert.embeddings.position_embeddings.weight"):
        assert not np.array_equal(student[name].numpy(), teacher[name].numpy()), name


def _teacher_then_student_args(glue_slice, tiny_model_dir, tmp_path, teacher_steps, *length):
    """Fine-tune a tiny SST-2 teacher in tmp_path/t; return ``out -> argv`` of a binarized student
    distilled from it with all five losses."""
    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                    "--max_steps", str(teacher_steps)), log=Log())
    return lambda out: common(glue_slice, "sst-2", out, "--teacher_path", str(tmp_path / "t"), *length,
                              "--learning_rate", "5e-4", "--bi", *ALL_FLAGS)


@pytest.mark.parametrize("flags", [["--optimizer", "adamw"], ["--optimizer", "bertadam"], ["--group_by_length"],
                                   ["--freeze_word_embeddings", "--ema_decay", "0.9"],
                                   ["--recipe", "bit", "--act_ramp", "0.6"]])  # stopped mid-ramp
def test_resume_matches_uninterrupted_run(glue_slice, tiny_model_dir, tmp_path, flags):
    args = _teacher_then_student_args(glue_slice, tiny_model_dir, tmp_path, 3, "--num_train_epochs", "2", *flags)
    full = task_distill(args(tmp_path / "a"), log=Log())
    assert full["total_steps"] == 12  # 48 examples / 8 per batch * 2 epochs, crossing an epoch
    part = task_distill(args(tmp_path / "b") + ["--stop_at_step", "7"], log=Log())
    assert not part["finished"]
    assert os.listdir(tmp_path / "b").count("checkpoint-6") == 1  # last checkpoint before the stop
    resumed = task_distill(args(tmp_path / "b") + ["--resume"], log=Log())
    assert resumed["finished"] and resumed["best_metric"] == full["best_metric"]
    a = paddle.load(str(tmp_path / "a" / "checkpoint-12" / "model.pdparams"))
    b = paddle.load(str(tmp_path / "b" / "checkpoint-12" / "model.pdparams"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
    # and training really moved the weights
    w0 = paddle.load(os.path.join(str(tmp_path / "t"), "best_model", "model_state.pdparams"))
    assert np.abs(a["bert.encoder.layers.0.linear1.weight"].numpy()
                  - w0["bert.encoder.layers.0.linear1.weight"].numpy()).max() > 1e-4


def test_existing_run_needs_resume(glue_slice, tiny_model_dir, tmp_path):
    argv = common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir, "--max_steps", "3")
    run_glue(argv, log=Log())
    with pytest.raises(FileExistsError, match="--resume"):
        run_glue(argv, log=Log())


def test_bad_inputs_name_the_fix(glue_slice, tiny_model_dir, tmp_path, capsys):
    base = lambda task, *x: common(glue_slice, task, tmp_path / "o", "--model_name_or_path",
                                   tiny_model_dir, "--max_steps", "1", *x)
    with pytest.raises(ValueError, match="unknown task.*sst-2"):
        run_glue(base("sst-3"), log=Log())
    with pytest.raises(FileNotFoundError, match="^" + re.escape(
            f"cola train data not found: no file {os.path.join(glue_slice, 'CoLA', 'train.tsv')} (nor "
            f"{os.path.join(glue_slice, 'train.tsv')}). Expected the standard GLUE layout "
            "<data_dir>/CoLA/train.tsv (as unpacked from the GLUE download); pass the GLUE root or the "
            "CoLA folder itself as data_dir.") + "$"):
        run_glue(base("cola"), log=Log())  # the slice has no CoLA folder
    bad = tmp_path / "bad" / "SST-2"
    os.makedirs(bad)
    (bad / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\tmaybe\n")
    (bad / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    with pytest.raises(ValueError, match=r"train\.tsv.*line 3"):
        run_glue(common(str(tmp_path / "bad"), "sst-2", tmp_path / "o2", "--model_name_or_path",
                        tiny_model_dir), log=Log())
    with pytest.raises(FileNotFoundError, match=r"^Model folder './does/not/exist' does not exist \(hub ids with "
                                                r"'/' are not downloaded here: download the model to a local "
                                                r"folder first\)\.$"):
        run_glue(base("sst-2") + ["--model_name_or_path", "./does/not/exist"], log=Log())
    with pytest.raises(SystemExit, match="exceeds the model's 128 positions"):
        run_glue(base("sst-2", "--max_seq_length", "512"), log=Log())
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        run_glue(base("sst-2", "--learning_rate", "-1"), log=Log())
    # teacher fine-tuned for another task (regression, 1 label) cannot teach a 2-class student
    run_glue(common(glue_slice, "sts-b", tmp_path / "stsb", "--model_name_or_path", tiny_model_dir,
                    "--max_steps", "1"), log=Log())
    with pytest.raises(SystemExit, match="1 labels but task sst-2 has 2"):
        task_distill(common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", str(tmp_path / "stsb"),
                            "--pred_distill"), log=Log())
    with pytest.raises(ValueError, match=r"--student_dropout must be in \[0, 1\), got 1.5"):
        task_distill(common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", str(tmp_path / "stsb"),
                            "--pred_distill", "--student_dropout", "1.5"), log=Log())
    with pytest.raises(SystemExit, match="no such file or folder"):
        task_distill(common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", "./nowhere/teacher",
                            "--pred_distill"), log=Log())
    for flags in (["--recipe", "bit"], ["--act_bits", "2"], ["--binarize", '{"act_quantizer": "elastic_sign"}']):
        with pytest.raises(ValueError, match=r"^--recipe, --act_bits and --binarize choose how --bi binarizes "
                                             r"the student: pass --bi too \(without it the student trains in "
                                             r"full precision\)$"):
            task_distill(common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", "./nowhere/teacher",
                                "--pred_distill", *flags), log=Log())
    # no loss flag: refused before the teacher is looked for (that folder does not exist either)
    with pytest.raises(ValueError, match="^no distillation loss is enabled: pass at least one of --pred_distill, "
                                         "--query_distill, --key_distill, --value_distill, --intermediate_distill$"):
        task_distill(common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", "./nowhere/teacher"), log=Log())
    with pytest.raises(SystemExit):
        task_distill(["--task_name", "sst-2", "--output_dir", str(tmp_path / "x"), "--pred_distil"])
    assert "unrecognized arguments: --pred_distil" in capsys.readouterr().err


def test_config_file_and_flag_precedence(tmp_path, capsys):
    from paddle_bibert.commands import DistillArgs, parse_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text("task_name: sst-2\nmax_seq_length: 64\nstudent:\n  learning_rate: 1e-4\n  "
                   "pred_distill: true\n  bi: true\nteacher:\n  learning_rate: 2e-5\n")
    a = parse_args(DistillArgs, ["--config", str(cfg), "--output_dir", "o", "--max_seq_length", "32",
                                 "--bi=false"], section="student")
    assert (a.learning_rate, a.max_seq_length, a.pred_distill, a.bi) == (1e-4, 32, True, False)
    # a binarize mapping in the file, or JSON on the command line, over the recipe's fields
    (tmp_path / "b.yaml").write_text("task_name: sst-2\nstudent:\n  binarize: {attention: softmax_sign}\n")
    a = parse_args(DistillArgs, ["--config", str(tmp_path / "b.yaml"), "--output_dir", "o"], section="student")
    assert a.binarize == {"attention": "softmax_sign"}
    a = parse_args(DistillArgs, ["--config", str(tmp_path / "b.yaml"), "--output_dir", "o",
                                 "--binarize", '{"attention": "softmax"}'], section="student")
    assert a.binarize == {"attention": "softmax"}
    (tmp_path / "bad.yaml").write_text("task_name: sst-2\nlerning_rate: 1\n")
    with pytest.raises(SystemExit):
        parse_args(DistillArgs, ["--config", str(tmp_path / "bad.yaml"), "--output_dir", "o"], "student")
    assert (f"error: --config {tmp_path / 'bad.yaml'}: unknown setting 'lerning_rate' for this command; "
            "valid: ['act_bits', ") in capsys.readouterr().err


def test_example_scripts_run_as_commands(glue_slice, tiny_model_dir, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, os.path.join(REPO, "examples", "run_glue.py"),
                        *common(glue_slice, "sst-2", out, "--model_name_or_path", tiny_model_dir,
                                "--max_steps", "2")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[summary]" in r.stdout and (out / "best_model").is_dir()


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".yaml")))
def test_every_task_config_parses_for_both_commands(name):
    from paddle_bibert.commands import DistillArgs, GlueArgs, parse_args
    from paddle_bibert.data.glue import get_task

    path = os.path.join(REPO, "configs", name)
    t = parse_args(GlueArgs, ["--config", path, "--output_dir", "o"], section="teacher")
    s = parse_args(DistillArgs, ["--config", path, "--output_dir", "o"], section="student")
    get_task(s.task_name)
    assert s.bi and s.pred_distill and s.intermediate_distill and s.batch_size == 16
    assert s.optimizer == "bertadam" and t.optimizer == "adamw"  # the authors' optimizer for the student
    assert isinstance(s.learning_rate, float) and t.learning_rate < s.learning_rate or s.task_name == "rte"


def test_student_with_another_vocabulary_is_rejected(glue_slice, tiny_model_dir, tmp_path):
    from paddlenlp.transformers import BertForSequenceClassification, BertTokenizer

    other = tmp_path / "other"
    os.makedirs(other)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "good", "bad"]
    (other / "vocab.txt").write_text("\n".join(words) + "\n")
    BertForSequenceClassification(tiny_bert_config(vocab_size=len(words), hidden_size=16,
                                                    intermediate_size=32)).save_pretrained(str(other))
    BertTokenizer(str(other / "vocab.txt")).save_pretrained(str(other))
    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                    "--max_steps", "1"), log=Log())
    with pytest.raises(SystemExit, match="vocabularies differ"):
        task_distill(common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", str(tmp_path / "t"),
                            "--student_model_name_or_path", str(other), "--pred_distill"), log=Log())


def test_sigkill_mid_run_then_resume_loses_nothing(glue_slice, tiny_model_dir, tmp_path):
    """A run killed with SIGKILL resumes from its last complete checkpoint to the same weights."""
    import signal
    import time

    args = _teacher_then_student_args(glue_slice, tiny_model_dir, tmp_path, 2, "--max_steps", "60")
    full = task_distill(args(tmp_path / "a"), log=Log())
    script = os.path.join(REPO, "examples", "task_distill.py")
    proc = subprocess.Popen([sys.executable, script, *args(tmp_path / "b")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "b" / "LATEST"
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text().strip()
    # whatever the kill interrupted (a step, an eval, a checkpoint being written), LATEST names a
    # complete checkpoint and the resumed run ends where the uninterrupted one did
    resumed = task_distill(args(tmp_path / "b") + ["--resume"], log=Log())
    assert resumed["finished"] and resumed["best_metric"] == full["best_metric"], killed_at
    a = paddle.load(str(tmp_path / "a" / "checkpoint-60" / "model.pdparams"))
    b = paddle.load(str(tmp_path / "b" / "checkpoint-60" / "model.pdparams"))
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)


def test_half_written_checkpoint_is_never_picked_up(glue_slice, tiny_model_dir, tmp_path):
    from paddle_bibert.training.checkpoint import latest_checkpoint

    out = tmp_path / "t"
    run_glue(common(glue_slice, "sst-2", out, "--model_name_or_path", tiny_model_dir, "--max_steps", "3"),
             log=Log())
    assert latest_checkpoint(str(out)).endswith("checkpoint-3")
    # what a kill during a save leaves: a temporary folder, never named by LATEST
    os.makedirs(out / ".tmp-checkpoint-6-abc")
    (out / ".tmp-checkpoint-6-abc" / "model.pdparams").write_bytes(b"\0" * 10)
    assert latest_checkpoint(str(out)).endswith("checkpoint-3")
    s = run_glue(common(glue_slice, "sst-2", out, "--model_name_or_path", tiny_model_dir, "--max_steps", "3",
                        "--resume"), log=Log())
    assert s["global_step"] == 3 and s["finished"]


def test_resume_with_another_optimizer_is_refused(glue_slice, tiny_model_dir, tmp_path):
    args = _teacher_then_student_args(glue_slice, tiny_model_dir, tmp_path, 3, "--max_steps", "6")
    task_distill(args(tmp_path / "s") + ["--stop_at_step", "3"], log=Log())
    with pytest.raises(ValueError, match="written with --optimizer adamw; resume with the same optimizer"):
        task_distill(args(tmp_path / "s") + ["--resume", "--optimizer", "bertadam"], log=Log())


def test_pad_to_max_length_pads_every_batch_and_relations_cover_the_padding(glue_slice, tiny_model_dir, tmp_path):
    from paddlenlp.transformers import BertForSequenceClassification

    from paddle_bibert import binarize_model
    from paddle_bibert.commands import DistillArgs, _data, parse_args
    from paddle_bibert.convert import load_tokenizer
    from paddle_bibert.distill.distiller import DistillConfig, Distiller

    tok = load_tokenizer(tiny_model_dir)
    loaders = {}
    for flag in ("--pad_to_max_length", "--pad_to_max_length=false"):
        a = parse_args(DistillArgs, common(glue_slice, "sst-2", tmp_path / "x", "--teacher_path", "t", flag))
        loaders[flag] = _data(a, tok)[1:3]
    lengths = lambda flag: {b["input_ids"].shape[1] for loader in loaders[flag] for b in loader}
    assert lengths("--pad_to_max_length") == {32}
    assert len(lengths("--pad_to_max_length=false")) > 1  # per batch: its longest example
    # direction matching on a statically padded batch: Q relations over all 32 positions, the
    # padded ones included (no mask), summed over layers, as numpy computes them from the taps
    batch = next(iter(loaders["--pad_to_max_length"][0]))
    assert (batch["input_ids"].numpy() == tok.pad_token_id).any(axis=1).sum() >= 2  # padding to cover
    teacher = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    student, _ = binarize_model(BertForSequenceClassification.from_pretrained(tiny_model_dir))
    d = Distiller(student, teacher, DistillConfig(query_distill=True))
    (_, t_rec), (s_logits, s_rec) = d.teacher_forward(batch), d.student_forward(batch)
    _, terms = d.terms(s_logits, s_rec, None, t_rec)
    rel = lambda x: (lambda y: y @ y.transpose(0, 1, 3, 2) / np.sqrt(y.shape[-1]))(x.numpy().astype(np.float64))
    unit = lambda r: r / np.linalg.norm(r)
    assert all(q.shape[2] == 32 for q in s_rec["q"])
    expect = sum(np.linalg.norm(unit(rel(s)) - unit(rel(t))) for s, t in zip(s_rec["q"], t_rec["q"]))
    assert float(terms["q"]) == pytest.approx(expect, rel=1e-5)


def test_command_line_user_error_is_one_line_without_traceback(glue_slice, tiny_model_dir, tmp_path):
    out = tmp_path / "t"
    argv = common(glue_slice, "sst-2", out, "--model_name_or_path", tiny_model_dir, "--max_steps", "2")
    run_glue(argv, log=Log())  # a finished run in out
    script = os.path.join(REPO, "examples", "run_glue.py")
    r = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {out} already holds a run's checkpoint; pass --resume to continue it, or choose an "
        "empty --output_dir")


def test_every_stopping_message_is_one_error_line_and_a_bare_status_passes_through():
    from paddle_bibert import distributed

    def stop(exc):
        def command():
            raise exc
        with pytest.raises(SystemExit) as e:
            distributed.main(command)
        return e.value.code

    assert stop(SystemExit("--teacher_path x: no such file or folder")) == (
        "error: --teacher_path x: no such file or folder")
    assert stop(ValueError("--learning_rate must be > 0")) == "error: --learning_rate must be > 0"
    assert stop(SystemExit("error: said once")) == "error: said once"
    assert stop(SystemExit(2)) == 2  # argparse, after its usage lines
    assert stop(SystemExit(0)) == 0  # --help


def test_learning_rate_warms_up_then_decays_linearly(glue_slice, tiny_model_dir, tmp_path):
    log = Log()
    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir, "--max_steps", "10",
                    "--warmup_proportion", "0.2", "--learning_rate", "1e-3", "--logging_steps", "1"), log=log)
    # the line of step k shows the rate of step k + 1: (k+1)/2 of the peak during the 2 warm-up
    # steps, then falling linearly to 0 at step 10
    shown = [float(m.split(" lr ")[1].split(":")[0]) for m in log if m.startswith("[train]")]
    want = [1e-3 * (k / 2 if k < 2 else (10 - k) / 8) for k in range(1, 11)]
    assert shown == pytest.approx(want, rel=1e-2, abs=1e-12)


def test_history_records_training_seconds_apart_from_evaluation(glue_slice, tiny_model_dir, tmp_path, monkeypatch):
    import time

    from paddle_bibert.training import trainer

    real = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda *a: (time.sleep(1.0), real(*a))[1])  # a slow dev set
    out = tmp_path / "t"
    s = run_glue(common(glue_slice, "sst-2", out, "--model_name_or_path", tiny_model_dir, "--max_steps", "6",
                        "--save_steps", "2"), log=Log())
    hist = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["history"]
    secs = [e["training_seconds"] for e in hist]
    assert [e["step"] for e in hist] == [2, 4, 6] and 0 < secs[0] < secs[1] < secs[2]
    assert s["eval_seconds"] > 0 and s["checkpoint_seconds"] > 0
    assert s["training_seconds"] == pytest.approx(s["train_seconds"] - s["eval_seconds"] - s["checkpoint_seconds"])
    assert secs[-1] <= s["training_seconds"] + 1e-2
    assert s["eval_seconds"] >= 3.0 and s["training_seconds"] < s["train_seconds"] - 3.0  # the sleeps are not training


def test_group_by_length_reaches_the_training_batches(glue_slice, tiny_model_dir, tmp_path):
    from paddle_bibert.commands import DistillArgs, _data, parse_args
    from paddle_bibert.convert import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    spread = {}
    for flag in ("--group_by_length", "--group_by_length=false"):
        a = parse_args(DistillArgs, common(glue_slice, "sst-2", tmp_path / "x", "--teacher_path", "t", flag))
        train = _data(a, tok)[1]
        # within a batch, how far apart the example lengths are (padding is what that costs)
        spread[flag] = np.mean([np.ptp((b["input_ids"].numpy() != tok.pad_token_id).sum(1)) for b in train])
    assert spread["--group_by_length"] < 0.5 * spread["--group_by_length=false"]


@pytest.mark.parametrize("cls", ["GlueArgs", "DistillArgs", "MultistepArgs"])
def test_help_lists_every_flag(cls, capsys):
    import dataclasses

    from paddle_bibert import arguments

    with pytest.raises(SystemExit) as e:
        arguments.parse_args(getattr(arguments, cls), ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(getattr(arguments, cls)):
        assert f"--{f.name}" in out
    assert "--no_progress" in out and "--config" in out


@pytest.mark.parametrize("task", ["sst-2", "sts-b"])
@pytest.mark.parametrize("recipe", [None, "bibert", "bit"])
def test_length_sorted_dev_batches_give_the_same_metrics(glue_slice, tiny_model_dir, task, recipe):  # noqa: F811
    """Evaluation batches examples by length (less padding); padding must not reach any prediction,
    full precision or binarized, so every metric equals that of the file-order batches."""
    from paddlenlp.transformers import BertForSequenceClassification, BertTokenizer

    from paddle_bibert.data.glue import load_glue
    from paddle_bibert.data.loader import Collator, encode_examples, make_dataloader
    from paddle_bibert.surgery import BinarizeConfig, binarize_model
    from paddle_bibert.training.trainer import evaluate

    tok = BertTokenizer.from_pretrained(tiny_model_dir)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_classes=1 if task == "sts-b" else 2,
                                                          ignore_mismatched_sizes=True)
    if recipe:
        binarize_model(model, BinarizeConfig.from_recipe(recipe))
    feats = encode_examples(load_glue(task, glue_slice, "dev"), tok, task, 32)
    loader = lambda grouped: make_dataloader(feats, 8, shuffle=False, collate_fn=Collator(tok, task),  # noqa: E731
                                             group_by_length=grouped)
    padded = lambda ld: sum(b["input_ids"].size for b in ld)  # noqa: E731
    assert padded(loader(True)) < padded(loader(False))
    model.eval()

    def per_example(ld):  # logits in file order, whatever order the loader batched them in
        order = np.concatenate([np.asarray(b) for b in ld.batch_sampler])
        logits = np.concatenate([model(b["input_ids"], token_type_ids=b["token_type_ids"]).numpy() for b in ld])
        return logits[np.argsort(order)]

    # A batch's shape changes the float summation order (the CPU's math library blocks by shape),
    # so a binarized model may flip the sign of a value within rounding of 0 in one example or
    # two; padding that leaked would move most of them.
    same = np.isclose(per_example(loader(True)), per_example(loader(False)), rtol=1e-4, atol=1e-5).all(axis=1)
    assert same.all() if recipe is None else same.mean() >= 0.9, f"{(~same).sum()} of {same.size} differ"
    if recipe is None:  # metrics follow the logits; a correlation of near-constant scores amplifies rounding
        in_order, by_length = evaluate(model, loader(False), task), evaluate(model, loader(True), task)
        assert in_order.keys() == by_length.keys()
        for k in in_order:
            assert by_length[k] == pytest.approx(in_order[k], abs=1e-3, nan_ok=True), k
