"""Distillation: taps on intermediate tensors, the losses, and the distiller that combines them."""

from .distiller import DistillConfig, Distiller
from .taps import Taps

__all__ = ["DistillConfig", "Distiller", "Taps"]
