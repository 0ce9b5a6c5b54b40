"""Distillation: taps on intermediate tensors, the losses, and the distiller that combines them."""

from .cache import TeacherCache
from .distiller import DistillConfig, Distiller
from .prefetch import TeacherPrefetch
from .taps import Taps

__all__ = ["DistillConfig", "Distiller", "TeacherCache", "TeacherPrefetch", "Taps"]
