"""Packed-model inference on bits: numpy + compiled popcount kernels, no Paddle import.

    from paddle_bibert.runtime import load_packed
    model = load_packed("model.bibert")          # verifies magic, version, checksum
    logits = model(input_ids, token_type_ids)    # numpy int arrays [B, L] -> [B, num_labels]
    model.backend                                 # "c-avx512", ..., or "numpy" (not built)

A deployment needs numpy, safetensors and this package; neither Paddle nor PaddleNLP.
"""

from .kernels import Kernels, available_isas, compiled_available, get_kernels
from .model import PackedBert, load_packed

__all__ = ["Kernels", "PackedBert", "available_isas", "compiled_available", "get_kernels",
           "load_packed"]
