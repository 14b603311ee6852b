"""The end-of-epoch writes of a run, and how far it got: what an interruption or a failed write reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddsd.engine.checkpoint import save_checkpoint
from ddsd.engine.interrupts import write_failure
from ddsd.engine.rundir import MetricsLog, RunDir

__all__ = ["RunProgress", "guarded_write", "save_epoch"]


class RunProgress:
    """How far a run got (1-based epochs): the epoch running and the last one saved in ``last.pt``."""

    def __init__(self) -> None:
        self.epoch = 0
        self.saved = 0


def guarded_write(path: Path, run: RunDir, where: RunProgress, write, *args) -> None:
    """``write(*args)``; a failure (disk full, ...) becomes a RunWriteError naming ``path`` and what is intact."""
    try:
        write(*args)
    except (OSError, RuntimeError) as e:
        raise write_failure(path, e, run.root, where.saved) from e


def save_epoch(run: RunDir, where: RunProgress, log: MetricsLog, row: dict[str, Any], state: dict[str, Any],
               improved: bool) -> None:
    """metrics.csv, then best.pt (when improved), then last.pt, then ``where.saved``. Metrics first: a resume
    re-runs (and rewrites) any epoch past the checkpoint."""
    guarded_write(run.metrics, run, where, log.append, row)
    if improved:
        guarded_write(run.best, run, where, save_checkpoint, state, run.best)
    guarded_write(run.last, run, where, save_checkpoint, state, run.last)
    where.saved = state["epoch"]
