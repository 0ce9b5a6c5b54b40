"""The packed BiBERT file (``.bibert``): a safetensors file with bit-packed binary weights.

Layout: a standard safetensors file (8-byte little-endian header length, JSON header, tensor
bytes), readable by any safetensors reader. Its ``__metadata__`` holds:

    format          "bibert-packed"                 (the magic)
    format_version  "1"
    config          JSON: architecture, hidden_size, num_attention_heads, num_hidden_layers,
                    intermediate_size, vocab_size, max_position_embeddings, type_vocab_size,
                    hidden_act, pool_act, pad_token_id, num_labels, attention ("bool" or
                    "softmax_sign"), layer_norm_eps {LayerNorm name: epsilon}, binarize
                    (the BinarizeConfig used)
    payload_sha256  SHA-256 over the tensors, see :func:`payload_sha256`

Tensors (``N`` outputs, ``K`` inputs of a binarized linear; Paddle weight ``W`` is ``[K, N]``):

    <linear>.bits   uint64 [N, ceil(K/64)]  sign bits of W[:, n] - mean_0(W)[n], packed along K
    <linear>.alpha  float32 [N]            alpha_n = mean_k |W[k, n]|    (per output channel)
    <linear>.bias   float32 [N]
        so that  W_b[k, n] = alpha_n * sign(W[k, n] - mean_0(W)[n])   (sign: signbit -> -1)
    embeddings.word.bits  uint64 [V, ceil(H/64)]   sign bits of E[v] - mean(E[v])
    embeddings.word.alpha float32 [V]              mean |E[v]|
    embeddings.position, embeddings.token_type     float32 tables
    embeddings.ln.weight/.bias, layers.<i>.ln1/.ln2.weight/.bias    float32 LayerNorms
    classifier.weight float32 [H, num_labels] (Paddle layout), classifier.bias

with <linear> one of ``layers.<i>.{q,k,v,out,ffn_in,ffn_out}`` and ``pooler``. Bits and
scales are taken from the binarized model's own quantizer output (so they are exactly what
its forward multiplies by); bit layout as in ``paddle_bibert.export.pack``.

Reading (:func:`read_packed`) needs only numpy and safetensors; :func:`export_packed` imports
Paddle when called.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Dict

import numpy as np

from .pack import nwords, pack_bits

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PackedFile", "PackedFormatError", "export_packed",
           "read_packed", "write_packed", "payload_sha256", "LINEARS", "SUPPORTED_ATTENTION"]

FORMAT_NAME = "bibert-packed"
FORMAT_VERSION = 1
#: Attention modes whose map is binary, so the whole encoder runs on bits.
SUPPORTED_ATTENTION = ("bool", "softmax_sign")
#: Binarized linears of one encoder layer: file name -> Paddle sublayer path.
LINEARS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
           "out": "self_attn.out_proj", "ffn_in": "linear1", "ffn_out": "linear2"}


class PackedFormatError(ValueError):
    """The file is not a valid packed BiBERT file (wrong magic/version, corrupted, truncated)."""


@dataclass
class PackedFile:
    config: dict
    tensors: Dict[str, np.ndarray]
    metadata: Dict[str, str]


def payload_sha256(tensors: Dict[str, np.ndarray]) -> str:
    """SHA-256 of the payload, independent of the safetensors layout: for each tensor in
    name order, ``name NUL dtype NUL shape NUL`` then its little-endian C-order bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        t = t.astype(t.dtype.newbyteorder("<"), copy=False)
        shape = ",".join(str(d) for d in t.shape)
        h.update(f"{name}\0{t.dtype.str}\0{shape}\0".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def write_packed(path: str, tensors: Dict[str, np.ndarray], config: dict) -> int:
    """Write tensors + config with magic, version and checksum; return the file size."""
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
            "config": json.dumps(config, sort_keys=True), "payload_sha256": payload_sha256(tensors)}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)  # never leave a half-written file under the final name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return os.path.getsize(path)


def read_packed(path: str) -> PackedFile:
    """Read and verify a packed file: magic, version, header, size, then the checksum."""
    from safetensors.numpy import load as st_load

    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise PackedFormatError(f"{path}: truncated ({len(data)} bytes; not even a header)")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise PackedFormatError(f"{path}: truncated or not a packed BiBERT file (header claims "
                                f"{n} bytes, the file has {len(data) - 8} after the length)")
    try:
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError) as err:
        raise PackedFormatError(f"{path}: corrupted header ({err})") from None
    if meta.get("format") != FORMAT_NAME:
        raise PackedFormatError(f"{path}: not a packed BiBERT file (format {meta.get('format')!r},"
                                f" expected {FORMAT_NAME!r}); write one with export_packed")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise PackedFormatError(f"{path}: bad format_version {meta.get('format_version')!r}") \
            from None
    if version > FORMAT_VERSION:
        raise PackedFormatError(f"{path}: format version {version} is newer than this reader "
                                f"({FORMAT_VERSION}); upgrade paddle-bibert")
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    payload = len(data) - 8 - n
    if ends and max(ends) != payload:
        raise PackedFormatError(f"{path}: truncated or padded payload ({payload} bytes, tensors "
                                f"need {max(ends)})")
    try:
        tensors = st_load(data)
    except Exception as err:  # safetensors reports layout errors with its own exception type
        raise PackedFormatError(f"{path}: corrupted tensor layout ({err})") from None
    digest = payload_sha256(tensors)
    if digest != meta.get("payload_sha256"):
        raise PackedFormatError(f"{path}: checksum mismatch (payload sha256 {digest[:16]}..., "
                                f"header says {str(meta.get('payload_sha256'))[:16]}...): the "
                                "file is corrupted")
    try:
        config = json.loads(meta["config"])
    except (KeyError, ValueError) as err:
        raise PackedFormatError(f"{path}: missing or corrupted config ({err})") from None
    return PackedFile(config=config, tensors=tensors, metadata=meta)


# -------------------------------------------------------------------------- Paddle side


def _unsupported(what: str):
    return ValueError(
        f"export_packed: {what}. The packed format holds a BiBERT 1-1-1 BertForSequenceClassif"
        "ication binarized by binarize_model with the default config (1-bit word embeddings, "
        "Q/K/V, attention output, FFN in/out and pooler; attention 'bool' or 'softmax_sign'); "
        "other parts must stay full precision only where BiBERT keeps them so")


def export_packed(model, path: str) -> dict:
    """Write a model binarized by ``binarize_model`` (BiBERT 1-1-1) as a packed file.

    Every binarized weight is stored as its sign bits plus the full-precision per-output-channel
    scale ``alpha = mean_0 |W|`` (sign of ``W - mean_0(W)``), the word embedding per row;
    position/token-type embeddings, LayerNorms (with their epsilons), biases and the
    classifier as float32. Raises ``ValueError`` naming the first module that is not 1-bit
    or not supported. Returns a summary (``path``, ``bytes``, ``config``).
    """
    import paddle
    from paddle import nn
    from paddle.nn import functional as F

    from ..quant.layers import BiEmbedding, BiLinear, BiMultiHeadAttention
    from ..quant.quantizers import ChannelMeanSign, RowMeanSign, SteSign

    bcfg = getattr(model, "bibert_config", None)
    if bcfg is None:
        raise _unsupported(f"{type(model).__name__} is not binarized (no bibert_config)")
    bert, classifier = getattr(model, "bert", None), getattr(model, "classifier", None)
    if bert is None or classifier is None or not hasattr(bert, "encoder"):
        raise _unsupported(f"{type(model).__name__} is not a BertForSequenceClassification-like "
                           "model (needs .bert with an encoder and .classifier)")
    if getattr(bert, "fuse", False):
        raise _unsupported("fused encoder layers are not supported")

    def binary_linear(layer, fqn):
        if not isinstance(layer, BiLinear):
            raise _unsupported(f"{fqn} is {type(layer).__name__} (full precision), not BiLinear")
        if type(layer.weight_quantizer) is not ChannelMeanSign:
            raise _unsupported(f"{fqn} weight quantizer is {type(layer.weight_quantizer).__name__}"
                               ", not channel_mean_sign (1 bit + per-output-channel scale)")
        if type(layer.input_quantizer) is not SteSign:
            raise _unsupported(f"{fqn} input quantizer is {type(layer.input_quantizer).__name__}, "
                               "not ste_sign (1-bit activations)")
        wb = layer.weight_quantizer(layer.weight).numpy()  # [K, N] = alpha_n * sign(wc)
        alpha = np.abs(wb[0]).astype(np.float32)
        if not (np.abs(wb) == alpha[None]).all():
            raise _unsupported(f"{fqn}: quantized weight is not alpha_n * sign(.) per column")
        bias = layer.bias.numpy() if layer.bias is not None else np.zeros(wb.shape[1], np.float32)
        return {"bits": pack_bits(np.signbit(wb.T)), "alpha": alpha,
                "bias": bias.astype(np.float32)}

    def layer_norm(ln, fqn, eps_out):
        if not isinstance(ln, nn.LayerNorm):
            raise _unsupported(f"{fqn} is {type(ln).__name__}, not LayerNorm")
        eps_out[fqn] = float(ln._epsilon)
        return {"weight": ln.weight.numpy().astype(np.float32),
                "bias": ln.bias.numpy().astype(np.float32)}

    tensors, eps = {}, {}

    def put(prefix, d):
        tensors.update({f"{prefix}.{k}": v for k, v in d.items()})

    emb = bert.embeddings
    with paddle.no_grad():
        we = emb.word_embeddings
        if not isinstance(we, BiEmbedding) or type(we.weight_quantizer) is not RowMeanSign:
            raise _unsupported("bert.embeddings.word_embeddings is not a BiEmbedding with "
                               "row_mean_sign")
        eb = we.weight_quantizer(we.weight).numpy()  # [V, H] = alpha_v * sign(row - mean)
        ealpha = np.abs(eb[:, 0]).astype(np.float32)
        if not (np.abs(eb) == ealpha[:, None]).all():
            raise _unsupported("word embedding quantizer is not alpha_row * sign(.)")
        tensors["embeddings.word.bits"] = pack_bits(np.signbit(eb))
        tensors["embeddings.word.alpha"] = ealpha
        for name in ("position_embeddings", "token_type_embeddings"):
            e = getattr(emb, name)
            if type(e) is not nn.Embedding:
                raise _unsupported(f"bert.embeddings.{name} is {type(e).__name__}; BiBERT keeps "
                                   "it a full-precision nn.Embedding")
        tensors["embeddings.position"] = emb.position_embeddings.weight.numpy().astype(np.float32)
        tensors["embeddings.token_type"] = \
            emb.token_type_embeddings.weight.numpy().astype(np.float32)
        put("embeddings.ln", layer_norm(emb.layer_norm, "embeddings.ln", eps))

        attention = None
        layers = list(bert.encoder.layers)
        for i, layer in enumerate(layers):
            p = f"bert.encoder.layers.{i}"
            att = layer.self_attn
            if not isinstance(att, BiMultiHeadAttention):
                raise _unsupported(f"{p}.self_attn is {type(att).__name__}, not "
                                   "BiMultiHeadAttention")
            if att.attention not in SUPPORTED_ATTENTION:
                raise _unsupported(f"{p}.self_attn uses attention={att.attention!r}: a "
                                   "full-precision attention map is not 1-bit")
            if type(att.qkv_quantizer) is not SteSign:
                raise _unsupported(f"{p}.self_attn Q/K/V quantizer is "
                                   f"{type(att.qkv_quantizer).__name__}, not ste_sign")
            if attention not in (None, att.attention):
                raise _unsupported("layers use different attention modes")
            attention = att.attention
            if layer.normalize_before:
                raise _unsupported(f"{p} is pre-LayerNorm (normalize_before=True)")
            if layer.activation is not F.gelu:
                raise _unsupported(f"{p} activation is {getattr(layer.activation, '__name__', '?')}"
                                   ", not gelu (sign(gelu(h)) = sign(h) is what makes it 1-bit)")
            for short, sub in LINEARS.items():
                obj = layer
                for part in sub.split("."):
                    obj = getattr(obj, part)
                put(f"layers.{i}.{short}", binary_linear(obj, f"{p}.{sub}"))
            put(f"layers.{i}.ln1", layer_norm(layer.norm1, f"layers.{i}.ln1", eps))
            put(f"layers.{i}.ln2", layer_norm(layer.norm2, f"layers.{i}.ln2", eps))

        if getattr(bert.pooler, "pool_act", "tanh") != "tanh":
            raise _unsupported(f"pooler activation {bert.pooler.pool_act!r} is not tanh")
        put("pooler", binary_linear(bert.pooler.dense, "bert.pooler.dense"))
        if type(classifier) is not nn.Linear:
            raise _unsupported(f"classifier is {type(classifier).__name__}; the runtime keeps the "
                               "task classifier a full-precision nn.Linear")
        tensors["classifier.weight"] = classifier.weight.numpy().astype(np.float32)
        tensors["classifier.bias"] = classifier.bias.numpy().astype(np.float32)

    h = tensors["embeddings.position"].shape[1]
    heads = layers[0].self_attn.num_heads
    cfg = {
        "architecture": "BertForSequenceClassification",
        "hidden_size": int(h),
        "num_attention_heads": int(heads),
        "num_hidden_layers": len(layers),
        "intermediate_size": int(tensors["layers.0.ffn_in.alpha"].shape[0]),
        "vocab_size": int(tensors["embeddings.word.alpha"].shape[0]),
        "max_position_embeddings": int(tensors["embeddings.position"].shape[0]),
        "type_vocab_size": int(tensors["embeddings.token_type"].shape[0]),
        "hidden_act": "gelu",
        "pool_act": "tanh",
        "pad_token_id": int(bert.pad_token_id),
        "num_labels": int(tensors["classifier.bias"].shape[0]),
        "attention": attention,
        "layer_norm_eps": eps,
        "binarize": bcfg.to_dict() if hasattr(bcfg, "to_dict") else dict(bcfg),
    }
    if tensors["embeddings.word.bits"].shape[1] != nwords(h):
        raise AssertionError("word embedding bits do not match the hidden size")
    size = write_packed(path, tensors, cfg)
    return {"path": path, "bytes": size, "config": cfg}
