"""Stateless metric kernels in torch: confusion matrix, IoU from it, boundary bands.

Conventions (shared by :mod:`ddsd.metrics.binary` and :mod:`ddsd.metrics.multiclass`):

* Confusion matrix ``cm`` is ``int64 [K, K]`` with **rows = target, columns = prediction**:
  ``cm[t, p] = #{valid pixels with target t and prediction p}``; a pixel is valid when
  ``target != ignore_index``.
* Per-class IoU ``IoU_c = cm[c, c] / (sum_p cm[c, p] + sum_t cm[t, c] - cm[c, c])``
  = ``TP / (TP + FP + FN)``; ``NaN`` when the denominator is 0 (class absent from both target and
  prediction), so ``nanmean`` leaves such classes out of the mean instead of counting them as 0.
* Boundary band of width ``d`` (Cheng et al., "Boundary IoU", CVPR 2021): the pixels of a region whose
  Chebyshev (chessboard) distance to the nearest pixel outside the region is ``<= d``, i.e.
  ``band = mask & ~erode(mask, square(2d+1))`` = ``G_d ∩ G`` in the paper's notation. The erosion pads the
  image with background, so the image border counts as a contour. This is exactly the reference
  ``mask_to_boundary`` (github.com/bowenc0221/boundary-iou-api, ``boundary_iou/utils/boundary_utils.py``):
  ``cv2.copyMakeBorder(mask, 1, 1, 1, 1, BORDER_CONSTANT, value=0)``, then ``cv2.erode`` with a 3x3 kernel
  ``d`` times (``d`` 3x3 erosions = one ``(2d+1)``-square erosion), then ``mask - eroded``.
* The width: by default the reference's ``d = max(1, round(ratio * sqrt(H^2 + W^2)))`` with
  ``ratio = 0.02`` (:func:`boundary_dilation`; ``round`` is Python's, half to even, as the reference's
  ``int(round(np.float64))``), from the mask's own ``H, W``; or a fixed ``width`` in pixels (the first
  results round used ``width = 3``, see docs/metrics.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "boundary_band",
    "boundary_dilation",
    "confusion_matrix",
    "iou_from_confmat",
    "label_boundary",
    "nanmean",
]


#: Cheng et al.'s default: the band is 2 % of the image diagonal wide.
DEFAULT_DILATION_RATIO = 0.02


def check_boundary_options(width: int | None, dilation_ratio: float) -> None:
    """Raise ``ValueError`` unless ``width`` is ``None`` or an int ``>= 1`` and ``dilation_ratio`` is finite ``> 0``."""
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"boundary width must be None (use the dilation ratio) or an integer >= 1 (pixels), "
                         f"got {width!r}")
    if isinstance(dilation_ratio, bool) or not isinstance(dilation_ratio, int | float) or not (
        math.isfinite(dilation_ratio) and dilation_ratio > 0
    ):
        raise ValueError(f"boundary dilation ratio must be a finite number > 0, got {dilation_ratio!r}")


def boundary_dilation(height: int, width: int, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> int:
    """Cheng et al.'s band width ``d = max(1, round(dilation_ratio * sqrt(H^2 + W^2)))`` in pixels.

    ``round`` is Python's (half to even), as ``int(round(np.float64))`` in the reference; e.g. a 75 x 100
    image (diagonal 125, ``0.02 * 125 = 2.5``) gets ``d = 2``, a 512 x 512 one ``d = 14``.
    """
    check_boundary_options(None, dilation_ratio)
    return max(1, round(dilation_ratio * math.sqrt(height**2 + width**2)))


def _resolve_width(shape: torch.Size, width: int | None, dilation_ratio: float) -> int:
    """The band width in pixels: ``width`` when given, else :func:`boundary_dilation` of ``shape[-2:]``."""
    check_boundary_options(width, dilation_ratio)
    if width is not None:
        return width
    return boundary_dilation(int(shape[-2]), int(shape[-1]), dilation_ratio)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Confusion matrix ``int64 [K, K]`` (rows = target, columns = prediction) over the valid pixels.

    Args:
        pred: integer class ids, any shape (typically ``[B, H, W]``), values in ``0..K-1``.
        target: integer class ids, same shape, values in ``0..K-1`` or ``ignore_index``.
        num_classes: ``K``.
        ignore_index: target value whose pixels are left out (predictions there are not counted).

    Returns:
        ``cm`` with ``cm[t, p] = #{pixels: target == t, pred == p, target != ignore_index}``, computed as
        ``bincount(target * K + pred, minlength=K*K).view(K, K)`` on the valid pixels, on ``pred``'s device.

    Raises:
        ValueError: on shape mismatch or class ids outside ``0..K-1`` (other than ``ignore_index``).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("pred and target must be integer class ids (use argmax on logits first)")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    valid = target != ignore_index
    t = target[valid]
    p = pred[valid]
    if t.numel():
        if bool(((t < 0) | (t >= num_classes)).any()):
            bad = int(t[(t < 0) | (t >= num_classes)][0])
            raise ValueError(
                f"target holds value {bad}, neither a class id in 0..{num_classes - 1} "
                f"nor ignore_index={ignore_index}"
            )
        if bool(((p < 0) | (p >= num_classes)).any()):
            bad = int(p[(p < 0) | (p >= num_classes)][0])
            raise ValueError(f"pred holds value {bad}, not a class id in 0..{num_classes - 1}")
    cm = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return cm.view(num_classes, num_classes).long()


def iou_from_confmat(cm: Tensor) -> Tensor:
    """Per-class IoU ``[K]`` float64 from a confusion matrix (rows = target).

    ``IoU_c = cm[c,c] / (row_c + col_c - cm[c,c])``; ``NaN`` where the denominator is 0 (the class appears
    neither in the target nor in the prediction).
    """
    cm = cm.double()
    tp = torch.diagonal(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    iou = tp / denom
    return torch.where(denom > 0, iou, torch.full_like(iou, float("nan")))


def nanmean(values: Tensor) -> float:
    """Mean over the non-NaN entries as a Python float; ``NaN`` (no warning) when every entry is NaN."""
    values = values.double()
    keep = ~torch.isnan(values)
    if not bool(keep.any()):
        return float("nan")
    return float(values[keep].mean())


def _sliding_max(xp: Tensor, n: int, dim: int) -> Tensor:
    """Max over every window of ``n`` consecutive entries of ``xp`` along ``dim`` (output ``len - n + 1``).

    Doubling (a sparse table): ``M_1 = xp``, ``M_2k[i] = max(M_k[i], M_k[i + k])``, and with ``k`` the largest
    power of two ``<= n`` the window max is ``max(M_k[i], M_k[i + n - k])`` (two overlapping halves): about
    ``log2(n) + 1`` element-wise ``torch.maximum`` ops instead of ``n - 1``, exact in ``xp``'s dtype.
    """
    m, k = xp, 1
    while 2 * k <= n:
        size = m.shape[dim] - k
        m = torch.maximum(m.narrow(dim, 0, size), m.narrow(dim, k, size))
        k *= 2
    size = xp.shape[dim] - n + 1
    return torch.maximum(m.narrow(dim, 0, size), m.narrow(dim, n - k, size))


def _local_max(x: Tensor, width: int, pad_value: float | int) -> Tensor:
    """Max over the ``(2w+1) x (2w+1)`` window of each pixel of ``x [B, H, W]``, outside = ``pad_value``.

    Separable and exact in ``x``'s own dtype: a sliding max of length ``2w+1`` along W, then along H
    (:func:`_sliding_max`, ``O(log w)`` element-wise ops; much faster on CPU than a float ``max_pool2d`` of
    the same window, which also needs a float copy of integer labels).
    """
    xp = F.pad(x, (width, width, width, width), mode="constant", value=pad_value)
    return _sliding_max(_sliding_max(xp, 2 * width + 1, -1), 2 * width + 1, -2)


def class_argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(dim=1)`` for ``[B, K, H, W]`` scores, same result (first maximum wins), computed over a
    channels-last copy: a reduction over the innermost dimension is ~3x faster on CPU than over dim 1."""
    return logits.movedim(1, -1).contiguous().argmax(dim=-1)


def boundary_band(mask: Tensor, width: int | None = None, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> Tensor:
    """Inner boundary band ``G_d ∩ G`` of width ``w`` of each binary mask (Cheng et al.'s ``mask_to_boundary``).

    Args:
        mask: bool (or 0/1) ``[B, H, W]`` or ``[H, W]``.
        width: ``w >= 1`` pixels; ``None`` (default): ``w = boundary_dilation(H, W, dilation_ratio)``.
        dilation_ratio: the band's width as a fraction of the image diagonal when ``width`` is ``None``.

    Returns:
        bool, same shape: ``mask & ~erode(mask)`` where ``erode`` is the minimum over the
        ``(2w+1) x (2w+1)`` square window with the outside of the image counted as
        background. So a pixel is in the band iff it is in the mask and some pixel within Chebyshev distance
        ``w`` (or the image border within that distance) is not.
    """
    width = _resolve_width(mask.shape, width, dilation_ratio)
    squeeze = mask.dim() == 2
    if squeeze:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        raise ValueError(f"mask must be [B, H, W] or [H, W], got shape {tuple(mask.shape)}")
    m = mask.bool()
    # erosion = 1 - dilation of the complement; the complement is 1 outside the image (padding value 1).
    eroded = _local_max((~m).to(torch.uint8), width, pad_value=1) == 0
    band = m & ~eroded
    return band.squeeze(0) if squeeze else band


def label_boundary(labels: Tensor, width: int | None = None, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> Tensor:
    """Boundary band of every region of a label map at once.

    Args:
        labels: integer ``[B, H, W]`` (class ids; any value, e.g. ``ignore_index``, is its own region).
        width: ``w >= 1`` pixels; ``None`` (default): ``w = boundary_dilation(H, W, dilation_ratio)``.
        dilation_ratio: the band's width as a fraction of the image diagonal when ``width`` is ``None``.

    Returns:
        bool ``[B, H, W]``: True where some pixel within Chebyshev distance ``w`` has a different label or
        lies outside the image. For every class ``c``:
        ``label_boundary(labels) & (labels == c) == boundary_band(labels == c)``, so one pair of max-pools
        gives the bands of all classes (no per-class one-hot).
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be [B, H, W], got shape {tuple(labels.shape)}")
    width = _resolve_width(labels.shape, width, dilation_ratio)
    # Exact on int64; the sentinel min - 1, below every label, marks the outside of the image.
    x = labels.long()
    outside = int(x.min()) - 1 if x.numel() else -1
    local_max = _local_max(x, width, pad_value=outside)  # outside never wins the max: neutral
    local_min = -_local_max(-x, width, pad_value=-outside)  # outside wins the min: the border is a contour
    return (local_max != x) | (local_min != x)
