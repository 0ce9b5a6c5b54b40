"""Guard rails: bad runs stop loudly, before training where possible, and lose nothing."""

import collections
import os
import shutil

import pytest

from paddle_bibert.commands import run_glue, task_distill
from paddle_bibert.training.checkpoint import latest_checkpoint
from test_commands import Log, common, glue_slice, tiny_model_dir  # noqa: F401  (fixtures)



def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(glue_slice, tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    import paddle
    import paddle.nn.functional as F

    real_ce, calls = F.cross_entropy, []

    def ce_nan_at_step_4(*a, **k):  # the loss of the 4th training step comes out nan
        calls.append(1)
        loss = real_ce(*a, **k)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(F, "cross_entropy", ce_nan_at_step_4)
    out = tmp_path / "t"
    argv = common(glue_slice, "sst-2", out, "--model_name_or_path", tiny_model_dir, "--max_steps", "6",
                  "--save_steps", "1", "--learning_rate", "1e-3")
    log = Log()
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 4; stopping\. The last good checkpoint "
                                                 r"is .*checkpoint-3; lower --learning_rate"):
        run_glue(argv, log=log)
    assert latest_checkpoint(str(out)).endswith("checkpoint-3") and not os.path.exists(out / "checkpoint-4")
    # resuming from the kept checkpoint gives exactly the uninterrupted run's weights
    monkeypatch.setattr(F, "cross_entropy", real_ce)
    s = run_glue(argv + ["--resume"], log=log)
    assert s["finished"] and any(m.startswith("resumed from") and m.endswith("at step 3") for m in log)
    ref = tmp_path / "ref"
    run_glue(common(glue_slice, "sst-2", ref, "--model_name_or_path", tiny_model_dir, "--max_steps", "6",
                    "--save_steps", "1", "--learning_rate", "1e-3"), log=Log())
    a = paddle.load(str(out / "checkpoint-6" / "model.pdparams"))
    b = paddle.load(str(ref / "checkpoint-6" / "model.pdparams"))
    assert all((a[k].numpy() == b[k].numpy()).all() for k in a)


def test_non_finite_loss_before_any_checkpoint_says_to_start_again(glue_slice, tiny_model_dir, tmp_path,
                                                                   monkeypatch):
    import paddle.nn.functional as F

    real_ce = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: real_ce(*a, **k) * float("nan"))
    with pytest.raises(FloatingPointError, match=r"^loss is nan at step 1; stopping\. No checkpoint was written "
                                                 r"before it: lower --learning_rate and start again$"):
        run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                        "--max_steps", "6"), log=Log())


def test_unwritable_output_dir_fails_before_training(glue_slice, tiny_model_dir, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    log = Log()
    with pytest.raises(PermissionError, match="is not writable.*choose another --output_dir"):
        run_glue(common(glue_slice, "sst-2", tmp_path / "a_file" / "out", "--model_name_or_path",
                        tiny_model_dir, "--max_steps", "2"), log=log)
    assert not any(m.startswith("[train]") for m in log)


def test_full_disk_fails_before_training(glue_slice, tiny_model_dir, tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(real(p).total, real(p).total - 2**20, 2**20))
    out = tmp_path / "t"
    log = Log()
    with pytest.raises(OSError, match=r"has 1 MiB free but checkpoints of this model need about \d+ MiB"):
        run_glue(common(glue_slice, "sst-2", out, "--model_name_or_path", tiny_model_dir, "--max_steps", "2"),
                 log=log)
    assert not any(m.startswith("[train]") for m in log) and latest_checkpoint(str(out)) is None


@pytest.mark.parametrize("flag,value,message", [
    ("--batch_size", "0", "batch_size must be > 0"),
    ("--learning_rate", "-1", "learning_rate must be > 0"),
    ("--max_seq_length", "0", "max_seq_length must be >= 3"),
    ("--warmup_proportion", "1.5", r"warmup_proportion must be in \[0, 1\)"),
    ("--save_steps", "0", "--logging_steps and --save_steps must be > 0"),
    ("--optimizer", "sgd", "--optimizer must be one of adamw, bertadam, got 'sgd'"),
])
def test_out_of_range_values_are_refused_before_loading_anything(tmp_path, flag, value, message):
    # the model path does not exist: the range check must come first
    argv = ["--task_name", "sst-2", "--output_dir", str(tmp_path / "o"), flag, value]
    with pytest.raises(ValueError, match=message):
        run_glue(argv + ["--model_name_or_path", str(tmp_path / "no_model")], log=Log())
    with pytest.raises(ValueError, match=message):
        task_distill(argv + ["--teacher_path", str(tmp_path / "no_teacher"), "--pred_distill"], log=Log())
