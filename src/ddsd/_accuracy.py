"""Per-class pixel accuracy counts of a step (the capability the dropout schedule follows) and masked means,
shared by :class:`ddsd.DDSDLoss` and the baselines; every function is free of host syncs (compiles)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accuracy_counts", "accuracy_stats", "binary_accuracy_counts", "masked_mean"]


def masked_mean(values: Tensor, mask: Tensor, count: Tensor | None = None) -> Tensor:
    """Mean of ``values`` over ``mask`` (0 when the mask is empty); ``count`` = ``mask.sum()`` if known."""
    n = mask.sum() if count is None else count
    return torch.where(mask, values, 0.0).sum() / n.clamp_min(1)


def accuracy_counts(y0: Tensor, correct: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    """Per-class ``[correct, total]`` pixel counts ``int64 [2, K]`` (one histogram over class/outcome codes).

    ``y0``: ``[B, H, W]`` class ids in ``0..K-1`` (any such id at invalid pixels), ``correct`` / ``valid``: bool
    ``[B, H, W]``. A fixed-size ``scatter_add_`` (``bincount``'s output size would be data-dependent under
    ``torch.compile``).
    """
    codes = y0.reshape(-1) * 2
    codes.add_(correct.reshape(-1)).masked_fill_(~valid.reshape(-1), 2 * num_classes)
    hist = torch.zeros(2 * num_classes + 1, dtype=torch.int64, device=codes.device)  # fixed size: compiles
    hist.scatter_add_(0, codes, torch.ones(1, dtype=torch.int64, device=codes.device).expand(codes.numel()))
    hist = hist[:-1].view(num_classes, 2)
    return torch.stack([hist[:, 1], hist.sum(1)])


def binary_accuracy_counts(is_one: Tensor, correct: Tensor, valid: Tensor, n_valid: Tensor) -> Tensor:
    """:func:`accuracy_counts` for ``K = 2`` by three counts (no histogram): ``is_one`` / ``correct`` / ``valid``
    bool ``[B, H, W]`` (``correct`` only at valid pixels), ``n_valid`` their count (0-d)."""
    ones = torch.count_nonzero(is_one)  # void pixels are never 1 (ignore_index is not a class id)
    right = torch.count_nonzero(correct)
    right_ones = torch.count_nonzero(correct & is_one)
    return torch.stack([torch.stack([right - right_ones, right_ones]), torch.stack([n_valid - ones, ones])])


def accuracy_stats(per_class: Tensor) -> dict[str, Tensor]:
    """``pixel_acc`` and ``mean_class_acc`` (over the classes present) from :func:`accuracy_counts`."""
    present = per_class[1] > 0
    class_acc = per_class[0].double() / per_class[1].clamp_min(1).double()
    return {
        "pixel_acc": per_class[0].sum().double() / per_class[1].sum().clamp_min(1).double(),
        "mean_class_acc": (class_acc * present).sum() / present.sum().clamp_min(1),
    }
