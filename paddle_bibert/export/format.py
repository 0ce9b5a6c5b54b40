"""The packed BiBERT file (``.bibert``): a safetensors file with bit-packed binary weights.

Layout: a standard safetensors file (8-byte little-endian header length, JSON header, tensor
bytes), readable by any safetensors reader. Its ``__metadata__`` holds:

    format          "bibert-packed"                 (the magic)
    format_version  "1", "2" or "3": the lowest version that describes the file (see below); a
                    reader runs every version up to its own ``FORMAT_VERSION`` (3)
    config          JSON: architecture, hidden_size, num_attention_heads, num_hidden_layers,
                    intermediate_size, vocab_size, max_position_embeddings, type_vocab_size,
                    hidden_act ("gelu", or "relu" from version 2), pool_act, pad_token_id,
                    num_labels, attention ("bool", "softmax_sign", or "softmax" from version 2),
                    layer_norm_eps {LayerNorm name: epsilon}, binarize (the BinarizeConfig
                    used; its ``method`` names the recipe), from version 2 ``quantizers``,
                    from version 3 ``tokenizer`` and ``task`` (see "Version 3")
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

Version 3 makes the file self-contained for text in, label out (any model of versions 1-2 plus):

    config["tokenizer"]  {"do_lower_case": bool, "max_seq_length": int, "unk_token", "cls_token",
                          "sep_token", "pad_token" (and "mask_token" if the tokenizer has one)}
    config["task"]       {"name": GLUE task or null, "pair": bool (sentence pairs),
                          "labels": label name per class, or null for a regression model}
    tokenizer.vocab      uint8 [n]  the WordPiece vocabulary, UTF-8, one token per line in id
                                    order, joined by "\n" (covered by the checksum)

and the exporter keeps only the position rows inputs of max_seq_length tokens read
(``max_position_embeddings`` = ``max_seq_length``).

This module reads and writes the file with numpy and safetensors only (the runtime imports it
and never Paddle); ``exporter.py`` turns a binarized Paddle model into its tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PackedFile", "PackedFormatError",
           "read_packed", "write_packed", "payload_sha256", "LINEARS", "SUPPORTED_ATTENTION",
           "ACT_QUANTIZERS", "QKV_QUANTIZERS", "MAP_QUANTIZERS", "site_quantizers",
           "required_version", "VOCAB_TENSOR", "TOKENIZER_KEYS", "encode_vocab", "decode_vocab",
           "check_text_config"]

FORMAT_NAME = "bibert-packed"
#: The newest version this module reads and writes (it writes the lowest one a file needs).
FORMAT_VERSION = 3
#: The tensor holding a version-3 file's vocabulary.
VOCAB_TENSOR = "tokenizer.vocab"
#: Keys of a version-3 ``config["tokenizer"]`` (``mask_token`` is optional).
TOKENIZER_KEYS = ("do_lower_case", "max_seq_length", "unk_token", "cls_token", "sep_token",
                  "pad_token")
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
    if "tokenizer" in config or "task" in config:
        return 3
    v2 = (config.get("attention") not in ("bool", "softmax_sign")
          or config.get("hidden_act", "gelu") != "gelu"
          or any(q in ELASTIC for q in (config.get("quantizers") or {}).values()))
    return 2 if v2 else 1


def encode_vocab(tokens) -> np.ndarray:
    """The ``tokenizer.vocab`` tensor of a token list (in id order)."""
    tokens = [str(t) for t in tokens]
    bad = [t for t in tokens if "\n" in t or not t]
    if bad:
        raise ValueError(f"vocabulary tokens cannot be empty or hold a newline: {bad[:3]!r}")
    return np.frombuffer("\n".join(tokens).encode("utf-8"), np.uint8).copy()


def decode_vocab(tensor: np.ndarray) -> list:
    """The token list of a ``tokenizer.vocab`` tensor."""
    try:
        return np.asarray(tensor, np.uint8).tobytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise PackedFormatError(f"{VOCAB_TENSOR} is not UTF-8 text ({err})") from None


def check_text_config(config: dict, tensors: Dict[str, np.ndarray]) -> None:
    """Raise ``PackedFormatError`` unless a version-3 file's tokenizer, task and vocabulary are
    complete and agree with the model (vocabulary size, label count, positions)."""
    tok, task = config.get("tokenizer"), config.get("task")
    if not isinstance(tok, dict) or not isinstance(task, dict) or VOCAB_TENSOR not in tensors:
        raise PackedFormatError("a version-3 file needs config['tokenizer'], config['task'] and "
                                f"the {VOCAB_TENSOR} tensor together")
    missing = [k for k in TOKENIZER_KEYS if k not in tok] + [
        k for k in ("name", "pair", "labels") if k not in task]
    if missing:
        raise PackedFormatError(f"tokenizer/task metadata lacks {missing}")
    n = len(decode_vocab(tensors[VOCAB_TENSOR]))
    if n != int(config["vocab_size"]):
        raise PackedFormatError(f"the stored vocabulary has {n} tokens, the model "
                                f"{config['vocab_size']}")
    labels = task["labels"]
    want = 1 if labels is None else len(labels)
    if want != int(config["num_labels"]):
        raise PackedFormatError(f"task labels {labels} do not match the model's "
                                f"{config['num_labels']} outputs")
    if not 3 <= int(tok["max_seq_length"]) <= int(config["max_position_embeddings"]):
        raise PackedFormatError(f"max_seq_length {tok['max_seq_length']} is outside [3, "
                                f"{config['max_position_embeddings']}] (the position table)")


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
    if version >= 3:
        check_text_config(config, tensors)
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
                                f"{config.get('hidden_act')!r}, elastic quantizers, tokenizer)")
    if version >= 3:
        try:
            check_text_config(config, tensors)
        except PackedFormatError as err:
            raise PackedFormatError(f"{path}: {err}") from None
    return PackedFile(config=config, tensors=tensors, metadata=meta)
