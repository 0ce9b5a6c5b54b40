"""--act_ramp: activations blended from full precision to binary; weights and the bool map binary
throughout; evaluation always on the binary model; the ramp follows the step (resume: test_commands)."""

import numpy as np
import paddle
import pytest

import paddle_bibert.training.trainer as trainer_mod
from paddle_bibert.commands import task_distill
from paddle_bibert.quant import BiLinear, BoolAttention
from paddle_bibert.quant.ramp import ActivationRamp, activation_quantizers
from paddle_bibert.surgery import binarize_model
from test_commands import ALL_FLAGS, Log, common, glue_slice, tiny_model_dir  # noqa: F401  (fixtures)
from test_surgery import IDS, make_model

FP_ACTIVATIONS = {"act_quantizer": "none", "qkv_quantizer": "none", "attention_quantizer": "none",
                  "ffn_out_act_quantizer": "none"}


def _logits(model):
    with paddle.no_grad():
        return model(paddle.to_tensor(IDS)).numpy()


def test_blend_value_and_gradient_against_numpy():
    paddle.seed(0)
    lin = BiLinear(6, 3, act_quantizer="ste_sign")
    ramp = ActivationRamp(lin, 0.5)
    x_np = np.array([[-2.0, -0.7, -0.1, 0.3, 0.9, 1.6]], np.float32)
    for mix in (0.0, 0.25, 1.0):
        ramp.mix = mix
        x = paddle.to_tensor(x_np, stop_gradient=False)
        y = lin.act_quantizer(x)
        y.sum().backward()
        sign = np.where(x_np < 0, -1.0, 1.0)
        np.testing.assert_allclose(y.numpy(), x_np + mix * (sign - x_np), rtol=1e-6)
        # d/dx: (1 - m) + m * 1[|x| <= 1] (the sign's clipped straight-through estimator)
        np.testing.assert_allclose(x.grad.numpy(), (1 - mix) + mix * (np.abs(x_np) <= 1), rtol=1e-6)


def test_mix_zero_is_the_full_precision_activation_model_and_one_the_binary_one():
    binary = binarize_model(make_model(), {"recipe": "bit"})[0]
    plain = _logits(binary)
    fp_act = binarize_model(make_model(), {"recipe": "bit", **FP_ACTIVATIONS})[0]
    ramp = ActivationRamp(binary, 1.0)
    assert ramp.at(0, 10) == 0.0
    np.testing.assert_allclose(_logits(binary), _logits(fp_act), rtol=1e-5, atol=1e-6)
    assert np.abs(plain - _logits(fp_act)).max() > 1e-3  # the two models do differ
    assert ramp.at(5, 10) == 0.5 and ramp.at(10, 10) == 1.0 and ramp.at(12, 10) == 1.0
    np.testing.assert_allclose(_logits(binary), plain, rtol=1e-6)
    ramp.at(0, 10)
    with ramp.binary():  # what evaluation sees
        np.testing.assert_allclose(_logits(binary), plain, rtol=1e-6)
    assert ramp.mix == 0.0


def test_only_activation_quantizers_ramp():
    model = binarize_model(make_model(), {"recipe": "bibert"})[0]
    qs = activation_quantizers(model)
    layers = model.bert.encoder.layers
    # per layer: Q, K, V quantizers and the inputs of the six binarized linears; the pooler's input
    assert len(qs) == len(layers) * (3 + 6) + 1
    assert not any(isinstance(q, BoolAttention) for q in qs)  # Bi-Attention's map stays binary
    weights = {id(m.weight_quantizer) for m in model.sublayers() if hasattr(m, "weight_quantizer")}
    assert not weights & {id(q) for q in qs}
    with pytest.raises(ValueError, match=r"act_ramp must be in \[0, 1\]"):
        ActivationRamp(model, 1.5)
    with pytest.raises(ValueError, match="no activation quantizer"):
        ActivationRamp(make_model(), 0.5)


def test_training_ramps_and_evaluation_is_binary(glue_slice, tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    from paddle_bibert.commands import run_glue

    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir,
                    "--max_steps", "2"), log=Log())
    seen = {"step": [], "eval": []}
    ramps = []
    init = ActivationRamp.__init__

    def spy_init(self, *a, **k):
        init(self, *a, **k)
        ramps.append(self)

    at = ActivationRamp.at
    monkeypatch.setattr(ActivationRamp, "__init__", spy_init)
    monkeypatch.setattr(ActivationRamp, "at", lambda self, s, t: seen["step"].append(at(self, s, t)) or self.mix)
    evaluate = trainer_mod.evaluate
    monkeypatch.setattr(trainer_mod, "evaluate",
                        lambda *a: seen["eval"].append(ramps[0].mix) or evaluate(*a))
    argv = common(glue_slice, "sst-2", tmp_path / "s", "--teacher_path", str(tmp_path / "t"), "--max_steps", "6",
                  "--save_steps", "2", "--bi", "--recipe", "bit", "--act_ramp", "0.5", *ALL_FLAGS)
    task_distill(argv, log=Log())
    # 6 steps, the first half ramped: the mix of each step, then every evaluation at 1
    assert seen["step"] == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
    assert seen["eval"] == [1.0] * 4  # the teacher's, then the student's at steps 2, 4 and 6
    with pytest.raises(ValueError, match=r"--act_ramp must be in \[0, 1\]"):
        task_distill(argv[:-len(ALL_FLAGS) - 1] + ["-0.1", *ALL_FLAGS], log=Log())
    no_bi = [a for a in argv if a not in ("--bi",)]
    with pytest.raises(ValueError, match="pass --bi too"):
        task_distill(no_bi, log=Log())
