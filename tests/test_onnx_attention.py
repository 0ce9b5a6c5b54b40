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

VOCAB, H, HEADS, PAD, LAYERS = 20, 16, 2, 0, 2
M = -2.0  # the mask's fill, far from ONNX Runtime's default -1e4: it must be read off the graph


def _weights(seed):
    rng = np.random.default_rng(seed)
    w = {"emb": rng.normal(0, 1, (VOCAB, H))}
    for layer in range(LAYERS):
        for p in "qkvo":
            w[f"w{p}{layer}"] = rng.normal(0, 0.3, (H, H))  # outputs of a few units
            w[f"b{p}{layer}"] = rng.normal(0, 0.3, H)
    return {k: v.astype(np.float32) for k, v in w.items()}


def paddle_pattern(path, w, offset=0.0, pad_in_mask=PAD, scale=None, axis=-1, axes=(1, 2),
                   mask_offset=0.0, k_perm=(0, 1, 3, 2)):
    """An embedding and LAYERS attention blocks as Paddle exports them; output [B, L, H]."""
    dh = H // HEADS
    c = {"pad": np.array(pad_in_mask, np.int64), "m": np.array([M], np.float32),
         "zero": np.array(mask_offset, np.float32), "axes": np.array(axes, np.int64),
         "split": np.array([0, 0, HEADS, dh], np.int64), "merge": np.array([0, 0, H], np.int64),
         "scale": np.array([scale or dh ** -0.5], np.float32),
         "offset": np.array(offset, np.float32), **w}
    n = [helper.make_node("Equal", ["input_ids", "pad"], ["eq"]),
         helper.make_node("Cast", ["eq"], ["eqf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["eqf", "m"], ["mm"]),
         helper.make_node("Add", ["mm", "zero"], ["ma"]),
         helper.make_node("Unsqueeze", ["ma", "axes"], ["mask"]),
         helper.make_node("Gather", ["emb", "input_ids"], ["x0"])]
    for i in range(LAYERS):
        x = f"x{i}"

        def t(name, i=i):  # this layer's tensor of that name
            return f"{name}_{i}"

        for p in "qkv":
            n += [helper.make_node("MatMul", [x, f"w{p}{i}"], [t(p + "0")]),
                  helper.make_node("Add", [t(p + "0"), f"b{p}{i}"], [t(p + "1")]),
                  helper.make_node("Reshape", [t(p + "1"), "split"], [t(p + "2")]),
                  helper.make_node("Transpose", [t(p + "2")], [t(p + "3")], perm=[0, 2, 1, 3])]
        n += [helper.make_node("Mul", [t("q3"), "scale"], [t("qs")]),
              helper.make_node("Add", [t("qs"), "offset"], [t("qo")]),
              helper.make_node("Transpose", [t("k3")], [t("kt")], perm=list(k_perm)),
              helper.make_node("MatMul", [t("qo"), t("kt")], [t("s")]),
              helper.make_node("Add", [t("s"), "mask"], [t("sm")]),
              helper.make_node("Softmax", [t("sm")], [t("p")], axis=axis),
              helper.make_node("MatMul", [t("p"), t("v3")], [t("ctx")]),
              helper.make_node("Transpose", [t("ctx")], [t("ct")], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", [t("ct"), "merge"], [t("cr")]),
              helper.make_node("MatMul", [t("cr"), f"wo{i}"], [t("o0")]),
              helper.make_node("Add", [t("o0"), f"bo{i}"], [f"x{i + 1}"])]
    graph = helper.make_graph(
        n, "attention", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info(f"x{LAYERS}", TensorProto.FLOAT, [None, None, H])],
        [numpy_helper.from_array(v, k) for k, v in c.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def numpy_attention(w, ids, scale=None):
    """The same blocks by formula: softmax(q k^T * scale + M where a key is padding) v,
    projected, layer after layer."""
    x = w["emb"][ids].astype(np.float64)
    dh = H // HEADS
    for i in range(LAYERS):
        def heads(p, x=x, i=i):
            y = x @ w[f"w{p}{i}"] + w[f"b{p}{i}"]
            return y.reshape(*ids.shape, HEADS, dh).transpose(0, 2, 1, 3)

        s = heads("q") @ heads("k").transpose(0, 1, 3, 2) * (scale or dh ** -0.5)
        s = s + np.where(ids == PAD, M, 0.0)[:, None, None, :]
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ctx = (p @ heads("v")).transpose(0, 2, 1, 3).reshape(*ids.shape, H)
        x = ctx @ w[f"wo{i}"] + w[f"bo{i}"]
    return x


def _run(path, ids):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": ids})[0]


def _ids():
    ids = np.random.default_rng(1).integers(1, VOCAB, (3, 9))
    ids[1, 5:] = PAD
    ids[2, 2:] = PAD
    return ids


def _fused(tmp_path, **change):
    plain, fused = str(tmp_path / "plain.onnx"), str(tmp_path / "fused.onnx")
    w = _weights(0)
    paddle_pattern(plain, w, **change)
    return w, plain, fused, fuse_attention(plain, fused, HEADS, PAD)


def test_fused_attention_gives_the_plain_graphs_outputs(tmp_path):
    import onnx

    w, plain, fused, blocks = _fused(tmp_path)
    assert blocks == [(f"cr_{i}", f"attention_{i}_output") for i in range(LAYERS)]
    ops = [n.op_type for n in onnx.load(fused).graph.node]
    assert ops.count("Attention") == LAYERS and "Softmax" not in ops
    assert ops.count("MatMul") == LAYERS  # only the output projections are left
    for ids in (_ids(), np.random.default_rng(2).integers(1, VOCAB, (2, 6))):
        want = numpy_attention(w, ids)
        np.testing.assert_allclose(_run(plain, ids), want, atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(_run(fused, ids), want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("scale", [None, 0.9])
def test_dynamic_quantization_makes_it_qattention(tmp_path, scale):
    """QAttention keeps the graph's scale and mask fill; INT8 weights and inputs: close to
    numpy on average (about 4% here; a wrong scale is off by 60% or more), not equal."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w, _, fused, _ = _fused(tmp_path, scale=scale)
    quantize_dynamic(fused, str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8)
    nodes = [n for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node
             if n.op_type == "QAttention"]
    assert len(nodes) == LAYERS
    for n in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["mask_filter_value"] == M
        assert attrs["scale"] == pytest.approx(scale or (H // HEADS) ** -0.5)
    got, want = _run(str(tmp_path / "int8.onnx"), _ids()), numpy_attention(w, _ids(), scale)
    assert np.abs(got - want).mean() < 0.1 * np.abs(want).mean()


@pytest.mark.parametrize("change, message", [
    (dict(offset=0.5), "Add of offset"),
    (dict(pad_in_mask=3), "mask is not"),
    (dict(axis=2), "softmax over axis 2"),
    (dict(axes=(1, 3)), "Unsqueeze axes"),
    (dict(mask_offset=[[0.0, 5.0]]), "mask has an offset"),
    (dict(k_perm=(0, 1, 2, 3)), "transposes"),
])
def test_other_patterns_are_refused(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        _fused(tmp_path, **change)


def test_a_head_count_the_graph_does_not_split_into_is_refused(tmp_path):
    paddle_pattern(str(tmp_path / "plain.onnx"), _weights(0))
    with pytest.raises(ValueError, match="heads split"):
        fuse_attention(str(tmp_path / "plain.onnx"), str(tmp_path / "f.onnx"), 2 * HEADS, PAD)


def test_the_graphs_own_score_scale_is_kept(tmp_path):
    """A scale other than 1/sqrt(head size) is read off the graph, not assumed."""
    w, plain, fused, _ = _fused(tmp_path, scale=0.9)
    np.testing.assert_allclose(_run(fused, _ids()), numpy_attention(w, _ids(), 0.9), atol=2e-4,
                               rtol=1e-4)
