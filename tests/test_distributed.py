"""Data parallel: task_distill.py under ``python -m paddle.distributed.launch`` with two CPU
processes (gloo) against one process with the same global batch."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import paddle
import pytest

from conftest import GLUE_DIR, REPO, tiny_bert_config
from paddle_bibert.commands import run_glue, task_distill

pytestmark = pytest.mark.skipif(not os.path.isdir(GLUE_DIR),
                                reason=f"real GLUE data folder {GLUE_DIR} is absent")

COMMANDS = {"task_distill": task_distill, "run_glue": run_glue}
ALL_FLAGS = ["--pred_distill", "--query_distill", "--key_distill", "--value_distill",
             "--intermediate_distill"]


@pytest.fixture(scope="module")
def data_and_teacher(tmp_path_factory):
    from paddlenlp.transformers import BertForSequenceClassification, BertTokenizer

    from paddle_bibert.convert import packaged_minilm_path

    root = tmp_path_factory.mktemp("dp")
    glue = root / "glue"
    for task, n_train, n_dev in (("MRPC", 48, 20),):
        os.makedirs(glue / task)
        for split, n in (("train", n_train), ("dev", n_dev)):
            with open(os.path.join(GLUE_DIR, task, f"{split}.tsv")) as f:
                lines = [next(f) for _ in range(n + 1)]
            (glue / task / f"{split}.tsv").write_text("".join(lines))
    teacher = str(root / "teacher")
    paddle.seed(0)
    # no dropout: with it the two runs would draw different masks and could not agree
    model = BertForSequenceClassification(tiny_bert_config(vocab_size=30522, hidden_size=16,
                                                           intermediate_size=32, max_position_embeddings=128))
    model.save_pretrained(teacher)
    BertTokenizer(os.path.join(packaged_minilm_path(), "vocab.txt")).save_pretrained(teacher)
    return str(glue), teacher


def _args(command, glue, teacher, out, batch_size):
    model = (["--teacher_path", teacher, "--bi", *ALL_FLAGS] if command == "task_distill"
             else ["--model_name_or_path", teacher])
    return ["--task_name", "mrpc", "--data_dir", glue, *model, "--max_seq_length", "64", "--batch_size", str(batch_size), "--max_steps", "4",
            "--save_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-3", "--seed", "5",
            "--output_dir", str(out), "--no-progress", "--ema_decay", "0.5"]


def _weights(out):
    step = open(os.path.join(out, "LATEST")).read().strip()
    return paddle.load(os.path.join(out, step, "model.pdparams"))


@pytest.mark.parametrize("command", ["task_distill", "run_glue"])
def test_two_processes_match_one_process_with_the_global_batch(data_and_teacher, tmp_path, command):
    glue, teacher = data_and_teacher
    one = tmp_path / "one"
    s1 = COMMANDS[command](_args(command, glue, teacher, one, 8), log=lambda m: None)

    two = tmp_path / "two"
    r, worker, wall = _launch(command, _args(command, glue, teacher, two, 4), tmp_path / "launch-logs", tmp_path)
    signal = re.search(r"Exit code -(\d+)", r.stdout + r.stderr)
    if r.returncode != 0 and signal:
        # a worker killed by a signal (seen once in CI: "Exit code -6", SIGABRT, cause unknown,
        # not reproduced in 59 local launches): report it and launch once more from
        # scratch; a second failure, or any failure with an ordinary exit code, fails the test
        warnings.warn(f"two-process {command}: a worker died by signal {signal.group(1)}; relaunching once. "
                      + _failure_report(r, worker))
        shutil.rmtree(two, ignore_errors=True)
        r, worker, wall = _launch(command, _args(command, glue, teacher, two, 4), tmp_path / "launch-logs-2", tmp_path)
    assert r.returncode == 0, _failure_report(r, worker)

    s2 = json.loads((two / "summary.json").read_text())
    assert s2["world_size"] == 2 and s2["global_step"] == 4 and s1["world_size"] == 1
    # the ranks compared weight digests at every checkpoint (the run stops if they differ);
    # the agreed digest is that of the weights rank 0 wrote
    w2 = _weights(two)
    h = hashlib.sha256()
    for _, p in sorted(w2.items()):
        h.update(np.ascontiguousarray(p.numpy()).tobytes())
    assert s2["weights_sha256"] == h.hexdigest()
    # only rank 0 writes and logs
    assert "[train] step 4/4" in worker[0] and "[train]" not in worker[1]

    w1 = _weights(one)
    w0 = paddle.load(os.path.join(teacher, "model_state.pdparams"))
    assert w1.keys() == w2.keys()
    for k in w1:
        np.testing.assert_allclose(w2[k].numpy(), w1[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    diff = max(float(np.abs(w2[k].numpy() - w1[k].numpy()).max()) for k in w1)
    print(f"two-process {command}: {wall:.1f} s wall, largest weight difference to one process {diff:.2g}")
    moved = [k for k in w1 if k in w0 and not np.array_equal(w1[k].numpy(), w0[k].numpy())]
    assert len(moved) > 10, moved  # training changed the weights: not a comparison of two untouched copies
    # the weight average (--ema_decay) is kept the same on both ranks: the checkpointed average
    # equals the one-process run's, and it is not the raw weights
    e1, e2 = (paddle.load(os.path.join(d, open(os.path.join(d, "LATEST")).read().strip(), "ema.pdparams"))
              for d in (one, two))
    assert e1.keys() == e2.keys() and e1
    for k in e1:
        np.testing.assert_allclose(e2[k].numpy(), e1[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    assert set(e1) <= set(w1)
    assert any(not np.allclose(e1[k].numpy(), w1[k].numpy()) for k in e1)
    # dev metrics gathered from both ranks equal the one-process ones
    assert [e["acc"] for e in _history(two)] == pytest.approx([e["acc"] for e in _history(one)])


def _launch(command, argv, logs, cwd):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                        "--log_dir", str(logs), os.path.join(REPO, "examples", f"{command}.py"), *argv],
                       cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    worker = {i: (logs / f"workerlog.{i}").read_text() if (logs / f"workerlog.{i}").exists() else ""
              for i in (0, 1)}
    return r, worker, time.time() - t0


def _failure_report(r, worker):
    """The launcher's verdict and every worker's error lines first (a long assertion message is
    cut in the middle by pytest), then the log tails."""
    pattern = re.compile(r"Exit code|Error|error|terminate|Traceback|Abort|abort|signal|Killed")
    lines = [f"launcher exit {r.returncode}"]
    lines += [f"launcher: {x}" for x in (r.stdout + r.stderr).splitlines() if pattern.search(x)][-10:]
    for i, text in worker.items():
        lines += [f"worker {i}: {x}" for x in text.splitlines() if pattern.search(x)][-10:]
    tails = "\n".join(f"--- worker {i} log tail ---\n{t[-1500:]}" for i, t in worker.items())
    return "\n".join(lines) + "\n" + tails + "\n--- launcher stderr tail ---\n" + r.stderr[-1500:]


def _history(out):
    step = open(os.path.join(out, "LATEST")).read().strip()
    return json.load(open(os.path.join(out, step, "trainer_state.json")))["history"]
