"""Binarization primitives: quantizers (STE ops) and binary layers. Nothing about training."""

from .layers import ATTENTION_MODES, BiEmbedding, BiLinear, BiMultiHeadAttention
from .quantizers import (
    QUANTIZERS,
    BoolAttention,
    ChannelMeanSign,
    Quantizer,
    RowMeanSign,
    SteSign,
    binary_sign,
    get_quantizer,
    register_quantizer,
)

__all__ = [
    "ATTENTION_MODES", "BiEmbedding", "BiLinear", "BiMultiHeadAttention", "QUANTIZERS",
    "BoolAttention", "ChannelMeanSign", "Quantizer", "RowMeanSign", "SteSign", "binary_sign",
    "get_quantizer", "register_quantizer",
]
