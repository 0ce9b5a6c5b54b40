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

Only the pattern Paddle writes is matched: each head split and merge, transpose, softmax axis and
mask is checked, and anything else is a ``ValueError``. The caller also compares the fused
graph's outputs with the unfused graph's.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MASK = "attention_key_mask"  # [B, L] int32: 1 for a real token, 0 for padding


def fuse_attention(src: str, dst: str, num_heads: int, pad_token_id: int,
                   ids_input: str = "input_ids") -> list:
    """Write ``src`` with every attention block as one Attention node to ``dst``; return, per
    block, the name of its output in ``src`` and in ``dst``."""
    model = onnx.load(src)
    graph = model.graph
    g = _Graph(graph, num_heads, (ids_input, pad_token_id))
    fused, new_inits, rename = {}, [], {}
    for k, softmax in enumerate(n for n in graph.node if n.op_type == "Softmax"):
        block = g.attention_block(softmax)
        w = np.concatenate([block["q"][1], block["k"][1], block["v"][1]], axis=1)
        b = np.concatenate([block["q"][2], block["k"][2], block["v"][2]])
        names = (f"attention_{k}_qkv_weight", f"attention_{k}_qkv_bias")
        new_inits += [numpy_helper.from_array(w.astype(np.float32), names[0]),
                      numpy_helper.from_array(b.astype(np.float32), names[1])]
        out = f"attention_{k}_output"
        # where the context's reshape was: every input of the new node is made by then
        fused[block["end"]] = helper.make_node(
            "Attention", [block["x"], *names, MASK], [out], name=f"Attention_{k}",
            domain="com.microsoft", num_heads=num_heads, scale=block["scale"],
            mask_filter_value=block["mask_value"])
        rename[block["end"]] = out
        # its type, which ONNX's shape inference cannot give a com.microsoft node (and
        # quantize_dynamic needs for the products after it)
        graph.value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    if not fused:
        raise ValueError(f"{src}: no attention block (Softmax) found")
    if any(o.name in rename for o in graph.output):
        raise ValueError(f"{src}: an attention block's output is a graph output")

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
    made = {o for n in nodes for o in n.output}
    infos = [v for v in graph.value_info if v.name in made]  # none for tensors dropped
    del graph.value_info[:]
    graph.value_info.extend(infos)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, dst)
    return list(rename.items())


def _live(nodes, outputs):
    """The nodes some graph output depends on, in their order."""
    needed, live = set(outputs), []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            live.append(n)
            needed.update(n.input)
    return live[::-1]


def _net_perm(perms):
    """The permutation of axes that Transposes applied in order give."""
    axes = list(range(4))
    for p in perms:
        axes = [axes[i] for i in p]
    return tuple(axes)


class _Graph:
    """Look-ups over one graph, and the match of one attention block in it."""

    def __init__(self, graph, num_heads, pad):
        self.consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.made = {o: n for n in graph.node for o in n.output}
        self.users = {}
        for n in graph.node:
            for x in n.input:
                self.users.setdefault(x, []).append(n)
        self.num_heads, self.pad = num_heads, pad
        self.where = ""

    def fail(self, what):
        raise ValueError(f"attention block at {self.where}: {what}")

    def one(self, name, op):
        """The node making ``name``, which must be an ``op``."""
        node = self.made.get(name)
        if node is None or node.op_type != op:
            self.fail(f"expected {op} making {name}, found "
                      f"{node.op_type if node else 'no node (a graph input or constant)'}")
        return node

    def user(self, name, op, slot):
        """The one ``op`` reading ``name`` as its input ``slot``."""
        found = [n for n in self.users.get(name, []) if n.op_type == op]
        if len(found) != 1 or found[0].input[slot] != name:
            self.fail(f"expected one {op} reading {name} as its input {slot}")
        return found[0]

    def const(self, name):
        v = self.consts.get(name)
        if v is None:
            self.fail(f"{name} is not a constant")
        return v

    def scalar(self, name):
        v = self.consts.get(name)
        return float(v.ravel()[0]) if v is not None and v.size == 1 else None

    def attention_block(self, softmax):
        """The block around ``softmax``: its input x, each projection's (x, weight, bias), the
        score scale, the mask's fill value, and the name of the block's output."""
        self.where = softmax.name or softmax.output[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in softmax.attribute}
        if attrs.get("axis", -1) not in (-1, 3):
            self.fail(f"softmax over axis {attrs['axis']}, not the keys'")
        add = self.one(softmax.input[0], "Add")
        scores = self.one(add.input[0], "MatMul")
        q, q_scale = self.projection(scores.input[0], (0, 2, 1, 3))
        k, k_scale = self.projection(scores.input[1], (0, 2, 3, 1))
        context = self.user(softmax.output[0], "MatMul", 0)
        v, v_scale = self.projection(context.input[1], (0, 2, 1, 3))
        if not q[0] == k[0] == v[0]:
            self.fail("Q, K and V read different inputs")
        if v_scale != 1.0:
            self.fail(f"values scaled by {v_scale}")
        merge = self.user(context.output[0], "Transpose", 0)
        if _net_perm([_perm(merge)]) != (0, 2, 1, 3):
            self.fail(f"heads merged through perm {_perm(merge)}")
        end = self.user(merge.output[0], "Reshape", 0)
        hidden = q[1].shape[1]
        if list(self.const(end.input[1])[2:]) != [hidden] and \
                list(self.const(end.input[1])) != [0, 0, hidden]:
            self.fail(f"heads merged to shape {list(self.const(end.input[1]))}")
        return {"x": q[0], "q": q, "k": k, "v": v, "scale": q_scale * k_scale,
                "mask_value": self.mask_value(add.input[1]), "end": end.output[0]}

    def projection(self, name, perm):
        """Back from a head-split operand to MatMul(x, W) + b, through Reshape [B, L, heads,
        head size], Transposes whose net permutation must be ``perm``, and scalar Mul/Add (the
        scale Paddle puts on the queries): (x, W, b), scale."""
        scale, perms, node = 1.0, [], self.made.get(name)
        while node is not None and node.op_type in ("Transpose", "Mul", "Add"):
            s = self.scalar(node.input[1]) if node.op_type != "Transpose" else None
            if node.op_type == "Transpose":
                perms.append(_perm(node))
            elif node.op_type == "Mul" and s is not None:
                scale *= s
            elif node.op_type == "Add" and s == 0.0:
                pass
            else:
                self.fail(f"{node.op_type} of {node.input[1]} on the way to {name}")
            node = self.made.get(node.input[0])
        if node is None or node.op_type != "Reshape":
            self.fail(f"no head split (Reshape) behind {name}")
        if _net_perm(perms[::-1]) != perm:
            self.fail(f"transposes {perms[::-1]} to {name}, not {perm}")
        split = [int(d) for d in self.const(node.input[1])]
        bias_add = self.one(node.input[0], "Add")
        mm = self.one(bias_add.input[0], "MatMul")
        w, b = self.const(mm.input[1]), self.const(bias_add.input[1])
        heads = self.num_heads
        if w.ndim != 2 or b.shape != (w.shape[1],) or w.shape[1] % heads or \
                split[2:] != [heads, w.shape[1] // heads]:
            self.fail(f"heads split to {split} for {heads} heads of a {w.shape} projection")
        return (mm.input[0], w, b), scale

    def mask_value(self, name):
        """The additive mask Paddle builds, unsqueeze(cast(input_ids == pad) * m + 0, [1, 2]): m."""
        unsq = self.one(name, "Unsqueeze")
        if [int(a) for a in self.const(unsq.input[1])] != [1, 2]:
            self.fail("the mask is not spread over heads and queries (Unsqueeze axes 1, 2)")
        add = self.one(unsq.input[0], "Add")
        if np.any(self.const(add.input[1]) != 0):
            self.fail("the mask has an offset")
        mul = self.one(add.input[0], "Mul")
        m = self.const(mul.input[1])
        equal = self.one(self.one(mul.input[0], "Cast").input[0], "Equal")
        pad = self.consts.get(equal.input[1])
        if m.size != 1 or equal.input[0] != self.pad[0] or pad is None or pad.size != 1 or \
                int(pad) != self.pad[1]:
            self.fail(f"the scores' mask is not cast({self.pad[0]} == {self.pad[1]}) * m")
        return float(m.ravel()[0])


def _perm(node):
    return tuple(helper.get_attribute_value(a) for a in node.attribute if a.name == "perm")[0]
