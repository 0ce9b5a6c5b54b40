"""The main job (examples/quickstart.py) end to end on a tiny model and two steps per stage:
what it prints, and the packed file it leaves, for each recipe."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import REPO
from test_commands import tiny_model_dir  # noqa: F401  (fixture)


def _quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(REPO, "examples", "quickstart.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("recipe", ["bit", "bibert"])
def test_quickstart_prints_both_accuracies_and_leaves_a_packed_student(tiny_model_dir, tmp_path, capsys, recipe):  # noqa: F811
    from paddle_bibert import load_binarized
    from paddle_bibert.runtime import load_packed

    out = tmp_path / "qs"
    result = _quickstart().main(["--output_dir", str(out), "--model", tiny_model_dir, "--max_steps", "2",
                                 "--no_progress", "--recipe", recipe])
    text = capsys.readouterr().out
    assert f"teacher (full precision)  dev accuracy: {result['teacher_acc']:.4f}" in text
    assert f"student (1-1-1, {recipe:6s}) dev accuracy: {result['student_acc']:.4f}" in text
    assert f"student / teacher: {result['retention']:.3f}" in text
    packed = out / "student.bibert"
    assert f"packed 1-bit student: {packed} (" in text
    # the float32 size is the whole model's (all 128 position rows; the file keeps 64): every
    # parameter of the binarized student but its quantizers', 4 bytes each
    student_params = load_binarized(str(out / "student" / "best_model")).named_parameters()
    want = 4 * sum(int(np.prod(p.shape)) for n, p in student_params if "quantizer" not in n)
    assert result["fp_bytes"] == want
    assert result["recipe"] == recipe and result["packed_bytes"] == packed.stat().st_size
    assert result["teacher_steps"] == 2 and result["student_steps"] == 2
    # both stages batch sentences of similar length unless told otherwise
    for stage in ("teacher", "student"):
        with open(out / stage / "summary.json") as f:
            assert json.load(f)["arguments"]["group_by_length"] is True
    # BiT's student trains without dropout and keeps the teacher's word embeddings
    with open(out / "student" / "summary.json") as f:
        student_args = json.load(f)["arguments"]
    assert student_args["eval_packed"] is True  # both recipes are 1-bit: scored on the runtime
    assert (student_args["student_dropout"], student_args["freeze_word_embeddings"]) == (
        (0.0, True) if recipe == "bit" else (None, False))
    # and its binarized linears' input scales start at mean|x| (BiT's 2 mean|x| otherwise)
    config = (out / "student" / "best_model" / "bibert_config.yaml").read_text()
    assert ("act_quantizer: elastic_sign_mean" in config) == (recipe == "bit")
    # the packed file is the best student: the runtime's logits equal Paddle's on a few sentences
    student = load_binarized(str(out / "student" / "best_model"))
    assert f"recipe: {recipe}\n" in (out / "student" / "best_model" / "bibert_config.yaml").read_text()
    ids = np.array([[101, 2023, 3185, 2001, 2307, 102, 0, 0], [101, 1037, 9202, 2143, 1012, 2009, 2001, 102]])
    want = student(paddle.to_tensor(ids)).numpy()
    got = load_packed(str(packed))(ids, np.zeros_like(ids))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    # and it takes text: the label of the student's arg-max on the same tokens
    runtime = load_packed(str(packed))
    ids, _ = runtime.text_encoder.encode(["a gripping, funny film"])
    with paddle.no_grad():
        logits = student(paddle.to_tensor(ids)).numpy()
    assert runtime.predict(["a gripping, funny film"]) == [["negative", "positive"][logits.argmax()]]
    assert "python -m paddle_bibert.runtime predict" in text
    # the student's printed accuracy is its file's: the runtime, given the dev sentences as text
    from paddle_bibert.data.glue import load_glue
    dev = load_glue("movie-reviews", None, "dev")
    labels = np.array(runtime.predict([ex["sentence"] for ex in dev])) == "positive"
    assert np.mean(labels == np.array([ex["labels"] for ex in dev], dtype=bool)) == result["student_acc"]
    with open(out / "teacher" / "summary.json") as f:  # the teacher is scored once an epoch
        assert json.load(f)["arguments"]["evaluation_strategy"] == "epoch"
    # the training commands leave the task beside each model, for python -m paddle_bibert.export
    from paddle_bibert.data.glue import read_task_file
    for d in (out / "teacher" / "best_model", out / "student" / "best_model"):
        assert read_task_file(str(d)) == {"task": "movie-reviews", "max_seq_length":
                                          runtime.config["tokenizer"]["max_seq_length"]}


def test_quickstart_budget_flags(tiny_model_dir, tmp_path, capsys):  # noqa: F811
    qs = _quickstart()
    out = tmp_path / "qs"
    result = qs.main(["--output_dir", str(out), "--model", tiny_model_dir, "--max_steps", "2", "--no_progress",
                      "--student_epochs", "0.5", "--no_group_by_length"])
    assert result["student_epochs"] == 0.5 and result["teacher_epochs"] == 1 and not result["group_by_length"]
    assert qs.BUDGETS["short"] == dict(teacher_epochs=1, student_epochs=1.5, save_steps=80)
    with open(out / "student" / "summary.json") as f:
        args = json.load(f)["arguments"]
    assert args["num_train_epochs"] == 0.5 and args["group_by_length"] is False
    with pytest.raises(SystemExit):
        qs.main(["--output_dir", str(out), "--student_epochs", "0"])
    assert "--student_epochs must be > 0, got 0.0" in capsys.readouterr().err


def test_quickstart_user_error_is_one_line_without_traceback(tiny_model_dir, tmp_path):  # noqa: F811
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "qs"
    r = subprocess.run([sys.executable, os.path.join(REPO, "examples", "quickstart.py"), "--output_dir", str(out),
                        "--model", tiny_model_dir, "--max_steps", "1", "--no_progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: output_dir {out / 'teacher'} is not writable (Not a directory); choose another --output_dir")


@pytest.mark.parametrize("given", [None, "1"])
def test_quickstart_uses_every_core_unless_told(given):
    """Paddle alone would run the job's math on one thread (it sets OMP_NUM_THREADS=1 when unset)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if given:
        env["OMP_NUM_THREADS"] = given
    code = ("import importlib.util, os, sys; spec = importlib.util.spec_from_file_location('qs', sys.argv[1]); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
            "import paddle; print(os.environ['OMP_NUM_THREADS'])")
    r = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "examples", "quickstart.py")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == (given or str(len(os.sched_getaffinity(0))))
