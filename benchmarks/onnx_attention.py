"""ONNX Runtime's fused attention for a BERT graph written by ``paddle.onnx.export``.

ONNX Runtime's BERT optimizer fuses the embeddings, LayerNorms and GELUs of that graph but not
its attention: Paddle scales the queries before their product with the keys, transposes the keys
twice and builds the key mask from ``input_ids``, and none of that matches the optimizer's
attention patterns (they follow PyTorch's export). Without the fusion ONNX Runtime runs each
head's products as separate MatMuls, and ``quantize_dynamic`` leaves them in FP32; with it the
attention is one ``com.microsoft.Attention`` node, which ``quantize_dynamic`` turns into
``QAttention``. :func:`fuse_attention` rewrites each layer's attention, from its three
projections to the context's reshape, as that node: the Q, K and V weights side by side, the
score scale read off the graph, the key mask ``input_ids != pad``.

Only the pattern Paddle writes is matched (anything else is a ``ValueError``); the caller checks
the fused graph's outputs against the plain graph's.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MASK = "attention_key_mask"  # [B, L] int32: 1 for a real token, 0 for padding


def fuse_attention(src: str, dst: str, num_heads: int, pad_token_id: int,
                   ids_input: str = "input_ids") -> int:
    """Write ``src`` with every attention block as one Attention node to ``dst``; return the
    number of blocks fused."""
    model = onnx.load(src)
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    made = {o: n for n in graph.node for o in n.output}
    users = {}
    for n in graph.node:
        for x in n.input:
            users.setdefault(x, []).append(n)

    fused, new_inits, rename = {}, [], {}
    for k, softmax in enumerate(n for n in graph.node if n.op_type == "Softmax"):
        block = _attention_block(softmax, made, users, consts, (ids_input, pad_token_id))
        w = np.concatenate([block["q"][1], block["k"][1], block["v"][1]], axis=1)
        b = np.concatenate([block["q"][2], block["k"][2], block["v"][2]])
        names = (f"attention_{k}_qkv_weight", f"attention_{k}_qkv_bias")
        new_inits += [numpy_helper.from_array(w.astype(np.float32), names[0]),
                      numpy_helper.from_array(b.astype(np.float32), names[1])]
        out = f"attention_{k}_output"
        # where the context's reshape was: every input of the new node is made by then
        fused[block["end"].output[0]] = helper.make_node(
            "Attention", [block["x"], *names, MASK], [out], name=f"Attention_{k}",
            domain="com.microsoft", num_heads=num_heads, scale=block["scale"],
            mask_filter_value=block["mask_value"])
        rename[block["end"].output[0]] = out
        # its type, which ONNX's shape inference cannot give a com.microsoft node (and
        # quantize_dynamic needs for the products after it)
        graph.value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    if not fused:
        raise ValueError(f"{src}: no attention block (Softmax) found")

    nodes = [helper.make_node("Equal", [ids_input, "attention_pad_id"], ["attention_is_pad"]),
             helper.make_node("Not", ["attention_is_pad"], ["attention_not_pad"]),
             helper.make_node("Cast", ["attention_not_pad"], [MASK], to=TensorProto.INT32)]
    new_inits.append(numpy_helper.from_array(np.array(pad_token_id, np.int64), "attention_pad_id"))
    for n in graph.node:
        nodes.append(fused.get(n.output[0], n))
        for i, x in enumerate(n.input):
            n.input[i] = rename.get(x, x)
    nodes = _live(nodes, {o.name for o in graph.output})
    del graph.node[:]
    graph.node.extend(nodes)
    used = {x for n in nodes for x in n.input}
    inits = [i for i in list(graph.initializer) + new_inits if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, dst)
    return len(fused)


def _live(nodes, outputs):
    """The nodes some graph output depends on, in their order."""
    needed, live = set(outputs), []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            live.append(n)
            needed.update(n.input)
    return live[::-1]


def _attention_block(softmax, made, users, consts, pad):
    """One attention block around ``softmax``: its input x, each projection's (x, weight, bias),
    the score scale, the mask's fill value and the node whose output is the block's."""
    where = f"attention block at {softmax.name or softmax.output[0]}"

    def one(name, op):
        node = made.get(name)
        if node is None or node.op_type != op:
            raise ValueError(f"{where}: expected {op} making {name}, found "
                             f"{node.op_type if node else 'a graph input'}")
        return node

    def scalar(name):
        v = consts.get(name)
        return float(v) if v is not None and v.size == 1 else None

    def user(name, op):
        found = [n for n in users.get(name, []) if n.op_type == op]
        if len(found) != 1:
            raise ValueError(f"{where}: expected one {op} reading {name}")
        return found[0]

    def projection(name):
        """Back from a head-split operand to MatMul(x, W) + b, through Transpose/Reshape and
        scalar Mul/Add (the scale Paddle puts on the queries): (x, W, b), scale."""
        scale, node = 1.0, made.get(name)
        while node is not None and node.op_type in ("Transpose", "Reshape", "Mul", "Add"):
            s = scalar(node.input[1]) if node.op_type in ("Mul", "Add") else None
            if node.op_type == "Mul":
                if s is None:
                    raise ValueError(f"{where}: a product of tensors on the way to {name}")
                scale *= s
            elif node.op_type == "Add" and s is not None:
                if s != 0.0:
                    raise ValueError(f"{where}: a scores offset of {s}")
            elif node.op_type == "Add":  # the projection's bias
                mm = one(node.input[0], "MatMul")
                if mm.input[1] not in consts or node.input[1] not in consts:
                    raise ValueError(f"{where}: a projection without constant weights")
                return (mm.input[0], consts[mm.input[1]], consts[node.input[1]]), scale
            node = made.get(node.input[0])
        raise ValueError(f"{where}: no MatMul + bias behind {name}")

    add = one(softmax.input[0], "Add")
    scores = one(add.input[0], "MatMul")
    q, q_scale = projection(scores.input[0])
    k, k_scale = projection(scores.input[1])
    context = user(softmax.output[0], "MatMul")
    v, v_scale = projection(context.input[1])
    if not q[0] == k[0] == v[0]:
        raise ValueError(f"{where}: Q, K and V read different inputs")
    if v_scale != 1.0:
        raise ValueError(f"{where}: values scaled by {v_scale}")
    end = user(user(context.output[0], "Transpose").output[0], "Reshape")
    return {"x": q[0], "q": q, "k": k, "v": v, "scale": q_scale * k_scale,
            "mask_value": _mask_value(add.input[1], made, consts, pad, where), "end": end}


def _mask_value(name, made, consts, pad, where):
    """The additive mask Paddle builds, unsqueeze(cast(input_ids == pad) * m + 0): m."""
    node = made.get(name)
    while node is not None and node.op_type in ("Unsqueeze", "Add", "Cast"):
        if node.op_type == "Add" and float(consts.get(node.input[1], np.ones(1)).ravel()[0]):
            break
        node = made.get(node.input[0])
    m = consts.get(node.input[1]) if node is not None and node.op_type == "Mul" else None
    cast = made.get(node.input[0]) if m is not None else None
    equal = made.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
    v = consts.get(equal.input[1]) if equal is not None and equal.op_type == "Equal" else None
    if (m is None or m.size != 1 or v is None or v.size != 1 or equal.input[0] != pad[0]
            or int(v) != pad[1]):
        raise ValueError(f"{where}: the scores' mask is not cast({pad[0]} == {pad[1]}) * m")
    return float(m.ravel()[0])
