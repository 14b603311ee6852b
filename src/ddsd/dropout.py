"""Step 3 of the method: dynamic dropout, i.e. which pixels keep their distillation term.

Given difficulties ``d`` and a rate ``r in [0, 1)``, in each scope unit ``U`` (one image for
``per_image``, the whole batch for ``per_batch``) with valid pixels ``V_U``, exactly
``|V_U| - floor(r * |V_U|)`` valid pixels are kept: those with the smallest difficulty, ties broken by flat
pixel index (lower index kept first). Invalid pixels are never kept.

Selection is O(N): one k-th value per unit (``torch.kthvalue``, quickselect on CPU, radix select on CUDA)
plus comparisons and, only when ties at the threshold must be split, one cumulative sum; no sort, no Python
loop over images or pixels. Units with different numbers of kept pixels are handled in one batched
``kthvalue`` by padding each row with ``-inf`` so that every row's wanted rank becomes the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SCOPES", "check_scope", "keep_counts", "keep_mask", "select_keep", "threshold_keep_mask"]

SCOPES = ("per_image", "per_batch")


def check_scope(scope: str) -> str:
    """Validate a scope name."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    return scope


def keep_counts(num_valid: Tensor, rate: float | Tensor) -> Tensor:
    """``|V| - floor(rate * |V|)`` per unit, in float64 arithmetic (as Python's ``math.floor`` would do)."""
    n = num_valid.to(torch.float64)
    r = torch.as_tensor(rate, dtype=torch.float64, device=n.device)
    return (n - torch.floor(r * n)).to(torch.int64)


def _check_rate(rate: float | Tensor) -> None:
    if isinstance(rate, Tensor):
        if rate.numel() != 1:
            raise ValueError(f"rate must be a scalar, got a tensor of shape {tuple(rate.shape)}")
    value = float(rate)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"rate must be in [0, 1), got {rate!r}")


def keep_mask(difficulty: Tensor, valid: Tensor, rate: float | Tensor, scope: str = "per_image") -> Tensor:
    """Boolean mask of the pixels whose distillation term is kept.

    Args:
        difficulty: ``[B, H, W]`` float, per-pixel difficulty (no NaN).
        valid: ``[B, H, W]`` bool, True for non-void pixels.
        rate: dropout rate ``r in [0, 1)``: the fraction of each unit's valid pixels that is dropped
            (a Python float or a 0-d tensor).
        scope: ``"per_image"`` (rank within each image) or ``"per_batch"`` (rank over the whole batch).

    Returns:
        ``keep: [B, H, W]`` bool; per unit exactly ``|V| - floor(r |V|)`` True entries, all valid, every kept
        pixel's difficulty ``<=`` every dropped valid pixel's.
    """
    check_scope(scope)
    if difficulty.dim() != 3:
        raise ValueError(f"difficulty must be [B, H, W], got shape {tuple(difficulty.shape)}")
    if valid.shape != difficulty.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a bool tensor of the difficulty's shape {tuple(difficulty.shape)}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    _check_rate(rate)
    return select_keep(difficulty, valid, rate, scope)


def select_keep(difficulty: Tensor, valid: Tensor, rate: float | Tensor, scope: str) -> Tensor:
    """:func:`keep_mask` without argument checks (for hot paths whose inputs are already validated).

    Two host syncs: the per-unit keep counts (common fast paths: nothing dropped; every unit keeps the same
    count, so no padding) and whether ties at the threshold must be split by index (else no cumsum).
    """
    bsz = difficulty.shape[0]
    rows = 1 if scope == "per_batch" else bsz
    d = difficulty.detach().reshape(rows, -1)
    v = valid.reshape(rows, -1)
    n_valid = v.sum(1)
    k = keep_counts(n_valid, rate)  # [rows]
    k_min, k_max, all_kept, all_valid = torch.stack(
        [k.min(), k.max(), (k == n_valid).all().long(), (n_valid == v.shape[1]).all().long()]
    ).tolist()
    if all_kept:  # rate 0 (or floor(r|V|) = 0 everywhere): keep every valid pixel
        return valid.clone()
    if k_max == 0:
        return torch.zeros_like(valid)
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
    key = d if all_valid else torch.where(v, d, inf)
    if k_min == k_max:
        thresh = torch.kthvalue(key, k_max, dim=1).values.unsqueeze(1)
    else:
        # Pad row b with (k_max - k_b) copies of -inf: the k_max-th smallest of the padded row is the
        # k_b-th smallest of the original row (or -inf when k_b == 0, which keeps nothing).
        width = k_max - k_min
        col = torch.arange(width, device=d.device)
        pad = torch.where(col.unsqueeze(0) < (k_max - k).unsqueeze(1), -inf, inf)
        thresh = torch.kthvalue(torch.cat([pad, key], dim=1), k_max, dim=1).values.unsqueeze(1)
    below = key < thresh
    ties = (key == thresh) if all_valid else v & (key == thresh)
    need = k - below.sum(1)  # how many tied pixels to keep, lowest flat index first
    if bool((ties.sum(1) == need).all()):
        keep = below | ties
    else:
        keep = below | (ties & (torch.cumsum(ties, dim=1) <= need.unsqueeze(1)))
    return keep.reshape(difficulty.shape)


def threshold_keep_mask(difficulty: Tensor, valid: Tensor, tau: float | Tensor) -> Tensor:
    """Keep the valid pixels with ``d_i <= tau`` (the ``threshold`` schedule): ``[B, H, W]`` bool."""
    return valid & (difficulty.detach() <= tau)
