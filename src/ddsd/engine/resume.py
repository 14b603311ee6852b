"""Continuing a run: read ``last.pt`` (with advice when it cannot be read) and refuse other settings."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import torch

from ddsd.config import ConfigError, RunConfig
from ddsd.engine.checkpoint import CheckpointError, load_checkpoint

__all__ = ["check_resumable", "load_last"]

_RESUME_MAY_CHANGE = {"train.epochs", "train.progress", "train.threads", "train.device", "data.num_workers",
                      "data.eval_splits", "data.cache_dir", "data.root", "train.tensorboard", "train.teacher_cache",
                      "out"}


def check_resumable(saved: dict[str, Any], cfg: RunConfig, path: Path) -> None:
    """Refuse to resume a checkpoint made with other settings (it would silently mix two runs)."""
    now = cfg.model_dump(mode="json")

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, v in d.items():
            if isinstance(v, dict) and key != "dataset":
                out.update(flat(v, f"{prefix}{key}."))
            elif key != "dataset":
                out[f"{prefix}{key}"] = v
        return out

    a, b = flat(saved), flat(now)
    # a key that an older ddsd did not write is compared as its default (old runs stay resumable)
    a = {**{k: v for k, v in flat(RunConfig().model_dump(mode="json")).items() if k not in a}, **a}
    differ = sorted(key for key in a.keys() | b.keys() if key not in _RESUME_MAY_CHANGE and a.get(key) != b.get(key))
    if differ:
        details = ", ".join(f"{key}: {a.get(key)!r} -> {b.get(key)!r}" for key in differ)
        root = path.parent.parent
        raise ConfigError(f"cannot resume {path}: the settings differ from the checkpoint's ({details}); "
                          f"drop the flags that change them (`ddsd train --out {shlex.quote(str(root))} --resume` "
                          "continues with the stored settings) or use a new --out")


def load_last(last: Path, best: Path, map_location: torch.device | str) -> dict[str, Any]:
    """The state in ``last``; when it cannot be read (a half-written or damaged file) the error says so and
    what to do: continue from ``best`` (same contents, saved at the best epoch) or start again. Nothing is
    deleted."""
    try:
        return load_checkpoint(last, map_location=map_location)
    except CheckpointError as e:
        root = last.parent.parent
        fix = (f"to continue from the best epoch instead, copy it over: `cp {shlex.quote(str(best))} "
               f"{shlex.quote(str(last))}` and resume again (the epochs after it are trained anew); "
               if best.is_file() else "")
        why = str(e).split(". ")[0].replace(f"cannot read checkpoint {last}: ", "")
        raise CheckpointError(f"cannot resume {root}: {last} is unreadable (half-written or damaged: {why}); "
                              f"{fix}or start again with `--overwrite` or another --out. Nothing was deleted."
                              ) from None
