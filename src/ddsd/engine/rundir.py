"""The run directory: ``config.yaml``, ``metrics.csv``, ``summary.json``, ``checkpoints/{last,best}.pt``."""

from __future__ import annotations

import csv
import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from ddsd._io import atomic_write_bytes, write_csv

__all__ = ["MetricsLog", "RunDir", "environment", "read_metrics", "write_json"]


def environment(device: torch.device) -> dict[str, Any]:
    """What produced a run: git commit, versions, device, machine."""
    import ddsd

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(ddsd.__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "ddsd_version": ddsd.__version__,
        "git_commit": commit,
        "torch_version": str(torch.__version__),
        "python": platform.python_version(),
        "device": str(device),
        "device_name": dev_name,
        "machine": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically; non-finite floats become null."""
    atomic_write_bytes(path, (json.dumps(_jsonable(data), indent=2) + "\n").encode())


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.csv"
        self.summary = self.root / "summary.json"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"

    @property
    def finished(self) -> bool:
        return self.summary.is_file()


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        return []
    with p.open(newline="") as f:
        return list(csv.DictReader(f))


class MetricsLog:
    """``metrics.csv``, one row per epoch, rewritten atomically (so a resume can drop rows past the checkpoint)."""

    def __init__(self, path: Path, keep_epochs_below: int | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if keep_epochs_below is not None:
            self.rows = [r for r in read_metrics(path) if int(r["epoch"]) < keep_epochs_below]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        write_csv(self.path, self.rows)
