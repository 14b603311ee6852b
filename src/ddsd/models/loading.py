"""Build a model from a checkpoint written by ``ddsd train``: the one loader behind the teacher, export,
predict and eval.

A checkpoint is a dict with ``model`` (a ``state_dict``) and ``config`` holding ``config["model"]["name"]``
(a model spec: registered name, ``package.module:factory`` or plug-in), ``config["model"]["num_classes"]`` and
optionally ``config["model"]["kwargs"]`` and ``config["model"]["in_channels"]`` (see :mod:`ddsd.models.build`).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddsd.models.build import build_model
from ddsd.models.weights import strip_key

__all__ = ["load_model", "strip_prefixes"]



def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) key prefixes."""
    return {strip_key(key): value for key, value in state_dict.items()}


def load_model(
    checkpoint: str | Path, map_location: str | torch.device = "cpu", weights_only: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, config dict)`` from a ddsd checkpoint; weights loaded strictly.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: unreadable file, a missing/malformed key, an unknown model, or weights that do not fit
            (the message names the file and the key).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError) as exc:
        hint = " (weights_only=True refused it: pass weights_only=False only for files you trust)" if (
            weights_only and isinstance(exc, pickle.UnpicklingError)) else ""
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}{hint}") from None
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"checkpoint {path} is not a dict (got {type(ckpt).__name__})")

    def require(mapping: Any, key: str, where: str) -> Any:
        if not isinstance(mapping, Mapping) or key not in mapping:
            raise ValueError(f"checkpoint {path} is missing key {where}")
        return mapping[key]

    state_dict = require(ckpt, "model", "'model' (the state_dict)")
    config = require(ckpt, "config", "'config'")
    model_cfg = require(config, "model", "config['model']")
    name = require(model_cfg, "name", "config['model']['name']")
    num_classes = require(model_cfg, "num_classes", "config['model']['num_classes']")
    kwargs = model_cfg.get("kwargs") or {}
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"checkpoint {path}: 'model' must be a state_dict mapping, got {type(state_dict).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ValueError(f"checkpoint {path}: config['model']['num_classes'] must be an int, got {num_classes!r}")
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"checkpoint {path}: config['model']['kwargs'] must be a mapping, got {kwargs!r}")
    try:
        model, _ = build_model(str(name), num_classes, kwargs, int(model_cfg.get("in_channels") or 3))
    except ValueError as exc:
        raise ValueError(f"checkpoint {path}: {exc}") from None
    try:
        model.load_state_dict(strip_prefixes(state_dict), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path}: weights do not match model {name!r}: {exc}") from None
    return model.eval(), dict(config)
