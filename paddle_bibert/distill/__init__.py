"""Distillation: taps on intermediate tensors, losses, and the distiller loop."""

from .taps import Taps

__all__ = ["Taps"]
