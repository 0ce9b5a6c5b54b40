"""``export_packed``: a model binarized with a 1-bit recipe -> a packed ``.bibert`` file.

The file's layout and versions are described in ``format.py``; this module reads a binarized
Paddle model (``binarize_model``'s layers and quantizers) into those tensors, refusing, with a
message naming the module, whatever the format cannot hold. It imports Paddle when called.
"""

from __future__ import annotations

import numpy as np

from .format import (ACT_QUANTIZERS, ELASTIC, LINEARS, MAP_QUANTIZERS, QKV_QUANTIZERS, SUPPORTED_ATTENTION,
                     VOCAB_TENSOR, PackedFile, encode_vocab, required_version, write_packed)
from .pack import nwords, pack_bits

__all__ = ["check_exportable", "export_packed", "pack_model"]

_ROLES = {"act_quantizer": "input quantizer", "weight_quantizer": "weight quantizer",
          "q_quantizer": "Q quantizer", "k_quantizer": "K quantizer",
          "v_quantizer": "V quantizer", "attention_quantizer": "attention-map quantizer"}


def _unsupported(what: str):
    return ValueError(
        f"export_packed: {what}. The packed format holds a BertForSequenceClassification "
        "binarized by binarize_model with a 1-bit recipe (bibert, baseline, bibert_elastic, bit, "
        "binarybert with act_bits 1): 1-bit word embeddings, Q/K/V, attention output, FFN "
        "in/out and pooler, with sign or elastic activations; attention 'bool', "
        "'softmax_sign', or 'softmax' with an elastic_unsigned map; GELU or ReLU FFN. Other "
        "parts must stay full precision only where those recipes keep them so")


def _multibit_quantizers(model):
    """(module path, role, quantizer) of every quantizer whose output is not two-valued
    (``binary = False``: the k-bit LSQ quantizers), in module order."""
    found = []
    for fqn, layer in model.named_sublayers():
        for attr, role in _ROLES.items():
            q = getattr(layer, attr, None)
            if q is None or getattr(q, "binary", True) is not False:
                continue
            found.append((fqn, role, q))
    return found


def check_exportable(model):
    """The model's binarization config and its ``bert`` and ``classifier``, or a ValueError."""
    bcfg = getattr(model, "bibert_config", None)
    if bcfg is None:
        raise _unsupported(f"{type(model).__name__} is not binarized (no bibert_config)")
    recipe = f"{getattr(bcfg, 'recipe', '?')} with act_bits {getattr(bcfg, 'act_bits', '?')}"
    multibit = _multibit_quantizers(model)
    if multibit:
        fqn, role, q = multibit[0]
        bits = getattr(q, "bits", None)
        more = (f"; {len(multibit) - 1} more quantizer(s) of this model are not 1-bit either"
                if len(multibit) > 1 else "")
        raise ValueError(
            f"export_packed: {fqn} {role} {getattr(q, 'name', '') or type(q).__name__} "
            f"({f'{bits}-bit' if bits else 'more than 1 bit'}): recipe {recipe} is not 1-bit; "
            "only 1-bit recipes export packed (act_bits 1: bibert, baseline, bibert_elastic, "
            f"bit, binarybert){more}")
    bert, classifier = getattr(model, "bert", None), getattr(model, "classifier", None)
    if bert is None or classifier is None or not hasattr(bert, "encoder"):
        raise _unsupported(f"{type(model).__name__} is not a BertForSequenceClassification-like "
                           "model (needs .bert with an encoder and .classifier)")
    if getattr(bert, "fuse", False):
        raise _unsupported("fused encoder layers are not supported")
    return bcfg, bert, classifier


class _Packer:
    """Collects the file's tensors, LayerNorm epsilons and per-site quantizer names."""

    def __init__(self):
        from ..quant import quantizers as qz

        self.qz = qz
        self.tensors, self.eps, self.quant = {}, {}, {}

    def put(self, prefix, d):
        self.tensors.update({f"{prefix}.{k}": v for k, v in d.items()})

    def packed_name(self, q):
        """The file's name for quantizer ``q`` (None if the file has none). By exact type: a
        subclass may compute something else; ``elastic_sign_mean`` differs from ``elastic_sign``
        only in how training starts, so it is packed as that."""
        names = {self.qz.SteSign: "ste_sign", self.qz.ElasticSign: "elastic_sign",
                 self.qz.ElasticSignMeanInit: "elastic_sign", self.qz.ElasticUnsigned: "elastic_unsigned"}
        return names.get(type(q))

    def act_quantizer(self, q, what, site, allowed, channels):
        """Record the quantizer of one binarized activation (its name, scale, shift)."""
        name = self.packed_name(q)
        if q is None:
            raise _unsupported(f"{what} is none (a full-precision activation is not 1-bit)")
        if name not in allowed:
            raise _unsupported(f"{what} is {getattr(q, 'name', '') or type(q).__name__}; the "
                               f"packed format takes {' or '.join(allowed)} here")
        self.quant[site] = name
        if name in ELASTIC:
            scale = q.alpha.numpy().astype(np.float32).reshape(-1)
            if scale.shape != (1,):
                raise _unsupported(f"{what}: scale has shape {scale.shape}, not one value")
            self.tensors[f"{site}.scale"] = scale
            if q.shift is not None:
                shift = q.shift.numpy().astype(np.float32)
                if shift.shape != (channels,):
                    raise _unsupported(f"{what}: shift has shape {shift.shape}, expected "
                                       f"({channels},) (one per input channel)")
                self.tensors[f"{site}.shift"] = shift
        return name

    def binary_linear(self, layer, fqn, site):
        from ..quant.layers import BiLinear

        if not isinstance(layer, BiLinear):
            raise _unsupported(f"{fqn} is {type(layer).__name__} (full precision), not BiLinear")
        if type(layer.weight_quantizer) not in (self.qz.ChannelMeanSign, self.qz.TensorMeanSign):
            raise _unsupported(f"{fqn} weight quantizer is {type(layer.weight_quantizer).__name__}"
                               ", not channel_mean_sign or tensor_mean_sign (1 bit + scale)")
        self.act_quantizer(layer.act_quantizer, f"{fqn} input quantizer", f"{site}.input",
                           ACT_QUANTIZERS, layer.weight.shape[0])
        wb = layer.weight_quantizer(layer.weight).numpy()  # [K, N] = alpha_n * sign(wc)
        alpha = np.abs(wb[0]).astype(np.float32)
        if not (np.abs(wb) == alpha[None]).all():
            raise _unsupported(f"{fqn}: quantized weight is not alpha_n * sign(.) per column")
        bias = layer.bias.numpy() if layer.bias is not None else np.zeros(wb.shape[1], np.float32)
        self.put(site, {"bits": pack_bits(np.signbit(wb.T)), "alpha": alpha, "bias": bias.astype(np.float32)})

    def attention(self, att, p, i):
        """Q/K/V and map quantizers of one layer; returns the attention mode."""
        mode = att.attention
        if mode not in SUPPORTED_ATTENTION:
            raise _unsupported(f"{p}.self_attn uses attention={mode!r}, not one of "
                               f"{SUPPORTED_ATTENTION}")
        if att.q_quantizer is None:
            raise _unsupported(f"{p}.self_attn Q/K/V quantizer is none (full precision Q, K, V "
                               "are not 1-bit)")
        for m, q in (("q", att.q_quantizer), ("k", att.k_quantizer), ("v", att.v_quantizer)):
            role = f"{m.upper()} quantizer"
            if mode != "softmax" and self.packed_name(q) == "elastic_sign":
                # With scaled Q/K/V, Paddle's float32 products leave a rounding residue of
                # either sign where the exact score or context is 0, and 1[S > 0] or the next
                # sign decides on it: no file can reproduce those decisions.
                raise _unsupported(f"{p}.self_attn {role} is elastic_sign with attention="
                                   f"{mode!r}; the packed format takes elastic Q/K/V only with "
                                   "BiT's attention='softmax' (here the model would decide "
                                   "ties S = 0 by float32 rounding)")
            self.act_quantizer(q, f"{p}.self_attn {role}", f"layers.{i}.attn.{m}", QKV_QUANTIZERS,
                               att.head_dim)
        self.attention_map(att, p, i, mode)
        return mode

    def attention_map(self, att, p, i, mode):
        aq = att.attention_quantizer
        if mode == "softmax" and aq is None:
            raise _unsupported(f"{p}.self_attn uses attention='softmax' with a full-precision "
                               "map: not 1-bit (BiT binarizes it with elastic_unsigned)")
        want = {"bool": self.qz.BoolAttention, "softmax_sign": self.qz.SteSign,
                "softmax": self.qz.ElasticUnsigned}[mode]
        if type(aq) is not want:
            raise _unsupported(f"{p}.self_attn attention={mode!r} with map quantizer "
                               f"{getattr(aq, 'name', '') or type(aq).__name__}; the packed "
                               f"format takes {MAP_QUANTIZERS[mode]} with this mode")
        if mode == "softmax":
            if aq.shift is not None:
                raise _unsupported(f"{p}.self_attn attention-map quantizer has a shift (one per "
                                   "key position); the packed format takes none")
            self.act_quantizer(aq, f"{p}.self_attn attention-map quantizer", f"layers.{i}.attn.map",
                               ("elastic_unsigned",), None)
        else:
            self.quant[f"layers.{i}.attn.map"] = MAP_QUANTIZERS[mode]

    def layer_norm(self, ln, name):
        from paddle import nn

        if not isinstance(ln, nn.LayerNorm):
            raise _unsupported(f"{name} is {type(ln).__name__}, not LayerNorm")
        self.eps[name] = float(ln._epsilon)
        self.put(name, {"weight": ln.weight.numpy().astype(np.float32), "bias": ln.bias.numpy().astype(np.float32)})

    def embeddings(self, emb):
        from paddle import nn

        from ..quant.layers import BiEmbedding

        we = emb.word_embeddings
        if not isinstance(we, BiEmbedding) or type(we.weight_quantizer) is not self.qz.RowMeanSign:
            raise _unsupported("bert.embeddings.word_embeddings is not a BiEmbedding with "
                               "row_mean_sign")
        eb = we.weight_quantizer(we.weight).numpy()  # [V, H] = alpha_v * sign(row - mean)
        ealpha = np.abs(eb[:, 0]).astype(np.float32)
        if not (np.abs(eb) == ealpha[:, None]).all():
            raise _unsupported("word embedding quantizer is not alpha_row * sign(.)")
        self.tensors["embeddings.word.bits"] = pack_bits(np.signbit(eb))
        self.tensors["embeddings.word.alpha"] = ealpha
        for name in ("position_embeddings", "token_type_embeddings"):
            e = getattr(emb, name)
            if type(e) is not nn.Embedding:
                raise _unsupported(f"bert.embeddings.{name} is {type(e).__name__}; BiBERT keeps "
                                   "it a full-precision nn.Embedding")
        self.tensors["embeddings.position"] = emb.position_embeddings.weight.numpy().astype(np.float32)
        self.tensors["embeddings.token_type"] = emb.token_type_embeddings.weight.numpy().astype(np.float32)
        self.layer_norm(emb.layer_norm, "embeddings.ln")

    def encoder_layer(self, layer, i):
        """One encoder layer; returns its (attention mode, FFN activation)."""
        from paddle.nn import functional as F

        from ..quant.layers import BiMultiHeadAttention

        p = f"bert.encoder.layers.{i}"
        if not isinstance(layer.self_attn, BiMultiHeadAttention):
            raise _unsupported(f"{p}.self_attn is {type(layer.self_attn).__name__}, not BiMultiHeadAttention")
        mode = self.attention(layer.self_attn, p, i)
        if layer.normalize_before:
            raise _unsupported(f"{p} is pre-LayerNorm (normalize_before=True)")
        act = {F.gelu: "gelu", F.relu: "relu"}.get(layer.activation)
        if act is None:
            raise _unsupported(f"{p} activation is {getattr(layer.activation, '__name__', '?')}, not gelu or relu")
        for short, sub in LINEARS.items():
            obj = layer
            for part in sub.split("."):
                obj = getattr(obj, part)
            self.binary_linear(obj, f"{p}.{sub}", f"layers.{i}.{short}")
        self.layer_norm(layer.norm1, f"layers.{i}.ln1")
        self.layer_norm(layer.norm2, f"layers.{i}.ln2")
        return mode, act

    def head(self, bert, classifier):
        from paddle import nn

        if getattr(bert.pooler, "pool_act", "tanh") != "tanh":
            raise _unsupported(f"pooler activation {bert.pooler.pool_act!r} is not tanh")
        self.binary_linear(bert.pooler.dense, "bert.pooler.dense", "pooler")
        if type(classifier) is not nn.Linear:
            raise _unsupported(f"classifier is {type(classifier).__name__}; the runtime keeps the "
                               "task classifier a full-precision nn.Linear")
        self.tensors["classifier.weight"] = classifier.weight.numpy().astype(np.float32)
        self.tensors["classifier.bias"] = classifier.bias.numpy().astype(np.float32)


def text_metadata(tokenizer, num_labels: int, max_positions: int, task=None,
                  max_seq_length=None, labels=None):
    """``(config["tokenizer"], config["task"], vocab tensor)`` of a version-3 file, from a BERT
    WordPiece tokenizer (PaddleNLP's or Hugging Face's: ``get_vocab``, ``do_lower_case`` and
    the special tokens), a GLUE task name (or None: single sentences, labels "0".."n-1"),
    label names overriding the task's, and the maximum length (default: the tokenizer's,
    within the position table)."""
    from ..data.glue import get_task

    index = tokenizer.get_vocab()
    vocab = sorted(index, key=index.get)
    if [index[t] for t in vocab] != list(range(len(vocab))):
        raise ValueError("export_packed: the tokenizer's ids are not 0..n-1")
    tok = {"do_lower_case": bool(getattr(tokenizer, "do_lower_case", True))}
    for key in ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            tok[key] = str(value)
    length = max_seq_length or min(int(getattr(tokenizer, "model_max_length", max_positions)
                                       or max_positions), max_positions)
    if not 3 <= int(length) <= max_positions:
        raise ValueError(f"export_packed: max_seq_length {length} is outside [3, {max_positions}] "
                         "(the model's position table)")
    tok["max_seq_length"] = int(length)
    info = get_task(task) if task else None
    names = list(info.labels) if info and info.labels else None
    if labels is not None:
        names = [str(x) for x in labels]
    elif info is None and num_labels > 1:
        names = [str(i) for i in range(num_labels)]
    if (1 if names is None else len(names)) != num_labels:
        raise ValueError(f"export_packed: {len(names or [])} label names for a model with "
                         f"{num_labels} outputs" + ("" if names else " (a regression model has 1)"))
    task_cfg = {"name": info.name if info else None, "pair": bool(info and info.is_pair),
                "labels": names}
    return tok, task_cfg, encode_vocab(vocab)


def _file_config(bcfg, bert, layers, packer, mode) -> dict:
    """The file's ``config``: the architecture read off the packed tensors, the attention and
    FFN activation (``mode``), LayerNorm epsilons, and the binarization config used."""
    t = packer.tensors
    return {
        "architecture": "BertForSequenceClassification",
        "hidden_size": int(t["embeddings.position"].shape[1]),
        "num_attention_heads": int(layers[0].self_attn.num_heads),
        "num_hidden_layers": len(layers),
        "intermediate_size": int(t["layers.0.ffn_in.alpha"].shape[0]),
        "vocab_size": int(t["embeddings.word.alpha"].shape[0]),
        "max_position_embeddings": int(t["embeddings.position"].shape[0]),
        "type_vocab_size": int(t["embeddings.token_type"].shape[0]),
        "hidden_act": mode[1],
        "pool_act": "tanh",
        "pad_token_id": int(bert.pad_token_id),
        "num_labels": int(t["classifier.bias"].shape[0]),
        "attention": mode[0],
        "layer_norm_eps": packer.eps,
        "binarize": bcfg.to_dict() if hasattr(bcfg, "to_dict") else dict(bcfg),
    }


def export_packed(model, path: str, tokenizer=None, task=None, max_seq_length=None,
                  labels=None) -> dict:
    """Write a model binarized by ``binarize_model`` with a 1-bit recipe as a packed file.

    Every binarized weight is stored as its sign bits plus its full-precision scale per output
    column (``mean_0 |W|``; or ``mean |W|`` repeated, for one scale per matrix), the word
    embedding per row; every elastic activation quantizer as its scale and shift (float32);
    position/token-type embeddings, LayerNorms (with their epsilons), biases and the
    classifier as float32 (see ``format.py`` for the format and its versions).
    Raises ``ValueError`` naming the first module that is not 1-bit (a k-bit recipe such as
    ``bit`` or ``binarybert`` with act_bits 2 or 4 is refused as a whole) or not supported;
    nothing is written then. Returns a summary (``path``, ``bytes``, ``config``, ``version``).

    With ``tokenizer`` the file is self-contained for text (format version 3, see
    :func:`text_metadata` for ``task``, ``max_seq_length`` and ``labels``): the runtime's
    ``predict`` then takes sentences and returns label names. Such a file keeps the first
    ``max_seq_length`` rows of the position table only (the longest input it takes).
    """
    packed = pack_model(model, tokenizer, task, max_seq_length, labels)
    version = required_version(packed.config)
    size = write_packed(path, packed.tensors, packed.config, version)
    return {"path": path, "bytes": size, "config": packed.config, "version": version}


def pack_model(model, tokenizer=None, task=None, max_seq_length=None, labels=None) -> PackedFile:
    """What :func:`export_packed` writes, in memory (the runtime's ``PackedBert`` takes it)."""
    import paddle

    bcfg, bert, classifier = check_exportable(model)
    packer = _Packer()
    layers = list(bert.encoder.layers)
    with paddle.no_grad():
        packer.embeddings(bert.embeddings)
        modes = [packer.encoder_layer(layer, i) for i, layer in enumerate(layers)]
        packer.head(bert, classifier)
    if len({m for m, _ in modes}) > 1:
        raise _unsupported("layers use different attention modes")
    if len({a for _, a in modes}) > 1:
        raise _unsupported("layers use different FFN activations")
    t = packer.tensors
    h = t["embeddings.position"].shape[1]
    cfg = _file_config(bcfg, bert, layers, packer, modes[0])
    if required_version({**cfg, "quantizers": packer.quant}) > 1:
        cfg["quantizers"] = packer.quant  # a version-1 file keeps the version-1 config exactly
    if tokenizer is not None:
        cfg["tokenizer"], cfg["task"], t[VOCAB_TENSOR] = text_metadata(
            tokenizer, cfg["num_labels"], cfg["max_position_embeddings"], task, max_seq_length,
            labels)
        # inputs are cut to max_seq_length tokens: the later position rows are never read
        length = cfg["tokenizer"]["max_seq_length"]
        t["embeddings.position"] = np.ascontiguousarray(t["embeddings.position"][:length])
        cfg["max_position_embeddings"] = length
    elif task is not None or labels is not None or max_seq_length is not None:
        raise ValueError("export_packed: task, labels and max_seq_length describe the text "
                         "input; pass the tokenizer too")
    if t["embeddings.word.bits"].shape[1] != nwords(h):
        raise AssertionError("word embedding bits do not match the hidden size")
    return PackedFile(config=cfg, tensors=t, metadata={})
