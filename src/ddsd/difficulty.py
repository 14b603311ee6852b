"""Step 2 of the method: per-pixel difficulty, how far the student is from the teacher.

For each pixel ``i`` (computed without gradient), with ``p_s = softmax(z_s / T)``:

* ``one_sided_kl`` (default): ``d_i = KL(p_t || p_s)_i`` where the student's target-class probability is below
  the teacher's, ``p_s(y_i) < p_t(y_i)``, else 0: monotone in the student's error for every ``a`` and ``T``
  (docs/method.md);
* ``kl``: ``d_i = KL(p_t || p_s)_i = sum_k p_t(k) (log p_t(k) - log p_s(k))`` (the first reading; *not*
  monotone when ``a < 1``: a pixel the student gets right with a margin beyond ``T ln(a/b)`` scores as hard);
* ``target_gap``: ``d_i = max(0, p_t(y_i) - p_s(y_i))`` (``y`` = target, or the teacher's argmax);
* ``l1``: ``d_i = sum_k |p_t(k) - p_s(k)|``.

Difficult-to-learn pixels are the valid pixels with the largest ``d_i``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ddsd._checks import check_logits

__all__ = ["DIFFICULTY_KINDS", "check_kind", "pixel_difficulty"]

DIFFICULTY_KINDS = ("one_sided_kl", "kl", "target_gap", "l1")


def check_kind(kind: str) -> str:
    """Validate a difficulty kind name."""
    if kind not in DIFFICULTY_KINDS:
        raise ValueError(f"difficulty kind must be one of {DIFFICULTY_KINDS}, got {kind!r}")
    return kind


def pixel_difficulty(
    student_logits: Tensor,
    teacher_probs: Tensor,
    target: Tensor | None = None,
    kind: str = "one_sided_kl",
    temperature: float = 1.0,
    ignore_index: int = 255,
) -> Tensor:
    """Per-pixel teacher-student distance.

    Args:
        student_logits: ``[B, K, H, W]``.
        teacher_probs: ``[B, K, H, W]`` probabilities (virtual or network teacher).
        target: optional ``[B, H, W]`` class ids; used by ``target_gap`` and ``one_sided_kl`` (default: the
            teacher's argmax).
            Pixels equal to ``ignore_index`` get difficulty 0.
        kind: ``"one_sided_kl" | "kl" | "target_gap" | "l1"``.
        temperature: ``T > 0`` applied to the student logits.

    Returns:
        ``d: [B, H, W]`` float32, ``>= 0``, detached (never carries gradient).
    """
    check_kind(kind)
    check_logits("student_logits", student_logits)
    if teacher_probs.shape != student_logits.shape:
        raise ValueError(
            f"teacher_probs shape {tuple(teacher_probs.shape)} must equal student_logits shape "
            f"{tuple(student_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    with torch.no_grad():
        log_ps = F.log_softmax(student_logits.detach().float() / temperature, dim=1)
        pt = teacher_probs.detach().float()
        y = pt.argmax(1) if target is None else target.long()
        idx = torch.where(y == ignore_index, 0, y).unsqueeze(1)
        if kind in ("kl", "one_sided_kl"):
            d = (torch.xlogy(pt, pt) - pt * log_ps).sum(1).clamp_min(0.0)
            if kind == "one_sided_kl":
                below = log_ps.gather(1, idx).squeeze(1).exp() < pt.gather(1, idx).squeeze(1)
                d = torch.where(below, d, torch.zeros_like(d))
        elif kind == "l1":
            d = (pt - log_ps.exp()).abs().sum(1)
        else:
            d = (pt.gather(1, idx) - log_ps.exp().gather(1, idx)).squeeze(1).clamp_min(0.0)
        if target is not None:
            d = torch.where(target == ignore_index, torch.zeros_like(d), d)
    return d
