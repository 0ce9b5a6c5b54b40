"""paddle-bibert: fully binarized BERT (BiBERT) for PaddlePaddle / PaddleNLP.

The names below are imported on first use (PEP 562), so that ``paddle_bibert.runtime`` and
``paddle_bibert.export.cost`` can be imported where neither Paddle nor PaddleNLP is installed:
a packed-model deployment needs only numpy and safetensors.
"""

import importlib

from ._cpu import apply_cpu_defaults

apply_cpu_defaults()  # speed-only CPU settings, before anything imports Paddle (see _cpu.py)

__version__ = "0.1.0"

_EXPORTS = {
    "BiEmbedding": ".quant", "BiLinear": ".quant", "BiMultiHeadAttention": ".quant",
    "get_quantizer": ".quant", "register_quantizer": ".quant",
    "BinarizeConfig": ".surgery", "BinarizeReport": ".surgery", "binarize_model": ".surgery",
    "is_binarized": ".surgery", "load_binarized": ".surgery", "save_binarized": ".surgery",
    "Taps": ".distill.taps",
    "export_packed": ".export", "load_packed": ".runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
