"""The teacher's outputs computed one batch ahead in a thread (TeacherPrefetch): the same
outputs and losses as the live teacher, every batch once and in order, really ahead, errors
raised in the loop, and no thread left behind."""

import threading

import numpy as np
import paddle
import pytest
from paddlenlp.transformers import BertForSequenceClassification

from conftest import tiny_bert_config
from paddle_bibert import BinarizeConfig, binarize_model
from paddle_bibert.distill import DistillConfig, Distiller, TeacherPrefetch
from paddle_bibert.distill.prefetch import TEACHER_OUTPUTS

from test_commands import Log, common, glue_slice, tiny_model_dir  # noqa: F401  (fixtures)
from paddle_bibert.commands import run_glue, task_distill


def _batches(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = rng.integers(1, 60, size=(4, 6 + i)).astype("int64")
        out.append({"input_ids": paddle.to_tensor(ids), "token_type_ids": paddle.zeros_like(paddle.to_tensor(ids)),
                    "labels": paddle.to_tensor(rng.integers(0, 2, size=4).astype("int64")), "i": i})
    return out


class Loader(list):
    """A list of batches with the two things the trainer asks of a loader."""
    batch_sampler = "sampler"


@pytest.fixture
def distiller():
    paddle.seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config())
    student = BertForSequenceClassification(tiny_bert_config())
    binarize_model(student, BinarizeConfig.from_recipe("bibert"))
    return Distiller(student, teacher, DistillConfig(pred_distill=True, query_distill=True,
                                                     intermediate_distill=True))


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "teacher-prefetch"]


def test_same_outputs_and_loss_as_the_live_teacher(distiller):
    batches = Loader(_batches())
    got = list(TeacherPrefetch(batches, distiller))
    assert not _prefetch_threads()
    assert [b["i"] for b in got] == list(range(len(batches)))  # each batch once, in the loader's order
    for batch in got:  # (the live teacher afterwards: both would share the teacher's taps)
        logits, taps = batch[TEACHER_OUTPUTS]
        live_logits, live_taps = distiller.teacher_forward(batch)
        np.testing.assert_allclose(logits.numpy(), live_logits.numpy(), rtol=1e-6, atol=1e-7)
        assert taps.keys() == live_taps.keys() == {"q", "hidden"}
        for k in taps:
            for a, b in zip(taps[k], live_taps[k]):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
        paddle.seed(batch["i"])  # the same dropout masks for the student in both losses
        live_forward, distiller.teacher_forward = distiller.teacher_forward, None  # not called again
        ahead, terms_ahead = distiller.loss(batch)
        distiller.teacher_forward = live_forward
        paddle.seed(batch["i"])
        live, _ = distiller.loss({k: v for k, v in batch.items() if k != TEACHER_OUTPUTS})
        np.testing.assert_allclose(float(ahead), float(live), rtol=1e-6)
        assert set(terms_ahead) == {"pred", "q", "hidden"}


def test_the_next_batch_is_computed_while_the_current_one_is_in_use(distiller):
    started = {}
    forward = distiller.teacher_forward

    def recording(batch):
        started[batch["i"]] = threading.Event()
        started[batch["i"]].set()
        return forward(batch)

    distiller.teacher_forward = recording
    it = iter(TeacherPrefetch(Loader(_batches()), distiller))
    first = next(it)
    # while the loop holds batch 0 (the student would be training on it), batch 1's teacher
    # forward starts in the thread; a sequential loader would wait for the next request
    for _ in range(200):
        if 1 in started:
            break
        threading.Event().wait(0.01)
    assert first["i"] == 0 and 1 in started
    it.close()
    assert not _prefetch_threads()


def test_an_error_in_the_thread_is_raised_in_the_loop(distiller):
    class Broken(Loader):
        def __iter__(self):
            yield from self[:2]
            raise ValueError("bad batch 2")

    got = []
    with pytest.raises(ValueError, match="bad batch 2"):
        for batch in TeacherPrefetch(Broken(_batches()), distiller):
            got.append(batch["i"])
    assert got == [0, 1]
    assert not _prefetch_threads()


def test_leaving_the_loop_early_stops_the_thread(distiller):
    prefetch = TeacherPrefetch(Loader(_batches(8)), distiller)
    assert len(prefetch) == 8 and prefetch.batch_sampler == "sampler"
    for batch in prefetch:
        if batch["i"] == 1:
            break
    assert not _prefetch_threads()


def test_distillation_with_and_without_prefetch_trains_the_same_weights(glue_slice, tiny_model_dir,  # noqa: F811
                                                                         tmp_path):
    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                    "--max_steps", "3"), log=Log())
    runs = {}
    for name, extra in (("ahead", ["--teacher_prefetch"]), ("live", [])):
        summary = task_distill(common(glue_slice, "sst-2", tmp_path / name, "--teacher_path", str(tmp_path / "t"),
                                      "--max_steps", "4", "--learning_rate", "5e-4", "--bi", "--recipe", "bit",
                                      "--pred_distill", "--intermediate_distill", "--hidden_loss", "mse",
                                      *extra), log=Log())
        assert summary["arguments"]["teacher_prefetch"] == (name == "ahead")
        runs[name] = paddle.load(str(tmp_path / name / "checkpoint-4" / "model.pdparams"))
    assert runs["ahead"].keys() == runs["live"].keys()
    for k in runs["ahead"]:
        np.testing.assert_allclose(runs["ahead"][k].numpy(), runs["live"][k].numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=k)


def test_mkl_threads_sleep_instead_of_spinning_while_the_teacher_runs_ahead(distiller, monkeypatch):
    from paddle_bibert._cpu import _intel_openmp

    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    omp = _intel_openmp()
    assert omp is not None, "Paddle's MKL should have loaded Intel OpenMP"
    before = omp.kmp_get_blocktime()
    assert before > 0  # Intel's default spin (200 ms)
    in_thread = []
    forward = distiller.teacher_forward

    def recording(batch):
        in_thread.append(omp.kmp_get_blocktime())
        return forward(batch)

    distiller.teacher_forward = recording
    in_loop = [omp.kmp_get_blocktime() for _ in TeacherPrefetch(Loader(_batches(3)), distiller)]
    assert in_loop == [0, 0, 0] and in_thread == [0, 0, 0]
    assert omp.kmp_get_blocktime() == before  # restored when the loop ends
