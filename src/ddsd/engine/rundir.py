"""The run directory: ``config.yaml``, ``metrics.csv``, ``summary.json``, ``checkpoints/{last,best}.pt``.

:func:`clear_run` (``ddsd train --overwrite``) deletes only the files a run writes, and only in a folder
verified to be a run directory; :func:`remove_attempt` undoes a start that failed before its first checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from ddsd._io import atomic_write_bytes, write_csv

__all__ = ["RUN_FILES", "MetricsLog", "RunDir", "clear_run", "environment", "read_metrics", "remove_attempt",
           "run_files", "write_json"]

#: what a run writes in its directory (glob patterns, relative to it): all that ``--overwrite`` may delete
RUN_FILES = ("config.yaml", "metrics.csv", "summary.json", "train.log", ".ddsd.lock", "checkpoints/last.pt",
             "checkpoints/best.pt", "checkpoints/.last.pt.*.tmp", "checkpoints/.best.pt.*.tmp",
             "snapshots/epoch_*.npz", "snapshots/.epoch_*.npz.*.tmp", "tensorboard/events.out.*",
             ".config.yaml.*.tmp", ".metrics.csv.*.tmp", ".summary.json.*.tmp")
#: the sub-folders a run creates (removed by ``--overwrite`` / a failed start only once empty)
RUN_FOLDERS = ("checkpoints", "snapshots", "tensorboard")


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
        self.lock = self.root / ".ddsd.lock"

    @property
    def finished(self) -> bool:
        return self.summary.is_file()


def run_files(root: Path, patterns: tuple[str, ...] = RUN_FILES) -> set[Path]:
    """The files in ``root`` that a run writes (:data:`RUN_FILES`)."""
    return {p for pattern in patterns for p in root.glob(pattern) if p.is_file() or p.is_symlink()}


def _delete_run_files(root: Path, keep: set[Path] = frozenset()) -> None:  # type: ignore[assignment]
    for p in run_files(root) - set(keep):
        p.unlink()
    for folder in RUN_FOLDERS:
        with contextlib.suppress(OSError):  # not empty: it holds something a run did not write
            (root / folder).rmdir()


def _protected(root: Path) -> str | None:
    """Why ``root`` must never be cleared (the current folder or one above it, home, a repository root)."""
    r, cwd = root.resolve(), Path.cwd().resolve()
    if r == cwd or r in cwd.parents:
        return "it is the current folder or a folder above it"
    if r == Path.home().resolve():
        return "it is the home folder"
    if (r / ".git").exists():
        return "it is a repository root (it holds .git)"
    return None


def clear_run(root: str | Path) -> None:
    """Delete the run in ``root`` for ``--overwrite``: only the files a run writes (:data:`RUN_FILES`), only
    when ``root`` is a verified run directory (its ``config.yaml`` is a run config and it holds a checkpoint,
    ``metrics.csv`` or ``summary.json``); anything else in it is left alone. Raises ``ValueError`` naming why
    it refuses."""
    from ddsd.config import ConfigError, load_config

    run = RunDir(root)
    if not run.root.exists() or not any(run.root.iterdir()):
        return
    why = _protected(run.root)
    if why is None and not run.config.is_file():
        why = "it does not look like a ddsd run directory (no config.yaml)"
    if why is None:
        try:
            load_config(run.config)
        except ConfigError as e:
            why = f"its config.yaml is not a ddsd run config ({str(e).splitlines()[-1].strip()})"
    if why is None and not any(p.is_file() for p in (run.last, run.best, run.metrics, run.summary)):
        why = "it holds no run files (checkpoints, metrics.csv, summary.json)"
    if why is not None:
        raise ValueError(f"--overwrite refuses to delete {run.root}: {why}")
    from ddsd._io import exclusive_lock

    with exclusive_lock(run.lock, f"run directory {run.root}"):  # never under a training that writes it
        _delete_run_files(run.root)


def remove_attempt(root: str | Path, existed: set[Path]) -> None:
    """Undo a start that failed before its first checkpoint: delete the run files it wrote (those not in
    ``existed``, the run files there before it), then the folder itself when it is left empty, so nothing
    blocks the next attempt and nothing of the user's is touched."""
    run = RunDir(root)
    if run.last.exists() or run.best.exists() or not run.root.is_dir():
        return
    _delete_run_files(run.root, keep=existed)
    if not existed:
        with contextlib.suppress(OSError):
            run.root.rmdir()


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
