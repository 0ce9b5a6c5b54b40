"""Model surgery: ``binarize_model`` and its config.

``binarize_model(model, config, filter_fn)`` walks ``named_children()`` of a PaddleNLP encoder
built on ``paddle.nn.TransformerEncoder`` (BERT, ERNIE, RoBERTa, ...) and replaces children in
place, torchao-style; no instance ``forward`` is patched, so a model rebuilt from its config
(reload, export) has the same binary path.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple, Union

import yaml
from paddle import nn

from .quant.layers import ATTENTION_MODES, BiEmbedding, BiLinear, BiMultiHeadAttention
from .quant.quantizers import get_quantizer

__all__ = [
    "BinarizeConfig", "BinarizeReport", "binarize_model", "is_binarized", "module_part",
    "PARTS", "RECIPES", "CONFIG_NAME", "save_binarized", "load_binarized",
]

#: File written beside a saved binarized model so that reloading rebuilds the same layers.
CONFIG_NAME = "bibert_config.yaml"

#: The parts of a BERT-style encoder that the config switches, keyed by child name.
def _lowbit(bits):
    return {"act_quantizer": f"lsq{bits}", "qkv_quantizer": f"lsq{bits}",
            "attention_quantizer": f"lsq{bits}_unsigned", "ffn_out_act_quantizer": f"lsq{bits}_unsigned"}


#: recipe name -> {activation bits: BinarizeConfig fields}. Weights and word embeddings are 1-bit
#: in all of them; see docs/algorithms.md, sections 1, 2 and 5.
RECIPES = {
    # BiBERT 1-1-1: per-channel scaled sign weights, sign activations, Bi-Attention
    "bibert": {1: {}},
    # the plain 1-1-1 baseline: sign-binarized softmax attention map (collapses)
    "baseline": {1: {"attention": "softmax_sign"}},
    # BiBERT with BiT's elastic activations (learned scale and shift) on every BiLinear input
    "bibert_elastic": {1: {"act_quantizer": "elastic_sign"}},
    # BiT: one weight scale per matrix, elastic activations, two-set binarization ({0, a} for
    # softmax probabilities and the ReLU FFN's output-dense input, {-a, a} elsewhere); its W1A2 /
    # W1A4 forms quantize the same activations to 2 / 4 bits (the first stage of its chain)
    "bit": {
        1: {"weight_quantizer": "tensor_mean_sign", "act_quantizer": "elastic_sign",
            "qkv_quantizer": "elastic_sign", "attention": "softmax", "attention_quantizer": "elastic_unsigned",
            "ffn_out_act_quantizer": "elastic_unsigned", "ffn_activation": "relu"},
        2: {"weight_quantizer": "tensor_mean_sign", "attention": "softmax", "ffn_activation": "relu", **_lowbit(2)},
        4: {"weight_quantizer": "tensor_mean_sign", "attention": "softmax", "ffn_activation": "relu", **_lowbit(4)},
    },
    # BinaryBERT-style baselines: one weight scale per matrix, sign activations and a
    # sign-binarized softmax map at 1 bit; k-bit LSQ activations (and map) at 2 / 4 bits
    "binarybert": {
        1: {"weight_quantizer": "tensor_mean_sign", "attention": "softmax_sign"},
        2: {"weight_quantizer": "tensor_mean_sign", "attention": "softmax", **_lowbit(2)},
        4: {"weight_quantizer": "tensor_mean_sign", "attention": "softmax", **_lowbit(4)},
    },
}

def _upgrade_config_keys(d: dict) -> dict:
    """Keys of configs written before the recipe had one name: ``preset`` (the recipe to start
    from) and ``method`` (its tag, ``<recipe>`` or ``<recipe>_a<bits>``)."""
    if "preset" in d:
        d.setdefault("recipe", d.pop("preset"))
    if "method" in d:
        tag = re.fullmatch(r"(.+?)(?:_a(\d))?", str(d.pop("method")))
        if "recipe" not in d:
            d["recipe"] = tag.group(1)
            if tag.group(2):
                d.setdefault("act_bits", int(tag.group(2)))
    return d


#: parameter-name parts of models saved before the quantizers had their present names
_RENAMED_KEYS = ((".input_quantizer.", ".act_quantizer."), (".qkv_quantizer.", ".q_quantizer."))


def _upgrade_state_keys(state: dict) -> dict:
    for old, new in _RENAMED_KEYS:
        state = {k.replace(old, new): v for k, v in state.items()}
    return state


PARTS = ("word_embeddings", "attention", "qkv", "attention_output", "ffn_in", "ffn_out", "pooler")
_LINEAR_PARTS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "out_proj": "attention_output",
                 "linear1": "ffn_in", "linear2": "ffn_out"}


@dataclass
class BinarizeConfig:
    """What to binarize and how. Defaults are BiBERT 1-1-1.

    ``recipe`` and ``act_bits`` name the recipe (``RECIPES``) the settings come from;
    ``from_recipe`` fills the other fields from them, and a dict or YAML mapping with a
    ``recipe`` key starts from that recipe and overrides the fields it names.
    Quantizer fields take a registered quantizer name (see ``paddle_bibert.quant.QUANTIZERS``)
    or ``"none"`` for full precision. ``attention`` is one of ``ATTENTION_MODES``:
    ``bool`` (Bi-Attention), ``softmax_sign`` (the plain 1-1-1 baseline that collapses) or
    ``softmax``. The part switches choose which modules are replaced at all.
    """

    recipe: str = "bibert"
    act_bits: int = 1
    weight_quantizer: str = "channel_mean_sign"
    #: quantizer of every binarized linear's input activation (BiLinear.act_quantizer)
    act_quantizer: str = "ste_sign"
    embedding_quantizer: str = "row_mean_sign"
    #: quantizer of Q, K and V before the scores (one instance each; BiMultiHeadAttention.q/k/v_quantizer)
    qkv_quantizer: str = "ste_sign"
    attention: str = "bool"
    #: quantizer of the attention map ("" = by mode: bool -> bool, softmax_sign -> ste_sign,
    #: softmax -> none); BiT uses softmax with elastic_unsigned
    attention_quantizer: str = ""
    #: quantizer of the FFN output dense's input ("" = act_quantizer); BiT: elastic_unsigned
    ffn_out_act_quantizer: str = ""
    #: "" keeps the model's FFN activation; "relu" replaces it (BiT, with {0, a} binarization)
    ffn_activation: str = ""
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
        for f in ("weight_quantizer", "act_quantizer", "embedding_quantizer", "qkv_quantizer",
                  "attention_quantizer", "ffn_out_act_quantizer"):
            if getattr(self, f) != "":
                get_quantizer(getattr(self, f))  # raises naming the known quantizers
        if not isinstance(self.act_bits, int) or self.act_bits < 1:
            raise ValueError(f"act_bits: expected a positive integer, got {self.act_bits!r}")
        if self.ffn_activation not in ("", "relu", "gelu"):
            raise ValueError(f"ffn_activation: {self.ffn_activation!r}; choose '' (keep), 'relu' or 'gelu'")
        if self.attention == "bool" and self.attention_quantizer not in ("", "bool"):
            raise ValueError("attention: bool (Bi-Attention) takes no attention_quantizer; use attention: softmax "
                             f"to quantize the softmax map with {self.attention_quantizer!r}")
        for f in PARTS:
            if f != "attention" and not isinstance(getattr(self, f), bool):
                raise TypeError(f"{f}: expected true/false, got {getattr(self, f)!r}")

    @classmethod
    def from_recipe(cls, name: str, act_bits: int = 1) -> "BinarizeConfig":
        """A named recipe (``RECIPES``), with 1-, 2- or 4-bit activations where it has them."""
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
        bits = RECIPES[name]
        if act_bits not in bits:
            raise ValueError(f"recipe {name!r} has activation bits {sorted(bits)}, not {act_bits}"
                             + ("; 2- and 4-bit activations come with the bit and binarybert recipes"
                                if sorted(bits) == [1] else ""))
        return cls(recipe=name, act_bits=act_bits, **bits[act_bits])

    @classmethod
    def from_dict(cls, d: dict) -> "BinarizeConfig":
        """Settings from a mapping: its ``recipe`` (and ``act_bits``), then the fields it names."""
        d = _upgrade_config_keys(dict(d or {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown binarization config key(s) {unknown}; valid keys: {sorted(known)}")
        if "act_bits" in d and "recipe" not in d:
            raise ValueError("act_bits needs a recipe to apply to, e.g. recipe: bit")
        base = cls.from_recipe(d.pop("recipe"), int(d.pop("act_bits", 1))) if "recipe" in d else cls()
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
    if config.ffn_activation:
        import paddle.nn.functional as F

        for name, layer in model.named_sublayers():
            if isinstance(layer, nn.TransformerEncoderLayer):
                layer.activation = getattr(F, config.ffn_activation)
                report.replaced.append((name + ".activation", "activation", config.ffn_activation))
    if not report.replaced:
        raise ValueError(
            f"found nothing to binarize in {type(model).__name__}: binarize_model expects a "
            "PaddleNLP encoder built on paddle.nn.TransformerEncoder (BERT, ERNIE, RoBERTa) "
            "with its standard child names, or a filter_fn that selects Linear/Embedding/"
            "MultiHeadAttention modules")
    model.bibert_config = config
    return model, report


def _linear(child, config, part=None):
    act = config.act_quantizer
    if part == "ffn_out" and config.ffn_out_act_quantizer:
        act = config.ffn_out_act_quantizer
    return BiLinear.from_linear(child, weight_quantizer=config.weight_quantizer, act_quantizer=act)


def _replace_children(parent, prefix, config, filter_fn, report):
    for name, child in list(parent.named_children()):
        fqn = f"{prefix}{name}"
        new = None
        if isinstance(child, nn.MultiHeadAttention) and filter_fn(child, fqn):
            new = BiMultiHeadAttention.from_mha(child, attention=config.attention,
                                                qkv_quantizer=config.qkv_quantizer,
                                                attention_quantizer=config.attention_quantizer or None)
        elif isinstance(child, nn.Linear) and filter_fn(child, fqn):
            new = _linear(child, config, module_part(fqn, child))
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
    weights = os.path.join(path, "model_state.pdparams")
    if not os.path.isfile(weights):  # another save format: let PaddleNLP find and load it
        model = model_cls.from_pretrained(path, **kwargs)
        model, _ = binarize_model(model, BinarizeConfig.from_yaml(cfg_path))
        return model
    import paddle
    from paddlenlp.utils.log import logger

    # Build the full-precision class from its config (no weights), redo the surgery, then load
    # every weight, learned quantizer state included, in one pass. Loading into the unbinarized
    # class first would report each quantizer key as unused (hundreds of lines).
    level = logger.logger.level
    logger.set_level("WARNING")
    try:
        model = model_cls(model_cls.config_class.from_pretrained(path, **kwargs))
    finally:
        logger.logger.setLevel(level)
    model, _ = binarize_model(model, BinarizeConfig.from_yaml(cfg_path))
    state = _upgrade_state_keys(paddle.load(weights))
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} of the model's weights (first: {missing[0]}); "
                         "was it saved by save_binarized from the same model class?")
    model.set_state_dict(state)
    model.eval()
    return model
