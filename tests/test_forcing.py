"""--teacher_forcing: each student layer's input blended from the teacher's mapped hidden state
to the student's own, by a weight that falls with the step; evaluation sees the plain student."""

import numpy as np
import paddle
import pytest

import paddle_bibert.training.trainer as trainer_mod
from paddle_bibert import Taps, binarize_model
from paddle_bibert.commands import task_distill
from paddle_bibert.distill.distiller import DistillConfig, Distiller
from paddle_bibert.distill.forcing import TeacherForcing
from test_commands import ALL_FLAGS, Log, common, glue_slice, tiny_model_dir  # noqa: F401  (fixtures)
from test_surgery import IDS, make_model

MSE = DistillConfig(pred_distill=True, intermediate_distill=True, hidden_loss="mse", gold_weight=0)


def _batch():
    ids = paddle.to_tensor(IDS)
    return {"input_ids": ids, "token_type_ids": paddle.zeros_like(ids), "labels": paddle.to_tensor([0, 1, 1])}


def test_weight_falls_linearly_over_the_fraction():
    f = TeacherForcing(0.5)
    assert [f.at(s, 10) for s in (0, 1, 4, 5, 9)] == pytest.approx([1.0, 0.8, 0.2, 0.0, 0.0])
    assert TeacherForcing(1.0).at(5, 10) == 0.5
    assert TeacherForcing(0.0).at(0, 10) == 0.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"--teacher_forcing must be in \[0, 1\]"):
            TeacherForcing(bad)


def _reference_states(student, teacher_states, w, k):
    """The student's hidden states with layer j fed w t[j k] + (1 - w) x_j, by calling its layers
    one after the other (the mask as BertModel builds it from the padding)."""
    ids = paddle.to_tensor(IDS)
    mask = paddle.unsqueeze((ids == 0).astype("float32") * -1e4, axis=[1, 2])
    with Taps(student, ("hidden",)) as taps:
        student(ids, token_type_ids=paddle.zeros_like(ids))
    x = taps.records["hidden"][0]
    states = [x]
    for j, layer in enumerate(student.bert.encoder.layers):
        x = layer(w * teacher_states[j * k] + (1 - w) * x, src_mask=mask)
        states.append(x)
    return states


@pytest.mark.parametrize("w", [1.0, 0.3])
def test_forced_student_layers_take_the_blend_of_mapped_teacher_states(w):
    teacher = make_model(seed=7, num_hidden_layers=4)
    student = make_model(seed=8, num_hidden_layers=2)
    student.eval()  # no dropout: the reference below recomputes the same forward
    forcing = TeacherForcing(1.0)
    forcing.weight = w
    d = Distiller(student, teacher, MSE, forcing=forcing)
    _, t_rec = d.teacher_forward(_batch())
    _, s_rec = d.student_forward(_batch(), t_rec)
    ref = _reference_states(student, t_rec["hidden"], w, k=2)
    for got, want in zip(s_rec["hidden"], ref):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    # the hooks are gone afterwards: a plain forward is the unforced student
    _, plain = d._forward(student, d.student_taps, _batch())
    assert np.abs(plain["hidden"][2].numpy() - s_rec["hidden"][2].numpy()).max() > 1e-3


def test_at_weight_one_a_layer_learns_from_the_teacher_input_alone():
    """Layer 1's output, and so its loss term, no longer depends on layer 0."""
    teacher = make_model(seed=7, num_hidden_layers=2)
    outs = []
    for seed in (8, 9):  # two students whose layer 0 differs
        student = make_model(seed=8, num_hidden_layers=2)
        if seed == 9:
            student.bert.encoder.layers[0].linear1.weight.set_value(
                student.bert.encoder.layers[0].linear1.weight * -1.0)
        student.eval()
        forcing = TeacherForcing(1.0)
        d = Distiller(student, teacher, MSE, forcing=forcing)
        _, t_rec = d.teacher_forward(_batch())
        _, s_rec = d.student_forward(_batch(), t_rec)
        outs.append([h.numpy() for h in s_rec["hidden"]])
    assert np.abs(outs[0][1] - outs[1][1]).max() > 1e-3  # layer 0's outputs differ ...
    np.testing.assert_allclose(outs[0][2], outs[1][2], rtol=1e-6)  # ... layer 1's do not


def test_weight_zero_is_the_plain_loss_and_gradients_reach_every_layer():
    teacher = make_model(seed=7, num_hidden_layers=4)
    student = binarize_model(make_model(seed=8, num_hidden_layers=2), {"recipe": "bit"})[0]
    student.eval()
    forcing = TeacherForcing(0.5)
    forced = Distiller(student, teacher, MSE, forcing=forcing)
    plain = Distiller(student, teacher, MSE)
    forcing.at(5, 10)  # past the fraction: weight 0
    assert float(forced(_batch())[0]) == float(plain(_batch())[0])
    forcing.at(0, 10)
    total, terms = forced(_batch())
    assert float(total) != float(plain(_batch())[0])
    total.backward()
    for layer in student.bert.encoder.layers:
        assert np.abs(layer.linear1.weight.grad.numpy()).sum() > 0


def test_pred_only_loss_still_forces():
    """Without the hidden-state term the teacher's taps record the hidden states for forcing."""
    teacher = make_model(seed=7, num_hidden_layers=2)
    student = make_model(seed=8, num_hidden_layers=2)
    student.eval()
    forcing = TeacherForcing(1.0)
    pred = DistillConfig(pred_distill=True, gold_weight=0)
    forced, plain = Distiller(student, teacher, pred, forcing=forcing), Distiller(student, teacher, pred)
    assert float(forced(_batch())[0]) != pytest.approx(float(plain(_batch())[0]), rel=1e-4)


def test_training_follows_the_schedule_and_evaluates_the_plain_student(glue_slice, tiny_model_dir, tmp_path,  # noqa: F811
                                                                       monkeypatch):
    from paddle_bibert.commands import run_glue

    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                    "--max_steps", "2"), log=Log())
    seen = {"step": [], "eval": []}
    forcings = []
    init, at = TeacherForcing.__init__, TeacherForcing.at

    def spy_init(self, *a, **k):
        init(self, *a, **k)
        forcings.append(self)

    applied = TeacherForcing.applied
    used = []
    monkeypatch.setattr(TeacherForcing, "__init__", spy_init)
    monkeypatch.setattr(TeacherForcing, "at", lambda self, s, t: seen["step"].append(at(self, s, t)) or self.weight)
    monkeypatch.setattr(TeacherForcing, "applied", lambda self, *a: used.append(self.weight) or applied(self, *a))
    evaluate = trainer_mod.evaluate
    n_used = []
    monkeypatch.setattr(trainer_mod, "evaluate", lambda *a: n_used.append(len(used)) or evaluate(*a))
    argv = common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", str(tmp_path / "t"), "--max_steps", "6",
                  "--save_steps", "2", "--bi", "--recipe", "bit", "--teacher_forcing", "0.5", *ALL_FLAGS)
    task_distill(argv, log=Log())
    assert seen["step"] == pytest.approx([1, 2 / 3, 1 / 3, 0, 0, 0])
    assert used == seen["step"]  # each training forward forced at its step's weight ...
    assert n_used == [0, 2, 4, 6]  # ... and no evaluation forward went through the forcing
    bad = argv[:-len(ALL_FLAGS) - 1] + ["1.5", *ALL_FLAGS]
    with pytest.raises(ValueError, match=r"--teacher_forcing must be in \[0, 1\]"):
        task_distill(bad, log=Log())
