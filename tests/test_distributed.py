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
    teacher, student = str(root / "teacher"), str(root / "student")
    for seed, folder in ((0, teacher), (1, student)):  # a full-precision student must start apart from
        paddle.seed(seed)                              # its teacher, or every DMD term is 0
        # no dropout: with it the two runs would draw different masks and could not agree
        model = BertForSequenceClassification(tiny_bert_config(vocab_size=30522, hidden_size=16,
                                                               intermediate_size=32, max_position_embeddings=128))
        model.save_pretrained(folder)
        BertTokenizer(os.path.join(packaged_minilm_path(), "vocab.txt")).save_pretrained(folder)
    return str(glue), teacher


def _args(command, glue, teacher, out, batch_size):
    """``command``: run_glue, task_distill (a full-precision student) or task_distill_bi."""
    model = (["--model_name_or_path", teacher] if command == "run_glue"
             else ["--teacher_path", teacher, *ALL_FLAGS] + (["--bi"] if command.endswith("_bi") else
                                                             ["--student_model_name_or_path", teacher + "/../student"]))
    return ["--task_name", "mrpc", "--data_dir", glue, *model, "--max_seq_length", "64", "--batch_size", str(batch_size), "--max_steps", "4",
            "--save_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-3", "--seed", "5",
            "--output_dir", str(out), "--no_progress", "--ema_decay", "0.5"]


def _weights(out):
    step = open(os.path.join(out, "LATEST")).read().strip()
    return paddle.load(os.path.join(out, step, "model.pdparams"))


@pytest.mark.parametrize("command", ["task_distill", "task_distill_bi", "run_glue"])
def test_two_processes_match_one_process_with_the_global_batch(data_and_teacher, tmp_path, command):
    glue, teacher = data_and_teacher
    one = tmp_path / "one"
    r1, wall1 = _run_one(command, _args(command, glue, teacher, one, 8), tmp_path / "grads-one", tmp_path)
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    s1 = json.loads((one / "summary.json").read_text())

    two = tmp_path / "two"
    grads_two = tmp_path / "grads-two"
    r, worker, wall = _launch(command, _args(command, glue, teacher, two, 4), tmp_path / "launch-logs", grads_two, tmp_path)
    signal = re.search(r"Exit code -(\d+)", r.stdout + r.stderr)
    if r.returncode != 0 and signal:
        # a worker killed by a signal (seen once in CI: "Exit code -6", SIGABRT, cause unknown,
        # not reproduced in 59 local launches): report it and launch once more from
        # scratch; a second failure, or any failure with an ordinary exit code, fails the test
        warnings.warn(f"two-process {command}: a worker died by signal {signal.group(1)}; relaunching once. "
                      + _failure_report(r, worker))
        shutil.rmtree(two, ignore_errors=True)
        shutil.rmtree(grads_two, ignore_errors=True)
        r, worker, wall = _launch(command, _args(command, glue, teacher, two, 4), tmp_path / "launch-logs-2", grads_two, tmp_path)
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
    moved = [k for k in w1 if k in w0 and not np.array_equal(w1[k].numpy(), w0[k].numpy())]
    assert len(moved) > 10, moved  # training changed the weights: not a comparison of two untouched copies

    if command == "task_distill_bi":
        # dev predictions gathered from both ranks score the (unchanged) teacher as one process does
        assert s2["teacher_metric"] == s1["teacher_metric"]
        # The binarized student is not compared with one process: its forward is discontinuous.
        # A batch of 4 and a batch of 8 round their matrix products differently in the last bit
        # on some CPU paths (MKL's AVX2 path does), a pre-sign value near 0 then takes the other
        # sign, and the step-1 losses already differ by ~2e-4 and gradients by ~7%. The
        # data-parallel arithmetic (sharding, cross-rank padding, DMD over the global batch,
        # gradient averaging) is the same with and without --bi, and the full-precision student
        # below checks it number for number.
        return
    # The global batch's loss terms at step 1 and the gradient the optimizer applies: the same
    # sums in another order, so equal up to float32 rounding relative to each tensor's scale.
    # Wrong sharding, padding or averaging moves them at O(1).
    # (rank 0 logs its own batch's pred term; the DMD terms and the loss are the global batch's)
    global_terms = lambda log: {k: v for k, v in _step_one_terms(log).items() if k != "pred"}
    assert global_terms(worker[0]) == pytest.approx(global_terms(r1.stdout), abs=2e-4)
    g1, g2 = _grads(tmp_path / "grads-one", 1)[0], _grads(grads_two, 2)
    for name in g2[0]:
        np.testing.assert_array_equal(g2[1][name], g2[0][name], err_msg=name)  # one averaged gradient
    floor = 1e-6 * max(float(np.abs(g).max()) for g in g1.values())  # for gradients that are ~0 throughout
    diff = max(_scaled_difference(g2[0][k], g1[k], floor) for k in g1)
    print(f"two-process {command}: {wall:.1f} s wall (one process {wall1:.1f} s); step-1 gradients differ by "
          f"at most {diff:.2g} of their tensor's largest entry")
    assert g1.keys() == g2[0].keys() and diff < 1e-4
    # Full precision has no sign to flip: the runs stay within rounding for all 4 steps.
    for k in w1:
        np.testing.assert_allclose(w2[k].numpy(), w1[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
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


def _scaled_difference(a, b, floor):
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), floor))


def _step_one_terms(log):
    line = next(x for x in log.splitlines() if x.startswith("[train] step 1/"))
    return {k: float(v) for k, v in re.findall(r"(\w+) (-?[\d.]+)(?:,|$)", line.split(": ", 1)[1])}


def _grads(folder, ranks):
    files = [folder / f"grads.{r}.npz" for r in range(ranks)]
    assert all(f.exists() for f in files), sorted(os.listdir(folder))
    return [dict(np.load(f)) for f in files]


PROBE = os.path.join(REPO, "tests", "grad_probe.py")


def _env(grads):
    os.makedirs(grads, exist_ok=True)
    return dict(os.environ, GRAD_PROBE_DIR=str(grads),
                PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run_one(command, argv, grads, cwd):
    t0 = time.time()
    r = subprocess.run([sys.executable, PROBE, command, *argv], cwd=str(cwd), env=_env(grads),
                       capture_output=True, text=True, timeout=600)
    return r, time.time() - t0


def _launch(command, argv, logs, grads, cwd):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                        "--log_dir", str(logs), PROBE, command, *argv],
                       cwd=str(cwd), env=_env(grads), capture_output=True, text=True, timeout=600)
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
