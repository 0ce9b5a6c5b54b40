"""The packed BiBERT file (``.bibert``): a safetensors file with bit-packed binary weights.

Layout: a standard safetensors file (8-byte little-endian header length, JSON header, tensor
bytes), readable by any safetensors reader. Its ``__metadata__`` holds:

    format          "bibert-packed"                 (the magic)
    format_version  "1" or "2": the lowest version that describes the file (see below); a
                    reader runs every version up to its own ``FORMAT_VERSION`` (2)
    config          JSON: architecture, hidden_size, num_attention_heads, num_hidden_layers,
                    intermediate_size, vocab_size, max_position_embeddings, type_vocab_size,
                    hidden_act ("gelu", or "relu" from version 2), pool_act, pad_token_id,
                    num_labels, attention ("bool", "softmax_sign", or "softmax" from version 2),
                    layer_norm_eps {LayerNorm name: epsilon}, binarize (the BinarizeConfig
                    used; its ``method`` names the recipe), and from version 2 ``quantizers``
    payload_sha256  SHA-256 over the tensors, see :func:`payload_sha256`

Tensors (``N`` outputs, ``K`` inputs of a binarized linear; Paddle weight ``W`` is ``[K, N]``):

    <linear>.bits   uint64 [N, ceil(K/64)]  sign bits of the centred weight, packed along K:
                                            W[:, n] - mean_0(W)[n] (channel_mean_sign) or
                                            W - mean(W) (tensor_mean_sign)
    <linear>.alpha  float32 [N]            alpha_n = mean_k |W[k, n]| per output channel
                                            (channel_mean_sign), or the one scale mean |W| of
                                            the matrix repeated N times (tensor_mean_sign)
    <linear>.bias   float32 [N]
        so that  W_b[k, n] = alpha_n * sign(bits)   (sign: signbit -> -1)
    embeddings.word.bits  uint64 [V, ceil(H/64)]   sign bits of E[v] - mean(E[v])
    embeddings.word.alpha float32 [V]              mean |E[v]|
    embeddings.position, embeddings.token_type     float32 tables
    embeddings.ln.weight/.bias, layers.<i>.ln1/.ln2.weight/.bias    float32 LayerNorms
    classifier.weight float32 [H, num_labels] (Paddle layout), classifier.bias

with <linear> one of ``layers.<i>.{q,k,v,out,ffn_in,ffn_out}`` and ``pooler``. Bits and
scales are taken from the binarized model's own quantizer output (so they are exactly what
its forward multiplies by); bit layout as in ``paddle_bibert.export.pack``.

Version 1 (BiBERT 1-1-1 and its softmax_sign baseline, also with tensor_mean_sign weights):
every binarized activation is ``sign(v)`` (``ste_sign``), Q/K/V included; the attention map
is ``1[S > 0]`` ("bool") or ``sign(softmax(S))`` ("softmax_sign", all ones on kept keys); the
FFN is GELU. A model that needs nothing more is still written as version 1, with the same
metadata and tensors as the version-1 writer gave it (so version-1 readers still run it).

Version 2 adds BiT's elastic binary activations, ReLU FFNs and the binarized softmax map
(recipes ``bibert_elastic`` and ``bit``). ``config["quantizers"]`` names the quantizer of every
binarized activation ("site"):

    <linear>.input                 ste_sign | elastic_sign | elastic_unsigned  (its input)
    layers.<i>.attn.q / .k / .v    ste_sign | elastic_sign   (Q, K, V per head, [B, H, L, d];
                                   elastic_sign only with attention "softmax")
    layers.<i>.attn.map            bool (attention "bool") | ste_sign ("softmax_sign") |
                                   elastic_unsigned ("softmax")

and every elastic site has the tensors

    <site>.scale  float32 [1]      a, the learned scale
    <site>.shift  float32 [C]      b, the learned shift per channel of the last axis (C = K
                                   for a linear's input, d = H / heads for Q/K/V); absent when
                                   the quantizer has none (the attention map's)

meaning, in float32 with sign(v) = -1 iff signbit(v):

    ste_sign          sign(v)
    elastic_sign      a * sign(v + b)
    elastic_unsigned  a * clip(round_half_down((v + b) / a), 0, 1) = a * 1[(v + b) / a > 0.5]

The FFN is ``ffn_out(q(act(ffn_in(x))))`` with act = ``hidden_act``; with "softmax" the map is
``q(softmax(Qq Kq^T / sqrt(d) + mask))`` and the context ``map @ Vq``. A version-1 file is read
as every site ``ste_sign`` and the map by its attention mode.

Reading (:func:`read_packed`) needs only numpy and safetensors; :func:`export_packed` imports
Paddle when called.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from .pack import nwords, pack_bits

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PackedFile", "PackedFormatError", "export_packed",
           "read_packed", "write_packed", "payload_sha256", "LINEARS", "SUPPORTED_ATTENTION",
           "ACT_QUANTIZERS", "QKV_QUANTIZERS", "MAP_QUANTIZERS", "site_quantizers",
           "required_version"]

FORMAT_NAME = "bibert-packed"
#: The newest version this module reads and writes (it writes the lowest one a file needs).
FORMAT_VERSION = 2
#: Attention modes whose map is binary, so the whole encoder runs on bits.
SUPPORTED_ATTENTION = ("bool", "softmax_sign", "softmax")
#: Binarized linears of one encoder layer: file name -> Paddle sublayer path.
LINEARS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
           "out": "self_attn.out_proj", "ffn_in": "linear1", "ffn_out": "linear2"}
#: Quantizers a site may name (version 2 ``config["quantizers"]``).
ACT_QUANTIZERS = ("ste_sign", "elastic_sign", "elastic_unsigned")
QKV_QUANTIZERS = ("ste_sign", "elastic_sign")
#: attention mode -> the map quantizer it takes
MAP_QUANTIZERS = {"bool": "bool", "softmax_sign": "ste_sign", "softmax": "elastic_unsigned"}
ELASTIC = ("elastic_sign", "elastic_unsigned")


def site_quantizers(config: dict) -> Dict[str, str]:
    """Every binarized activation's quantizer by site (see the module docstring): the file's
    ``quantizers`` (version 2) over the version-1 defaults (``ste_sign``; map by mode)."""
    sites = {"pooler.input": "ste_sign"}
    for i in range(int(config["num_hidden_layers"])):
        sites.update({f"layers.{i}.{short}.input": "ste_sign" for short in LINEARS})
        sites.update({f"layers.{i}.attn.{m}": "ste_sign" for m in "qkv"})
        sites[f"layers.{i}.attn.map"] = MAP_QUANTIZERS.get(config.get("attention"), "?")
    given = config.get("quantizers") or {}
    unknown = sorted(set(given) - set(sites))
    if unknown:
        raise PackedFormatError(f"config names quantizers of unknown sites {unknown[:4]}")
    sites.update(given)
    return sites


def required_version(config: dict) -> int:
    """The lowest format version that describes a file with this config."""
    v2 = (config.get("attention") not in ("bool", "softmax_sign")
          or config.get("hidden_act", "gelu") != "gelu"
          or any(q in ELASTIC for q in (config.get("quantizers") or {}).values()))
    return 2 if v2 else 1


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


def write_packed(path: str, tensors: Dict[str, np.ndarray], config: dict,
                 version: Optional[int] = None) -> int:
    """Write tensors + config with magic, version and checksum; return the file size.

    ``version`` defaults to :func:`required_version` of the config (the lowest that describes
    it, so files a version-1 reader can run stay version 1)."""
    from safetensors.numpy import save_file

    version = required_version(config) if version is None else int(version)
    if not required_version(config) <= version <= FORMAT_VERSION:
        raise ValueError(f"format version {version} cannot describe this config (needs "
                         f"{required_version(config)}..{FORMAT_VERSION})")
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {"format": FORMAT_NAME, "format_version": str(version),
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
    if version < 1:
        raise PackedFormatError(f"{path}: bad format_version {version}")
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
    if not isinstance(config, dict):
        raise PackedFormatError(f"{path}: config is not a JSON object")
    if required_version(config) > version:
        raise PackedFormatError(f"{path}: format version {version} file uses version "
                                f"{required_version(config)} features (attention "
                                f"{config.get('attention')!r}, hidden_act "
                                f"{config.get('hidden_act')!r}, elastic quantizers)")
    return PackedFile(config=config, tensors=tensors, metadata=meta)


# -------------------------------------------------------------------------- Paddle side

#: Attribute of a binary layer holding a quantizer -> what it quantizes (for error messages).
_ROLES = {"input_quantizer": "input quantizer", "weight_quantizer": "weight quantizer",
          "qkv_quantizer": "Q quantizer", "k_quantizer": "K quantizer",
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
            if attr == "qkv_quantizer" and getattr(layer, "k_quantizer", None) is None:
                role = "Q/K/V quantizer"
            found.append((fqn, role, q))
    return found


def export_packed(model, path: str) -> dict:
    """Write a model binarized by ``binarize_model`` with a 1-bit recipe as a packed file.

    Every binarized weight is stored as its sign bits plus its full-precision scale per output
    column (``mean_0 |W|``; or ``mean |W|`` repeated, for one scale per matrix), the word
    embedding per row; every elastic activation quantizer as its scale and shift (float32);
    position/token-type embeddings, LayerNorms (with their epsilons), biases and the
    classifier as float32 (see the module docstring for the format and its versions).
    Raises ``ValueError`` naming the first module that is not 1-bit (a k-bit recipe such as
    ``bit`` or ``binarybert`` with act_bits 2 or 4 is refused as a whole) or not supported;
    nothing is written then. Returns a summary (``path``, ``bytes``, ``config``, ``version``).
    """
    import paddle
    from paddle import nn
    from paddle.nn import functional as F

    from ..quant.layers import BiEmbedding, BiLinear, BiMultiHeadAttention
    from ..quant.quantizers import (BoolAttention, ChannelMeanSign, ElasticSign, ElasticUnsigned,
                                    RowMeanSign, SteSign, TensorMeanSign)

    bcfg = getattr(model, "bibert_config", None)
    if bcfg is None:
        raise _unsupported(f"{type(model).__name__} is not binarized (no bibert_config)")
    recipe = getattr(bcfg, "method", None) or "?"
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

    tensors, eps, quant = {}, {}, {}

    def put(prefix, d):
        tensors.update({f"{prefix}.{k}": v for k, v in d.items()})

    def act_quantizer(q, what, site, allowed, channels):
        """Record the quantizer of one binarized activation (its name, scale, shift)."""
        names = {SteSign: "ste_sign", ElasticSign: "elastic_sign",
                 ElasticUnsigned: "elastic_unsigned"}
        name = names.get(type(q))
        if q is None:
            raise _unsupported(f"{what} is none (a full-precision activation is not 1-bit)")
        if name not in allowed:
            raise _unsupported(f"{what} is {getattr(q, 'name', '') or type(q).__name__}; the "
                               f"packed format takes {' or '.join(allowed)} here")
        quant[site] = name
        if name in ELASTIC:
            scale = q.alpha.numpy().astype(np.float32).reshape(-1)
            if scale.shape != (1,):
                raise _unsupported(f"{what}: scale has shape {scale.shape}, not one value")
            tensors[f"{site}.scale"] = scale
            if q.shift is not None:
                shift = q.shift.numpy().astype(np.float32)
                if shift.shape != (channels,):
                    raise _unsupported(f"{what}: shift has shape {shift.shape}, expected "
                                       f"({channels},) (one per input channel)")
                tensors[f"{site}.shift"] = shift
        return name

    def binary_linear(layer, fqn, site):
        if not isinstance(layer, BiLinear):
            raise _unsupported(f"{fqn} is {type(layer).__name__} (full precision), not BiLinear")
        if type(layer.weight_quantizer) not in (ChannelMeanSign, TensorMeanSign):
            raise _unsupported(f"{fqn} weight quantizer is {type(layer.weight_quantizer).__name__}"
                               ", not channel_mean_sign or tensor_mean_sign (1 bit + scale)")
        act_quantizer(layer.input_quantizer, f"{fqn} input quantizer", f"{site}.input",
                      ACT_QUANTIZERS, layer.weight.shape[0])
        wb = layer.weight_quantizer(layer.weight).numpy()  # [K, N] = alpha_n * sign(wc)
        alpha = np.abs(wb[0]).astype(np.float32)
        if not (np.abs(wb) == alpha[None]).all():
            raise _unsupported(f"{fqn}: quantized weight is not alpha_n * sign(.) per column")
        bias = layer.bias.numpy() if layer.bias is not None else np.zeros(wb.shape[1], np.float32)
        put(site, {"bits": pack_bits(np.signbit(wb.T)), "alpha": alpha,
                   "bias": bias.astype(np.float32)})

    def attention_quantizers(att, p, i):
        """Q/K/V and map quantizers of one layer; returns the attention mode."""
        mode = att.attention
        if mode not in SUPPORTED_ATTENTION:
            raise _unsupported(f"{p}.self_attn uses attention={mode!r}, not one of "
                               f"{SUPPORTED_ATTENTION}")
        if att.qkv_quantizer is None:
            raise _unsupported(f"{p}.self_attn Q/K/V quantizer is none (full precision Q, K, V "
                               "are not 1-bit)")
        own = att.k_quantizer is not None
        for m, q in (("q", att.qkv_quantizer), ("k", att.k_quantizer or att.qkv_quantizer),
                     ("v", att.v_quantizer or att.qkv_quantizer)):
            role = f"{m.upper()} quantizer" if own else "Q/K/V quantizer"
            if mode != "softmax" and type(q) is ElasticSign:
                # With scaled Q/K/V, Paddle's float32 products leave a rounding residue of
                # either sign where the exact score or context is 0, and 1[S > 0] or the next
                # sign decides on it: no file can reproduce those decisions.
                raise _unsupported(f"{p}.self_attn {role} is elastic_sign with attention="
                                   f"{mode!r}; the packed format takes elastic Q/K/V only with "
                                   "BiT's attention='softmax' (here the model would decide "
                                   "ties S = 0 by float32 rounding)")
            act_quantizer(q, f"{p}.self_attn {role}", f"layers.{i}.attn.{m}", QKV_QUANTIZERS,
                          att.head_dim)
        aq = att.attention_quantizer
        if mode == "softmax" and aq is None:
            raise _unsupported(f"{p}.self_attn uses attention='softmax' with a full-precision "
                               "map: not 1-bit (BiT binarizes it with elastic_unsigned)")
        want = {"bool": BoolAttention, "softmax_sign": SteSign, "softmax": ElasticUnsigned}[mode]
        if type(aq) is not want:
            raise _unsupported(f"{p}.self_attn attention={mode!r} with map quantizer "
                               f"{getattr(aq, 'name', '') or type(aq).__name__}; the packed "
                               f"format takes {MAP_QUANTIZERS[mode]} with this mode")
        if mode == "softmax":
            if aq.shift is not None:
                raise _unsupported(f"{p}.self_attn attention-map quantizer has a shift (one per "
                                   "key position); the packed format takes none")
            act_quantizer(aq, f"{p}.self_attn attention-map quantizer", f"layers.{i}.attn.map",
                          ("elastic_unsigned",), None)
        else:
            quant[f"layers.{i}.attn.map"] = MAP_QUANTIZERS[mode]
        return mode

    def layer_norm(ln, fqn, eps_out):
        if not isinstance(ln, nn.LayerNorm):
            raise _unsupported(f"{fqn} is {type(ln).__name__}, not LayerNorm")
        eps_out[fqn] = float(ln._epsilon)
        return {"weight": ln.weight.numpy().astype(np.float32),
                "bias": ln.bias.numpy().astype(np.float32)}

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

        attention = hidden_act = None
        layers = list(bert.encoder.layers)
        for i, layer in enumerate(layers):
            p = f"bert.encoder.layers.{i}"
            att = layer.self_attn
            if not isinstance(att, BiMultiHeadAttention):
                raise _unsupported(f"{p}.self_attn is {type(att).__name__}, not "
                                   "BiMultiHeadAttention")
            mode = attention_quantizers(att, p, i)
            if attention not in (None, mode):
                raise _unsupported("layers use different attention modes")
            attention = mode
            if layer.normalize_before:
                raise _unsupported(f"{p} is pre-LayerNorm (normalize_before=True)")
            act = {F.gelu: "gelu", F.relu: "relu"}.get(layer.activation)
            if act is None:
                raise _unsupported(f"{p} activation is "
                                   f"{getattr(layer.activation, '__name__', '?')}, not gelu or "
                                   "relu")
            if hidden_act not in (None, act):
                raise _unsupported("layers use different FFN activations")
            hidden_act = act
            for short, sub in LINEARS.items():
                obj = layer
                for part in sub.split("."):
                    obj = getattr(obj, part)
                binary_linear(obj, f"{p}.{sub}", f"layers.{i}.{short}")
            put(f"layers.{i}.ln1", layer_norm(layer.norm1, f"layers.{i}.ln1", eps))
            put(f"layers.{i}.ln2", layer_norm(layer.norm2, f"layers.{i}.ln2", eps))

        if getattr(bert.pooler, "pool_act", "tanh") != "tanh":
            raise _unsupported(f"pooler activation {bert.pooler.pool_act!r} is not tanh")
        binary_linear(bert.pooler.dense, "bert.pooler.dense", "pooler")
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
        "hidden_act": hidden_act,
        "pool_act": "tanh",
        "pad_token_id": int(bert.pad_token_id),
        "num_labels": int(tensors["classifier.bias"].shape[0]),
        "attention": attention,
        "layer_norm_eps": eps,
        "binarize": bcfg.to_dict() if hasattr(bcfg, "to_dict") else dict(bcfg),
    }
    if required_version({**cfg, "quantizers": quant}) > 1:
        cfg["quantizers"] = quant  # a version-1 file keeps the version-1 config exactly
    if tensors["embeddings.word.bits"].shape[1] != nwords(h):
        raise AssertionError("word embedding bits do not match the hidden size")
    version = required_version(cfg)
    size = write_packed(path, tensors, cfg, version)
    return {"path": path, "bytes": size, "config": cfg, "version": version}
