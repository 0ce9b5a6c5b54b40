"""benchmarks/onnx_attention.py: a BERT attention block in the pattern ``paddle.onnx.export``
writes (queries scaled before the scores, keys transposed twice, the mask from input_ids),
rewritten as ONNX Runtime's Attention node, gives the plain graph's outputs (and numpy's), on
padded and unpadded batches; quantize_dynamic makes it QAttention; other patterns are refused."""

import os
import sys

import numpy as np
import onnxruntime as ort  # in the test pin set (requirements-cpu.txt), not the runtime's
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from onnx_attention import fuse_attention  # noqa: E402

VOCAB, H, HEADS, PAD = 20, 16, 2, 0


def _weights(seed):
    rng = np.random.default_rng(seed)
    w = {"emb": rng.normal(0, 1, (VOCAB, H))}
    for p in "qkvo":
        w[f"w{p}"] = rng.normal(0, 0.5, (H, H))
        w[f"b{p}"] = rng.normal(0, 0.5, H)
    return {k: v.astype(np.float32) for k, v in w.items()}


def paddle_pattern(path, w, offset=0.0, pad_in_mask=PAD, scale=None):
    """One embedding and one attention block as Paddle exports them; output [B, L, H]."""
    dh = H // HEADS
    c = {"pad": np.array(pad_in_mask, np.int64), "m": np.array([-1e4], np.float32),
         "zero": np.array(0.0, np.float32), "axes": np.array([1, 2], np.int64),
         "split": np.array([0, 0, HEADS, dh], np.int64), "merge": np.array([0, 0, H], np.int64),
         "scale": np.array([scale or dh ** -0.5], np.float32),
         "offset": np.array(offset, np.float32), **w}
    n = [helper.make_node("Equal", ["input_ids", "pad"], ["eq"]),
         helper.make_node("Cast", ["eq"], ["eqf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["eqf", "m"], ["mm"]),
         helper.make_node("Add", ["mm", "zero"], ["ma"]),
         helper.make_node("Unsqueeze", ["ma", "axes"], ["mask"]),
         helper.make_node("Gather", ["emb", "input_ids"], ["x"])]
    for p in "qkv":
        n += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}0"]),
              helper.make_node("Add", [f"{p}0", f"b{p}"], [f"{p}1"]),
              helper.make_node("Reshape", [f"{p}1", "split"], [f"{p}2"]),
              helper.make_node("Transpose", [f"{p}2"], [f"{p}3"], perm=[0, 2, 1, 3])]
    n += [helper.make_node("Mul", ["q3", "scale"], ["qs"]),
          helper.make_node("Add", ["qs", "offset"], ["qo"]),
          helper.make_node("Transpose", ["k3"], ["kt"], perm=[0, 1, 3, 2]),
          helper.make_node("MatMul", ["qo", "kt"], ["s"]),
          helper.make_node("Add", ["s", "mask"], ["sm"]),
          helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
          helper.make_node("MatMul", ["p", "v3"], ["ctx"]),
          helper.make_node("Transpose", ["ctx"], ["ct"], perm=[0, 2, 1, 3]),
          helper.make_node("Reshape", ["ct", "merge"], ["cr"]),
          helper.make_node("MatMul", ["cr", "wo"], ["o0"]),
          helper.make_node("Add", ["o0", "bo"], ["out"])]
    graph = helper.make_graph(
        n, "attention", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, None, H])],
        [numpy_helper.from_array(v, k) for k, v in c.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def numpy_attention(w, ids):
    """The same block by formula: softmax(q k^T / sqrt(dh), padded keys out) v, projected."""
    x = w["emb"][ids].astype(np.float64)
    dh = H // HEADS

    def heads(p):
        y = x @ w[f"w{p}"] + w[f"b{p}"]
        return y.reshape(*ids.shape, HEADS, dh).transpose(0, 2, 1, 3)

    s = heads("q") @ heads("k").transpose(0, 1, 3, 2) / np.sqrt(dh)
    s = s + np.where(ids == PAD, -1e4, 0.0)[:, None, None, :]
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = (p @ heads("v")).transpose(0, 2, 1, 3).reshape(*ids.shape, H)
    return ctx @ w["wo"] + w["bo"]


def _run(path, ids):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": ids})[0]


def _ids():
    ids = np.random.default_rng(1).integers(1, VOCAB, (3, 9))
    ids[1, 5:] = PAD
    ids[2, 2:] = PAD
    return ids


def test_fused_attention_gives_the_plain_graphs_outputs(tmp_path):
    w = _weights(0)
    plain, fused = str(tmp_path / "plain.onnx"), str(tmp_path / "fused.onnx")
    paddle_pattern(plain, w)
    assert fuse_attention(plain, fused, HEADS, PAD) == 1
    import onnx

    ops = [n.op_type for n in onnx.load(fused).graph.node]
    assert ops.count("Attention") == 1 and "Softmax" not in ops and ops.count("MatMul") == 1
    for ids in (_ids(), np.random.default_rng(2).integers(1, VOCAB, (2, 6))):
        want = numpy_attention(w, ids)
        np.testing.assert_allclose(_run(plain, ids), want, atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(_run(fused, ids), want, atol=2e-4, rtol=1e-4)


def test_dynamic_quantization_makes_it_qattention(tmp_path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = _weights(3)
    paddle_pattern(str(tmp_path / "plain.onnx"), w)
    fuse_attention(str(tmp_path / "plain.onnx"), str(tmp_path / "fused.onnx"), HEADS, PAD)
    quantize_dynamic(str(tmp_path / "fused.onnx"), str(tmp_path / "int8.onnx"),
                     weight_type=QuantType.QInt8)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node]
    assert "QAttention" in ops
    got, want = _run(str(tmp_path / "int8.onnx"), _ids()), numpy_attention(w, _ids())
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # INT8 weights: close, not equal


@pytest.mark.parametrize("change, message", [
    (dict(offset=0.5), "scores offset"),
    (dict(pad_in_mask=3), "mask is not"),
])
def test_other_patterns_are_refused(tmp_path, change, message):
    paddle_pattern(str(tmp_path / "plain.onnx"), _weights(0), **change)
    with pytest.raises(ValueError, match=message):
        fuse_attention(str(tmp_path / "plain.onnx"), str(tmp_path / "fused.onnx"), HEADS, PAD)


def test_the_graphs_own_score_scale_is_kept(tmp_path):
    """A scale other than 1/sqrt(head size) is read off the graph, not assumed."""
    w = _weights(4)
    plain, fused = str(tmp_path / "plain.onnx"), str(tmp_path / "fused.onnx")
    paddle_pattern(plain, w, scale=0.9)
    fuse_attention(plain, fused, HEADS, PAD)
    np.testing.assert_allclose(_run(fused, _ids()), _run(plain, _ids()), atol=2e-4, rtol=1e-4)
