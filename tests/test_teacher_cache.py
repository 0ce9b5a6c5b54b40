"""The teacher's outputs kept per example (TeacherCache, --teacher_cache_gb): a batch assembled
from memory gives the live teacher's outputs and loss without running it; a longer batch runs it;
the size limit holds; a whole run trains the weights the live teacher trains."""

import json

import numpy as np
import paddle
import pytest
from paddlenlp.transformers import BertForSequenceClassification

from conftest import tiny_bert_config
from paddle_bibert import BinarizeConfig, binarize_model
from paddle_bibert.commands import run_glue, task_distill
from paddle_bibert.distill import DistillConfig, Distiller, TeacherCache

from test_commands import Log, common, glue_slice, tiny_model_dir  # noqa: F401  (fixtures)

PAD = 0  # tiny_bert_config's pad token id


def _examples(n=6, seed=0):
    """n examples of 3..(n + 2) tokens: (ids, token types)."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(1, 60, size=3 + i), (np.arange(3 + i) >= 2 + i // 2).astype("int64"))
            for i in range(n)]


def _batch(examples, length):
    ids = np.full((len(examples), length), PAD, "int64")
    types = np.zeros((len(examples), length), "int64")
    for i, (x, t) in enumerate(examples):
        ids[i, :len(x)], types[i, :len(t)] = x, t
    return {"input_ids": paddle.to_tensor(ids), "token_type_ids": paddle.to_tensor(types),
            "labels": paddle.to_tensor(np.arange(len(examples)) % 2)}


@pytest.fixture
def distiller():
    paddle.seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config())
    student = BertForSequenceClassification(tiny_bert_config())
    binarize_model(student, BinarizeConfig.from_recipe("bit"))
    return Distiller(student, teacher, DistillConfig(pred_distill=True, query_distill=True, key_distill=True,
                                                     value_distill=True, intermediate_distill=True, hidden_loss="mse"),
                     teacher_cache=TeacherCache(PAD, max_bytes=1e8, max_length=64))


def _counting(distiller):
    calls = []
    live = distiller.teacher_live
    distiller.teacher_live = lambda batch: calls.append(batch["input_ids"].shape) or live(batch)
    return calls


def _assert_same_outputs(got, want):
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-5, atol=1e-6)
    assert got[1].keys() == want[1].keys() == {"q", "k", "v", "hidden"}
    for stream in want[1]:
        assert len(got[1][stream]) == len(want[1][stream])
        for a, b in zip(got[1][stream], want[1][stream]):
            assert a.shape == b.shape
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_a_kept_batch_gives_the_live_teachers_outputs_and_loss_without_running_it(distiller):
    ex = _examples()
    calls = _counting(distiller)
    distiller.teacher_forward(_batch(ex, 12))  # every example kept at length 14 (an eighth more)
    assert calls == [[6, 14]]
    # another batch of some of them, in another order, padded to 9: positions 0..8 of the kept states
    later = _batch([ex[4], ex[1], ex[3]], 9)
    got = distiller.teacher_forward(later)
    assert calls == [[6, 14]] and distiller.teacher_cache.hits == 1  # the teacher did not run
    _assert_same_outputs(got, distiller.teacher_live(later))
    paddle.seed(1)  # the same student dropout masks in both losses
    cached, terms = distiller.loss(later)
    distiller.teacher_cache = None
    paddle.seed(1)
    live, _ = distiller.loss(later)
    assert set(terms) == {"pred", "q", "k", "v", "hidden"}
    np.testing.assert_allclose(float(cached), float(live), rtol=1e-5)


def test_a_batch_longer_than_kept_runs_the_teacher_and_keeps_the_longer_states(distiller):
    ex = _examples()
    calls = _counting(distiller)
    cache = distiller.teacher_cache
    distiller.teacher_forward(_batch(ex[:3], 5))  # examples of 3-5 tokens, kept at length 6
    held = cache.nbytes
    longer = _batch([ex[0], ex[5]], 8)  # ex[0] kept at 6 < 8, ex[5] never seen: run at 9
    _assert_same_outputs(distiller.teacher_forward(longer), distiller.teacher_live(longer))
    assert calls[:2] == [[3, 6], [2, 9]] and cache.misses == 2
    assert sorted(e.length for e in cache.entries.values()) == [6, 6, 9, 9]  # ex[0]'s entry replaced
    assert cache.nbytes == sum(e.nbytes for e in cache.entries.values()) > held
    del calls[:]
    again = _batch([ex[5], ex[0]], 8)
    _assert_same_outputs(distiller.teacher_forward(again), distiller.teacher_live(again))
    assert calls == [[2, 8]]  # only the live reference ran: both are kept at 9 now
    # an example's key is its tokens: the same ids under other token types are another example
    other = _batch([(ex[0][0], 1 - ex[0][1])], 5)
    distiller.teacher_forward(other)
    assert calls[-1] == [1, 6] and distiller.teacher_cache.misses == 3
    # the headroom stops at the longest input the run has
    example = (np.arange(1, 56), np.zeros(55, "int64"))
    near = _batch([example], 60)
    _assert_same_outputs(distiller.teacher_forward(near), distiller.teacher_live(near))
    assert calls[-2] == [1, 64]  # 60 x 1.125 = 67.5 > 64
    n = len(calls)
    full = _batch([example], 64)
    _assert_same_outputs(distiller.teacher_forward(full), distiller.teacher_live(full))
    assert len(calls) == n + 1  # kept at 64: only the live reference ran


def test_nothing_is_kept_past_the_size_limit_and_the_outputs_stay_the_teachers(distiller):
    ex = _examples()
    first = _batch(ex[:1], 6)
    distiller.teacher_forward(first)
    one = distiller.teacher_cache.nbytes
    assert one > 0 and not distiller.teacher_cache.full
    # room for one more example of this size, not for four
    distiller.teacher_cache = cache = TeacherCache(PAD, max_bytes=2.5 * one, max_length=64)
    calls = _counting(distiller)
    batch = _batch([ex[0], ex[0], ex[0], ex[0]], 6)  # one example four times: one entry
    distiller.teacher_forward(batch)
    assert len(cache.entries) == 1 and cache.nbytes == one and not cache.full
    wide = _batch(ex[:4], 6)
    _assert_same_outputs(distiller.teacher_forward(wide), distiller.teacher_live(wide))
    assert cache.full and len(cache.entries) == 2 and cache.nbytes <= cache.max_bytes
    assert len(calls) == 3  # ex[0]'s batch, the wide batch (two examples not kept), the reference
    # full: a missed batch runs the teacher at its own length and keeps nothing
    held = cache.nbytes
    late = _batch([ex[5]], 8)
    _assert_same_outputs(distiller.teacher_forward(late), distiller.teacher_live(late))
    assert calls[-2] == [1, 8] and cache.nbytes == held and len(cache.entries) == 2
    with pytest.raises(ValueError, match="positive size"):
        TeacherCache(PAD, max_bytes=0, max_length=64)


def _distill(glue_slice, tiny_model_dir, tmp_path, name, *extra):  # noqa: F811
    teacher = tmp_path / "t"
    if not teacher.exists():
        run_glue(common(glue_slice, "sst-2", teacher, "--model_name_or_path", tiny_model_dir, "--max_steps", "3"),
                 log=Log())
    log = Log()
    summary = task_distill(common(glue_slice, "sst-2", tmp_path / name, "--teacher_path", str(teacher),
                                  "--max_steps", "12", "--save_steps", "12", "--learning_rate", "5e-4", "--bi",
                                  "--recipe", "bit", "--pred_distill", "--intermediate_distill",
                                  "--hidden_loss", "mse", *extra), log=log)
    return summary, paddle.load(str(tmp_path / name / "checkpoint-12" / "model.pdparams")), log


@pytest.mark.parametrize("padding", [["--pad_to_max_length"], ["--group_by_length"]], ids=lambda p: p[0])
def test_a_run_with_the_cache_trains_the_live_teachers_weights(glue_slice, tiny_model_dir, tmp_path,  # noqa: F811
                                                              padding):
    """12 steps = two epochs of the 48-example slice: the second from memory (every batch, when
    all are padded to one length; where batches differ in length, those whose examples came in
    batches at least as long before)."""
    cached, w_cached, log = _distill(glue_slice, tiny_model_dir, tmp_path, "cached", "--teacher_cache_gb", "1",
                                     *padding)
    live, w_live, _ = _distill(glue_slice, tiny_model_dir, tmp_path, "live", *padding)
    stats = cached["teacher_cache"]
    assert stats["batches_from_memory"] + stats["batches_run"] == 12 and stats["gb"] > 0
    if padding == ["--pad_to_max_length"]:
        assert stats["batches_from_memory"] == 6
    else:
        assert 1 <= stats["batches_from_memory"] <= 6
    assert any(m.startswith(f"teacher cache: {stats['batches_from_memory']} of 12 batches from memory")
               for m in log)
    assert "teacher_cache" not in live
    assert w_cached.keys() == w_live.keys()
    for k in w_cached:
        np.testing.assert_allclose(w_cached[k].numpy(), w_live[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    saved = json.loads((tmp_path / "cached" / "summary.json").read_text())
    assert saved["teacher_cache"] == stats


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_negative_cache_size_is_refused_before_training(glue_slice, tiny_model_dir, tmp_path, value):  # noqa: F811
    with pytest.raises(ValueError, match=r"--teacher_cache_gb must be >= 0 .* got"):
        _distill(glue_slice, tiny_model_dir, tmp_path, "bad", "--teacher_cache_gb", value)
    assert not (tmp_path / "bad").exists()


def test_the_headroom_tool_counts_the_teachers_tokens():
    """benchmarks/cache_headroom.py against counts done by hand: examples of one length miss in
    the first epoch only; with mixed lengths a missed batch's examples are kept at its run length."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "cache_headroom.py")
    spec = importlib.util.spec_from_file_location("cache_headroom", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    same = np.full(32, 10)
    assert tool.teacher_tokens(same, 8, 4, 1.0, 64) == (32 * 10, 4 * 32 * 10)
    assert tool.teacher_tokens(same, 8, 4, 1.25, 64) == (32 * 13, 4 * 32 * 10)
    assert tool.teacher_tokens(same, 8, 4, 1.25, 12) == (32 * 12, 4 * 32 * 10)  # cut at the longest input
    assert tool.teacher_tokens(same, 8, 4, "max", 64) == (32 * 64, 4 * 32 * 10)
    mixed = np.array([5, 20] * 8)  # batches of 16 hold every example: one batch an epoch, of length 20
    assert tool.teacher_tokens(mixed, 16, 3, 1.0, 64) == (16 * 20, 3 * 16 * 20)
    # in batches of 8 sorted by length, the 8 short examples come together: 8 x 5 + 8 x 20 an epoch
    assert tool.teacher_tokens(mixed, 8, 3, 1.0, 64) == (8 * 5 + 8 * 20, 3 * (8 * 5 + 8 * 20))


def test_a_teacher_without_taps_and_a_nonzero_pad_token_type():
    """Prediction loss only: the outputs are (logits, None), kept or not. Batches padded with token
    type 1: the teacher's longer run pads with it too, so a later, longer batch finds the states of
    its padded positions (with type 0 there, they would be another batch's)."""
    paddle.seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config())
    student = BertForSequenceClassification(tiny_bert_config())
    ex = _examples(3)

    def typed(examples, length):
        batch = _batch(examples, length)
        types = batch["token_type_ids"].numpy()
        for i, (x, _) in enumerate(examples):
            types[i, len(x):] = 1
        batch["token_type_ids"] = paddle.to_tensor(types)
        return batch

    later = typed(ex[::-1], 7)
    for config in (DistillConfig(pred_distill=True), DistillConfig(intermediate_distill=True)):
        states = {}
        for pad_type in (1, 0):
            cache = TeacherCache(PAD, max_bytes=1e8, max_length=64, pad_token_type_id=pad_type)
            distiller = Distiller(student, teacher, config, teacher_cache=cache)
            distiller.teacher_forward(typed(ex, 6))  # kept at 7
            got, want = distiller.teacher_forward(later), distiller.teacher_live(later)
            assert cache.misses == 1 and cache.hits == 1
            np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-5, atol=1e-6)
            if config.pred_distill:
                assert got[1] is None and want[1] is None
            else:
                states[pad_type] = (got[1]["hidden"][-1].numpy(), want[1]["hidden"][-1].numpy())
        if states:
            np.testing.assert_allclose(*states[1], rtol=1e-5, atol=1e-6)
            assert not np.allclose(*states[0], rtol=1e-5, atol=1e-6)  # the padded positions differ


def test_the_cache_is_refused_under_data_parallel_and_for_a_teacher_masking_another_pad(
        glue_slice, tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    from types import SimpleNamespace

    from paddle_bibert import commands

    monkeypatch.setattr(commands, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="under data parallel .* drop --teacher_cache_gb"):
        _distill(glue_slice, tiny_model_dir, tmp_path, "dp", "--teacher_cache_gb", "1")
    assert not (tmp_path / "dp").exists()
    args = SimpleNamespace(teacher_cache_gb=1.0, max_seq_length=32)
    teacher = SimpleNamespace(config=SimpleNamespace(pad_token_id=5))
    collator = SimpleNamespace(pad_token_id=0, pad_token_type_id=0)
    with pytest.raises(ValueError, match="the teacher masks token 5, the batches are padded with 0"):
        commands._teacher_cache(args, teacher, collator)
    teacher.config.pad_token_id = 0
    assert commands._teacher_cache(args, teacher, collator).max_length == 32
