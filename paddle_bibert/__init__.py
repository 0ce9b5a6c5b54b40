"""paddle-bibert: fully binarized BERT (BiBERT) for PaddlePaddle / PaddleNLP."""

from .quant import BiEmbedding, BiLinear, BiMultiHeadAttention, get_quantizer, register_quantizer
from .surgery import (
    BinarizeConfig,
    BinarizeReport,
    binarize_model,
    is_binarized,
    load_binarized,
    save_binarized,
)
from .distill.taps import Taps

__version__ = "0.1.0"

__all__ = [
    "BiEmbedding", "BiLinear", "BiMultiHeadAttention", "BinarizeConfig", "BinarizeReport",
    "Taps", "binarize_model", "get_quantizer", "is_binarized", "load_binarized",
    "register_quantizer", "save_binarized",
]
