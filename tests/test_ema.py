"""The weight average (--ema_decay): numpy recurrence, swap-in/out, training unchanged,
best model = the average, resume to the same average, mismatched resume refused."""

import os

import numpy as np
import paddle
import pytest

from paddle_bibert.training.ema import ParamEMA
from test_commands import ALL_FLAGS, Log, common, glue_slice, tiny_model_dir  # noqa: F401  (fixtures)



def test_recurrence_against_numpy_and_swap_restores():
    paddle.seed(1)
    lin = paddle.nn.Linear(5, 3)
    lin.bias.stop_gradient = True  # frozen parameters are not averaged
    rng = np.random.default_rng(0)
    w0 = lin.weight.numpy().copy()
    ema = ParamEMA(lin, 0.9)
    assert set(ema.state_dict()) == {"weight"}
    expect = w0.astype(np.float64)
    for _ in range(4):
        new = rng.standard_normal((5, 3)).astype(np.float32)
        lin.weight.set_value(new)
        ema.update()
        expect = 0.9 * expect + 0.1 * new
    np.testing.assert_allclose(ema.state_dict()["weight"].numpy(), expect, rtol=1e-5, atol=1e-6)
    raw, bias = lin.weight.numpy().copy(), lin.bias.numpy().copy()
    with pytest.raises(RuntimeError):
        with ema.swapped():
            np.testing.assert_allclose(lin.weight.numpy(), expect, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(lin.bias.numpy(), bias)
            raise RuntimeError("evaluation failed")
    np.testing.assert_array_equal(lin.weight.numpy(), raw)  # back bit for bit


def test_bad_decay_and_foreign_state_rejected():
    lin = paddle.nn.Linear(2, 2)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="decay"):
            ParamEMA(lin, bad)
    ema = ParamEMA(lin, 0.5)
    with pytest.raises(ValueError, match="missing"):
        ema.set_state_dict({"weight": lin.weight})
    with pytest.raises(ValueError, match="shape"):
        ema.set_state_dict({"weight": paddle.zeros([3, 2]), "bias": lin.bias})


def test_training_with_ema(glue_slice, tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    from paddle_bibert.commands import run_glue, task_distill

    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                    "--max_steps", "3"), log=Log())
    args = lambda out, *x: common(glue_slice, "sst-2", out, "--teacher_path", str(tmp_path / "t"),
                                  "--max_steps", "5", "--save_steps", "2", "--learning_rate", "5e-3",
                                  "--bi", *ALL_FLAGS, *x)
    plain = task_distill(args(tmp_path / "plain"), log=Log())

    # record the raw weights after every optimizer step (the average's inputs)
    seen, init = [], {}
    orig_init, orig_update = ParamEMA.__init__, ParamEMA.update

    def spy_init(self, model, decay):
        orig_init(self, model, decay)
        init.update({n: p.numpy().copy() for n, p in self.params})

    def spy_update(self):
        seen.append({n: p.numpy().copy() for n, p in self.params})
        orig_update(self)

    monkeypatch.setattr(ParamEMA, "__init__", spy_init)
    monkeypatch.setattr(ParamEMA, "update", spy_update)
    s = task_distill(args(tmp_path / "ema", "--ema_decay", "0.6"), log=Log())
    monkeypatch.undo()
    assert len(seen) == 5 and s["finished"]

    # training is unchanged: the raw weights end where the plain run's do
    a = paddle.load(str(tmp_path / "plain" / "checkpoint-5" / "model.pdparams"))
    b = paddle.load(str(tmp_path / "ema" / "checkpoint-5" / "model.pdparams"))
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
    assert not os.path.exists(tmp_path / "plain" / "checkpoint-5" / "ema.pdparams")

    # the average, step by step, in float64
    avg, by_step = {n: v.astype(np.float64) for n, v in init.items()}, {}
    for step, raw in enumerate(seen, 1):
        avg = {n: 0.6 * avg[n] + 0.4 * raw[n] for n in avg}
        by_step[step] = avg
    moved = max(np.abs(seen[-1][n] - init[n]).max() for n in init)
    assert moved > 1e-3  # the weights really moved, so the average differs from them
    saved = paddle.load(str(tmp_path / "ema" / "checkpoint-5" / "ema.pdparams"))
    assert set(saved) == set(init)
    for n in init:
        np.testing.assert_allclose(saved[n].numpy(), by_step[5][n], rtol=1e-5, atol=1e-6, err_msg=n)

    # best_model holds the average at the best step, not the raw weights
    best = paddle.load(str(tmp_path / "ema" / "best_model" / "model_state.pdparams"))
    gap = 0.0
    for n in init:
        np.testing.assert_allclose(best[n].numpy(), by_step[s["best_step"]][n], rtol=1e-5, atol=1e-6,
                                   err_msg=n)
        gap = max(gap, np.abs(by_step[s["best_step"]][n] - seen[s["best_step"] - 1][n]).max())
    assert gap > 1e-4

    # stop and resume: the same average as the uninterrupted run
    part = task_distill(args(tmp_path / "r", "--ema_decay", "0.6", "--stop_at_step", "3"), log=Log())
    assert not part["finished"]
    with pytest.raises(ValueError, match="--ema_decay"):
        task_distill(args(tmp_path / "r", "--resume"), log=Log())
    with pytest.raises(ValueError, match="same value"):
        task_distill(args(tmp_path / "r", "--ema_decay", "0.5", "--resume"), log=Log())
    task_distill(args(tmp_path / "r", "--ema_decay", "0.6", "--resume"), log=Log())
    again = paddle.load(str(tmp_path / "r" / "checkpoint-5" / "ema.pdparams"))
    for n in saved:
        np.testing.assert_array_equal(again[n].numpy(), saved[n].numpy(), err_msg=n)
    with pytest.raises(ValueError, match="ema_decay"):
        task_distill(args(tmp_path / "bad", "--ema_decay", "1.5"), log=Log())
