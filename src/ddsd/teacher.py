"""Step 1 of the method: the teacher's per-pixel class probabilities.

Two teachers produce the same thing, probabilities ``p_t: [B, K, H, W]`` that never carry gradient:

* the **virtual teacher** built from the mask alone ("perfect segmentation accuracy"):
  ``p_t(k | i) = a`` if ``k == y_i`` else ``b = (1 - a) / (K - 1)``, with confidence ``a in (1/K, 1]``;
  its argmax equals ``y`` at every valid pixel, ``a = 1`` is the one-hot teacher;
* a **network teacher**: ``p_t = softmax(z_t / T)`` of a frozen network's logits, resized bilinearly to
  the student's resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ddsd._checks import check_logits, check_target

__all__ = [
    "check_confidence",
    "teacher_log_probs",
    "teacher_probs",
    "virtual_teacher",
    "virtual_teacher_values",
]


def check_confidence(confidence: float, num_classes: int) -> float:
    """Validate the virtual teacher's confidence ``a in (1/K, 1]`` and return it as a float."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    a = float(confidence)
    if not (1.0 / num_classes < a <= 1.0) or math.isnan(a):
        raise ValueError(
            f"confidence must be in (1/K, 1] = ({1.0 / num_classes:.4g}, 1] for K={num_classes}, "
            f"got {confidence!r}: "
            "at or below 1/K the teacher's argmax would not be the target class"
        )
    return a


def virtual_teacher_values(confidence: float, num_classes: int) -> tuple[float, float, float]:
    """Return ``(a, b, sum_k p_t(k) log p_t(k))`` for the virtual teacher (``0 log 0 = 0``)."""
    a = check_confidence(confidence, num_classes)
    b = (1.0 - a) / (num_classes - 1)
    neg_entropy = a * math.log(a) + ((num_classes - 1) * b * math.log(b) if b > 0 else 0.0)
    return a, b, neg_entropy


def virtual_teacher(
    target: Tensor, num_classes: int, confidence: float = 0.9, ignore_index: int = 255
) -> Tensor:
    """Virtual teacher probabilities from a mask.

    Args:
        target: int mask ``[B, H, W]`` with class ids ``0..K-1`` or ``ignore_index``.
        num_classes: ``K >= 2``.
        confidence: ``a in (1/K, 1]``, the probability given to the target class.
        ignore_index: void label; those pixels get the uniform distribution ``1/K`` (they never enter a loss).

    Returns:
        ``p_t: [B, K, H, W]`` float32, rows sum to 1, ``argmax == target`` at every valid pixel.
    """
    a, b, _ = virtual_teacher_values(confidence, num_classes)
    if not isinstance(target, Tensor) or target.dim() != 3:
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must be a [B, H, W] tensor, got {shape}")
    bsz, h, w = target.shape
    y = check_target(target, bsz, h, w, num_classes, ignore_index)
    valid = y != ignore_index
    probs = torch.full((bsz, num_classes, h, w), b, dtype=torch.float32, device=y.device)
    probs.scatter_(1, torch.where(valid, y, 0).unsqueeze(1), a)
    return torch.where(valid.unsqueeze(1), probs, torch.full_like(probs, 1.0 / num_classes))


def teacher_log_probs(teacher_logits: Tensor, size: tuple[int, int], temperature: float = 1.0) -> Tensor:
    """``log softmax(z_t / T)`` of a network teacher, logits resized bilinearly to ``size``; no gradient.

    Args:
        teacher_logits: ``[B, K, h, w]`` (any floating dtype; computed in float32).
        size: the student's ``(H, W)``.
        temperature: ``T > 0``.

    Returns:
        ``[B, K, H, W]`` float32 log-probabilities, detached.
    """
    check_logits("teacher_logits", teacher_logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    with torch.no_grad():
        z = teacher_logits.detach().float()
        if tuple(z.shape[-2:]) != tuple(size):
            z = F.interpolate(z, size=tuple(size), mode="bilinear", align_corners=False)
        return F.log_softmax(z / temperature, dim=1)


def teacher_probs(teacher_logits: Tensor, size: tuple[int, int], temperature: float = 1.0) -> Tensor:
    """Network-teacher probabilities ``softmax(z_t / T)`` at ``size``: ``[B, K, H, W]``, no grad."""
    return teacher_log_probs(teacher_logits, size, temperature).exp()
