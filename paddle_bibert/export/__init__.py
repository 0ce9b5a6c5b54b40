"""Bit-packed export of binarized models: packing, the file format, size/FLOPs accounting.

Reads the conventions of ``paddle_bibert.quant`` (sign bit, per-output-channel or per-matrix
weight scales, elastic activation scales and shifts) and knows nothing of training. The file
format is versioned (``format.FORMAT_VERSION``; version 2 adds the elastic recipes).
``format`` reads and writes the file (numpy and safetensors only); ``exporter`` fills it from a
binarized model. Importing the package does not import Paddle; ``export_packed`` does. Size/FLOPs accounting:
``paddle_bibert.export.cost``.
"""

from .exporter import check_exportable, export_packed, pack_model
from .format import FORMAT_NAME, FORMAT_VERSION, PackedFile, PackedFormatError, read_packed, write_packed
from .pack import nwords, pack_bits, pack_signs, unpack_bits, unpack_signs

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "PackedFile", "PackedFormatError", "check_exportable",
    "export_packed", "nwords", "pack_bits", "pack_model", "pack_signs", "read_packed",
    "unpack_bits", "unpack_signs", "write_packed",
]
