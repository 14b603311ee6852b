"""Small input checks shared by the method's modules (clear errors that name the argument and value)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_logits(name: str, logits: object) -> Tensor:
    """Require a floating tensor of shape [B, K, H, W]."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, K, H, W], got {type(logits).__name__}")
    if logits.dim() != 4:
        raise ValueError(f"{name} must be 4-D [B, K, H, W], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (logits), got dtype {logits.dtype}")
    return logits


def check_finite(name: str, tensor: Tensor) -> None:
    """Raise when ``tensor`` holds NaN or infinity (one reduction, one host sync)."""
    if not bool(torch.isfinite(tensor).all()):
        bad = "NaN" if bool(torch.isnan(tensor).any()) else "inf"
        raise ValueError(
            f"{name} contains {bad} values; the loss would be {bad}. Check the learning rate / AMP scaling, "
            "or pass check_inputs=False to skip this check."
        )


def check_target(
    target: object, batch: int, height: int, width: int, num_classes: int, ignore_index: int, values: bool = True
) -> Tensor:
    """Require an integer mask [B, H, W] whose values are in 0..K-1 or ``ignore_index`` (``values=False``: type and
    shape only, for a caller that checks the values itself)."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor of shape [B, H, W], got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer tensor of class ids, got dtype {target.dtype}")
    if tuple(target.shape) != (batch, height, width):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match the logits' batch/spatial dims "
            f"{(batch, height, width)} (expected [B, H, W])"
        )
    if not values:
        return target.long()
    lo, hi = torch.aminmax(target)
    if int(lo) >= 0 and (int(hi) < num_classes or (int(hi) == ignore_index and num_classes > ignore_index)):
        return target.long()
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(
            f"target holds value {value}, which is neither a class id in 0..{num_classes - 1} "
            f"nor ignore_index={ignore_index}"
        )
    return target.long()


def check_rate(rate: float, name: str = "rate") -> float:
    """Require a dropout rate in [0, 1)."""
    r = float(rate)
    if not (0.0 <= r < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    return r
