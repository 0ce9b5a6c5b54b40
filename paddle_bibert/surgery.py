"""Model surgery: ``binarize_model`` and its config.

``binarize_model(model, config, filter_fn)`` walks ``named_children()`` of a PaddleNLP encoder
built on ``paddle.nn.TransformerEncoder`` (BERT, ERNIE, RoBERTa, ...) and replaces children in
place, torchao-style; no instance ``forward`` is patched, so a model rebuilt from its config
(reload, export) has the same binary path.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple, Union

import yaml
from paddle import nn

from .quant.layers import ATTENTION_MODES, BiEmbedding, BiLinear, BiMultiHeadAttention
from .quant.quantizers import get_quantizer

__all__ = [
    "BinarizeConfig", "BinarizeReport", "binarize_model", "is_binarized", "module_part",
    "PARTS", "CONFIG_NAME", "save_binarized", "load_binarized",
]

#: File written beside a saved binarized model so that reloading rebuilds the same layers.
CONFIG_NAME = "bibert_config.yaml"

#: The parts of a BERT-style encoder that the config switches, keyed by child name.
PARTS = ("word_embeddings", "attention", "qkv", "attention_output", "ffn_in", "ffn_out", "pooler")
_LINEAR_PARTS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "out_proj": "attention_output",
                 "linear1": "ffn_in", "linear2": "ffn_out"}


@dataclass
class BinarizeConfig:
    """What to binarize and how. Defaults are BiBERT 1-1-1.

    Quantizer fields take a registered quantizer name (see ``paddle_bibert.quant.QUANTIZERS``)
    or ``"none"`` for full precision. ``attention`` is one of ``ATTENTION_MODES``:
    ``bool`` (Bi-Attention), ``softmax_sign`` (the plain 1-1-1 baseline that collapses) or
    ``softmax``. The part switches choose which modules are replaced at all.
    """

    method: str = "bibert"
    weight_quantizer: str = "channel_mean_sign"
    act_quantizer: str = "ste_sign"
    embedding_quantizer: str = "row_mean_sign"
    qkv_quantizer: str = "ste_sign"
    attention: str = "bool"
    word_embeddings: bool = True
    qkv: bool = True
    attention_output: bool = True
    ffn_in: bool = True
    ffn_out: bool = True
    pooler: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self):
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention: unknown mode {self.attention!r}; choose one of {ATTENTION_MODES}")
        for f in ("weight_quantizer", "act_quantizer", "embedding_quantizer", "qkv_quantizer"):
            get_quantizer(getattr(self, f))  # raises naming the known quantizers
        for f in PARTS:
            if f != "attention" and not isinstance(getattr(self, f), bool):
                raise TypeError(f"{f}: expected true/false, got {getattr(self, f)!r}")

    @classmethod
    def preset(cls, name: str) -> "BinarizeConfig":
        """Named recipes: ``bibert`` (default) and ``baseline`` (sign-binarized softmax map)."""
        presets = {
            "bibert": {},
            "baseline": {"method": "baseline", "attention": "softmax_sign"},
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(presets)}")
        return cls(**presets[name])

    @classmethod
    def from_dict(cls, d: dict) -> "BinarizeConfig":
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown binarization config key(s) {unknown}; valid keys: {sorted(known)}")
        base = cls.preset(d.pop("preset")) if "preset" in d else cls()
        return dataclasses.replace(base, **d)

    @classmethod
    def from_yaml(cls, path: str) -> "BinarizeConfig":
        with open(path) as f:
            d = yaml.safe_load(f) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of binarization settings, got {type(d).__name__}")
        return cls.from_dict(d.get("binarize", d))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str):
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


@dataclass
class BinarizeReport:
    """What ``binarize_model`` did: replaced modules and the ones kept full precision."""

    replaced: List[Tuple[str, str, str]] = field(default_factory=list)  # (path, old, new)
    kept: List[Tuple[str, str]] = field(default_factory=list)  # (path, type) of Linear/Embedding

    def __str__(self):
        lines = [f"binarized {len(self.replaced)} module(s):"]
        lines += [f"  {p}: {old} -> {new}" for p, old, new in self.replaced]
        lines.append(f"kept full precision {len(self.kept)} module(s):")
        lines += [f"  {p}: {t}" for p, t in self.kept]
        return "\n".join(lines)

    @property
    def replaced_paths(self):
        return [p for p, _, _ in self.replaced]


def module_part(fqn: str, module) -> Optional[str]:
    """Which config part a module is (by its name in a BERT-style encoder), or None."""
    name = fqn.rsplit(".", 1)[-1]
    if isinstance(module, nn.MultiHeadAttention):
        return "attention"
    if isinstance(module, nn.Embedding):
        return "word_embeddings" if name == "word_embeddings" else None
    if isinstance(module, nn.Linear):
        if fqn == "pooler.dense" or fqn.endswith(".pooler.dense"):
            return "pooler"
        return _LINEAR_PARTS.get(name)
    return None


def is_binarized(model) -> bool:
    return any(isinstance(m, (BiLinear, BiEmbedding, BiMultiHeadAttention)) for m in model.sublayers())


FilterFn = Callable[[nn.Layer, str], bool]


def binarize_model(model, config: Union[BinarizeConfig, dict, str, None] = None,
                   filter_fn: Optional[FilterFn] = None):
    """Binarize ``model`` in place; return ``(model, report)``.

    ``config``: a ``BinarizeConfig``, a dict, a YAML path or None (BiBERT 1-1-1).
    ``filter_fn(module, fqn) -> bool`` chooses the modules; by default a module is chosen when
    it is one of the config's switched-on parts (word embeddings, Q/K/V, attention output, FFN
    in/out, pooler dense, the attention itself), so the task classifier, position and
    token-type embeddings and LayerNorms stay full precision. Chosen ``nn.Linear`` become
    ``BiLinear``, ``nn.Embedding`` become ``BiEmbedding``, ``nn.MultiHeadAttention`` become
    ``BiMultiHeadAttention``. Latent weights are the original parameters, so training
    continues from the full-precision model.
    """
    if isinstance(config, str):
        config = BinarizeConfig.from_yaml(config)
    elif config is None or isinstance(config, dict):
        config = BinarizeConfig.from_dict(config or {})
    elif not isinstance(config, BinarizeConfig):
        raise TypeError(f"config must be a BinarizeConfig, dict, YAML path or None, not {type(config).__name__}")
    config.validate()
    if is_binarized(model):
        raise RuntimeError(
            f"{type(model).__name__} is already binarized; binarize_model must run once on a "
            "full-precision model (reload the full-precision weights to binarize differently)")
    fused = [n for n, m in model.named_sublayers() if type(m).__name__.startswith("Fused")]
    if fused:
        raise ValueError(f"fused transformer layers ({fused[0]}, ...) cannot be binarized; "
                         "build the model with fuse=False")

    if filter_fn is None:
        def filter_fn(module, fqn):
            part = module_part(fqn, module)
            return part is not None and (part == "attention" or getattr(config, part))

    report = BinarizeReport()
    _replace_children(model, "", config, filter_fn, report)
    if not report.replaced:
        raise ValueError(
            f"found nothing to binarize in {type(model).__name__}: binarize_model expects a "
            "PaddleNLP encoder built on paddle.nn.TransformerEncoder (BERT, ERNIE, RoBERTa) "
            "with its standard child names, or a filter_fn that selects Linear/Embedding/"
            "MultiHeadAttention modules")
    model.bibert_config = config
    return model, report


def _linear(child, config):
    return BiLinear.from_linear(child, weight_quantizer=config.weight_quantizer,
                                input_quantizer=config.act_quantizer)


def _replace_children(parent, prefix, config, filter_fn, report):
    for name, child in list(parent.named_children()):
        fqn = f"{prefix}{name}"
        new = None
        if isinstance(child, nn.MultiHeadAttention) and filter_fn(child, fqn):
            new = BiMultiHeadAttention.from_mha(child, attention=config.attention,
                                                qkv_quantizer=config.qkv_quantizer)
        elif isinstance(child, nn.Linear) and filter_fn(child, fqn):
            new = _linear(child, config)
        elif isinstance(child, nn.Embedding) and filter_fn(child, fqn):
            new = BiEmbedding.from_embedding(child, weight_quantizer=config.embedding_quantizer)
        elif isinstance(child, (nn.Linear, nn.Embedding)):
            report.kept.append((fqn, type(child).__name__))
        if new is None:
            _replace_children(child, fqn + ".", config, filter_fn, report)
            continue
        new.train() if child.training else new.eval()
        setattr(parent, name, new)
        report.replaced.append((fqn, type(child).__name__, f"{type(new).__name__}({new.extra_repr()})"))
        if isinstance(new, BiMultiHeadAttention):
            # Its projections are the MHA's own Linear layers: binarize those by the same rules.
            _replace_children(new, fqn + ".", config, filter_fn, report)


def save_binarized(model, path: str, tokenizer=None):
    """``save_pretrained`` plus the binarization config, so ``load_binarized`` rebuilds it."""
    config = getattr(model, "bibert_config", None)
    if config is None:
        raise ValueError("model has no bibert_config: binarize it with binarize_model first, "
                         "or save a full-precision model with save_pretrained")
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    config.to_yaml(os.path.join(path, CONFIG_NAME))


def load_binarized(path: str, model_cls=None, **kwargs):
    """Rebuild a model saved by ``save_binarized``: full-precision class, then the same surgery."""
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: {path} was not saved by save_binarized "
                                "(load it with from_pretrained and call binarize_model)")
    if model_cls is None:
        from paddlenlp.transformers import BertForSequenceClassification as model_cls
    model = model_cls.from_pretrained(path, **kwargs)
    model, _ = binarize_model(model, BinarizeConfig.from_yaml(cfg_path))
    return model
