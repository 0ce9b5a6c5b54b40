"""Distillation: taps on intermediate tensors, the losses, and the distiller that combines them."""

from .taps import Taps

__all__ = ["Taps"]
