"""Packed-model inference on bits: numpy + compiled popcount kernels, no Paddle import.

    from paddle_bibert.runtime import load_packed
    model = load_packed("model.bibert")          # verifies magic, version, checksum
    logits = model(input_ids, token_type_ids)    # numpy int arrays [B, L] -> [B, num_labels]
    model.backend                                 # "c-avx512", ..., or "numpy" (not built)
    model.predict(["a gripping film"])            # label names (a file written with its
    model.predict_proba([("s1", "s2")])           #   tokenizer, format version 3; pairs as tuples)

    python -m paddle_bibert.runtime predict model.bibert "a gripping film"    # JSON lines
    python -m paddle_bibert.runtime evaluate model.bibert --data dev.tsv      # the task's metrics

A deployment needs numpy, safetensors, tokenizers and this package; neither Paddle nor
PaddleNLP.
"""

from .kernels import Kernels, available_isas, compiled_available, get_kernels
from .model import PackedBert, load_packed

__all__ = ["Kernels", "PackedBert", "available_isas", "compiled_available", "get_kernels",
           "load_packed"]
