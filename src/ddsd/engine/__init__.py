"""Training engine: trainer, evaluation, atomic checkpoints, run directory, seeding, torchrun support."""

from ddsd.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ddsd.engine.evaluate import evaluate, main_metric
from ddsd.engine.trainer import RunExistsError, train

__all__ = [
    "CheckpointError",
    "RunExistsError",
    "evaluate",
    "load_checkpoint",
    "main_metric",
    "save_checkpoint",
    "train",
]
