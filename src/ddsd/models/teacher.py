"""Frozen teacher wrapper and checkpoint loader.

:class:`FrozenTeacher` wraps any segmentation network ``[B, 3, H, W] -> [B, K, h, w]`` and guarantees:

* every parameter has ``requires_grad=False``;
* the wrapped network is always in eval mode (BatchNorm uses running statistics, dropout is off), even
  after ``teacher.train()`` or ``parent.train()`` is called on a module containing it;
* ``forward`` runs under ``torch.no_grad()`` (not ``inference_mode``: the returned logits are ordinary
  tensors that can be used as constants inside the student's autograd graph, e.g. in a KD loss);
* optionally, logits are bilinearly resized to the student's resolution.

**Never wrap the teacher in DistributedDataParallel** (nor put it inside a module that is wrapped):
it has no trainable parameters and nothing to synchronise, and DDP would broadcast its BatchNorm buffers
and reject a module without parameters requiring grad. Move it to the device with ``.to(device)`` and
call it directly on each rank.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .registry import create_model

__all__ = ["FrozenTeacher", "load_teacher"]


class FrozenTeacher(nn.Module):
    """Frozen, always-eval, no-grad wrapper around a segmentation network.

    Args:
        net: network mapping ``[B, C, H, W]`` to logits ``[B, K, h, w]``.

    ``forward(x, size=None)``: ``x [B, C, H, W]`` -> logits ``[B, K, h, w]`` detached from autograd
    (``requires_grad=False``); when ``size=(H', W')`` is given and differs from ``(h, w)``, the logits are
    bilinearly resized (``align_corners=False``) to ``[B, K, H', W']``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Ignore ``mode``: the teacher (and everything inside it) stays in eval mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``x [B, C, H, W]`` -> teacher logits ``[B, K, h, w]``, or ``[B, K, *size]`` when ``size`` given."""
        if self.net.training:  # e.g. someone called self.net.train() directly
            self.net.eval()
        with torch.no_grad():
            logits = self.net(x)
            if size is not None and tuple(logits.shape[-2:]) != tuple(size):
                logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from state-dict keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        k = key
        changed = True
        while changed:
            changed = False
            for prefix in ("module.", "_orig_mod."):
                if k.startswith(prefix):
                    k = k[len(prefix) :]
                    changed = True
        out[k] = value
    return out


def load_teacher(
    checkpoint_path: str | Path, map_location: str | torch.device = "cpu", weights_only: bool = True
) -> FrozenTeacher:
    """Build a :class:`FrozenTeacher` from a checkpoint file written by the training loop.

    The checkpoint is a dict with keys ``model`` (a ``state_dict``) and ``config`` (a dict with at least
    ``config["model"]["name"]`` (a registered model name) and ``config["model"]["num_classes"]``; an
    optional ``config["model"]["kwargs"]`` dict is passed to :func:`create_model`). Weights are loaded
    strictly; ``module.``/``_orig_mod.`` key prefixes (DDP, torch.compile) are removed first.

    Args:
        checkpoint_path: path of the ``.pt`` file.
        map_location: passed to ``torch.load``.
        weights_only: passed to ``torch.load``; set ``False`` only for trusted files whose config holds
            objects other than plain containers/strings/numbers.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not such a checkpoint dict, or a required key is missing (the message
            names the file and the key).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"could not load teacher checkpoint {path} with weights_only={weights_only}: {exc}. "
            "If the file is trusted, call load_teacher(..., weights_only=False)."
        ) from exc
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"teacher checkpoint {path} is not a dict (got {type(ckpt).__name__})")

    def require(mapping: Any, key: str, where: str) -> Any:
        if not isinstance(mapping, Mapping) or key not in mapping:
            raise ValueError(f"teacher checkpoint {path} is missing key {where}")
        return mapping[key]

    state_dict = require(ckpt, "model", "'model' (the state_dict)")
    config = require(ckpt, "config", "'config'")
    model_cfg = require(config, "model", "config['model']")
    name = require(model_cfg, "name", "config['model']['name']")
    num_classes = require(model_cfg, "num_classes", "config['model']['num_classes']")
    kwargs = model_cfg.get("kwargs") or {}
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"teacher checkpoint {path}: 'model' must be a state_dict mapping")
    net = create_model(str(name), int(num_classes), **dict(kwargs))
    net.load_state_dict(_strip_prefixes(state_dict), strict=True)
    return FrozenTeacher(net).to(map_location)
