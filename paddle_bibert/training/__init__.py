"""The training loop both commands run (``Trainer``), its checkpoints, the weight average and the
authors' optimizer."""

from .trainer import TrainArgs, Trainer, evaluate, set_seed

__all__ = ["TrainArgs", "Trainer", "evaluate", "set_seed"]
