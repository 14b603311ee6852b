"""Continuing a run: read ``last.pt`` (with advice when it cannot be read) and refuse other settings."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import torch

from ddsd.config import ConfigError, RunConfig
from ddsd.data.errors import name_list
from ddsd.engine.checkpoint import CheckpointError, load_checkpoint

__all__ = ["check_resumable", "check_same_data", "data_identity", "load_last"]

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


def data_identity(datasets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """split -> ``{"stems": [...], "digest": ...}`` of the datasets a run trains and selects on (stored in each
    checkpoint; ``digest`` is the dataset's ``content_digest``: the decoded arrays)."""
    return {split: {"stems": list(ds.stems), "digest": getattr(ds, "content_digest", None)}
            for split, ds in datasets.items()}


def check_same_data(saved: dict[str, Any] | None, now: dict[str, dict[str, Any]], path: Path) -> str | None:
    """Refuse to resume on other images than the checkpoint's (files added to or removed from a split: the run
    would silently mix two datasets). The same names with other decoded pixels (files edited in place, or
    another image decoder on another machine) give a warning string instead. Checkpoints written before this
    check (no ``data``) pass."""
    if not saved:
        return None
    root = path.parent.parent
    warn = []
    for split, cur in now.items():
        old = saved.get(split)
        if old is None:
            continue
        if old["stems"] != cur["stems"]:
            added = sorted(set(cur["stems"]) - set(old["stems"]))
            gone = sorted(set(old["stems"]) - set(cur["stems"]))
            what = "; ".join(x for x in (f"{len(added)} added ({name_list(added, 3)})" if added else "",
                                         f"{len(gone)} removed ({name_list(gone, 3)})" if gone else "") if x)
            raise ConfigError(f"cannot resume {path}: the {split} split is not the one this run was trained on "
                              f"({len(old['stems'])} -> {len(cur['stems'])} images: {what or 'reordered'}); resuming "
                              f"would mix two datasets. Restore the split's files or list, or train anew with "
                              f"another --out (`ddsd train --config {shlex.quote(str(root / 'config.yaml'))} --out "
                              "NEW`)")
        if old.get("digest") and cur.get("digest") and old["digest"] != cur["digest"]:
            warn.append(split)
    if warn:
        return (f"resuming {root}: the {' and '.join(warn)} images have the same names but other decoded pixels "
                "than when the run started (files edited in place, or another image decoder); the run continues "
                "on the current files")
    return None
