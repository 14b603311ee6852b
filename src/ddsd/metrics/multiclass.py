"""Multi-class semantic segmentation metrics: one confusion matrix over the whole split.

With ``cm`` the ``int64 [K, K]`` confusion matrix summed over every valid pixel of the split (rows = target,
columns = prediction; pixels with ``target == ignore_index`` are left out):

* ``IoU_c = cm[c,c] / (sum_p cm[c,p] + sum_t cm[t,c] - cm[c,c])``, NaN when the class is absent from both
  target and prediction; ``miou = nanmean_c IoU_c`` (absent classes are left out, not counted as 0).
  A class that is predicted but absent from the target has IoU 0 and is counted.
* ``pixel_acc = trace(cm) / sum(cm)``.
* ``mean_class_acc = nanmean_c cm[c,c] / sum_p cm[c,p]`` (per-class recall), NaN for classes absent from
  the target (mmsegmentation's ``mAcc``).
* ``boundary_iou = nanmean_c I_c / U_c`` with, summed over the split, ``I_c = |Gb_c ∩ Pb_c|``,
  ``U_c = |Gb_c ∪ Pb_c|`` on valid pixels, ``Gb_c = boundary_band(target == c)``,
  ``Pb_c = boundary_band(pred == c)``; NaN (left out) where ``U_c = 0``. The bands are Cheng et al.'s
  (``G_d ∩ G``) with ``d = max(1, round(0.02 * diagonal))`` of each image by default, or a fixed
  ``boundary_width``; the per-class aggregation over the split is the one of ``miou`` (the reference
  defines Boundary IoU for one mask pair and leaves the semantic-segmentation aggregation open).
  The target's band is computed
  on the label map including ``ignore_index`` regions, so class pixels next to an ignored region (e.g. the
  VOC outline) lie on a boundary; ignored pixels themselves are never counted.

Differences from ``torchmetrics`` 1.9 (read from ``_jaccard_index_reduce`` in
``functional/classification/jaccard.py``):
``MulticlassJaccardIndex(average="macro", ignore_index=255)`` gives the same ``miou`` (it gives weight 0 to
classes with ``row + col == 0``); with ``average="none"`` it reports such absent classes as
``zero_division = 0.0`` where we report NaN / ``None``. ``MulticlassAccuracy(average="macro")`` only leaves
out classes with ``TP + FP + FN == 0``, so a class predicted but absent from the target counts 0 there and
is left out of our ``mean_class_acc``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ddsd.metrics._dist import all_reduce_sum_int64, dist_active
from ddsd.metrics.functional import (
    DEFAULT_DILATION_RATIO,
    check_boundary_options,
    class_argmax,
    confusion_matrix,
    iou_from_confmat,
    label_boundary,
    nanmean,
)

__all__ = ["MULTICLASS_KEYS", "MulticlassSegMetrics"]

MULTICLASS_KEYS = ("miou", "pixel_acc", "mean_class_acc", "boundary_iou", "per_class_iou", "num_images")


def _nan_ratio(num: Tensor, den: Tensor) -> Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, math.nan))


class MulticlassSegMetrics:
    """Accumulates a split-wide confusion matrix and boundary counts (see the module docstring).

    Args:
        num_classes: ``K``.
        ignore_index: target value left out of every count (outside ``0..K-1``, e.g. 255).
        boundary_width: fixed width ``w`` (pixels) of the boundary band for ``boundary_iou``; ``None``
            (default): Cheng et al.'s ``w = max(1, round(boundary_dilation_ratio * diagonal))`` per image.
        class_names: ``K`` names for ``per_class_iou`` (default ``"0" .. "K-1"``).
        boundary_dilation_ratio: the band's width as a fraction of the image diagonal (default 0.02).

    Attributes:
        confmat: ``int64 [K, K]`` on CPU, rows = target, columns = prediction.
        boundary_inter, boundary_union: ``int64 [K]`` boundary intersections / unions per class.
    """

    main_metric = "miou"
    higher_is_better = True

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        boundary_width: int | None = None,
        class_names: Sequence[str] | None = None,
        boundary_dilation_ratio: float = DEFAULT_DILATION_RATIO,
    ):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} must not be a class id in 0..{num_classes - 1}")
        check_boundary_options(boundary_width, boundary_dilation_ratio)
        if class_names is None:
            class_names = [str(i) for i in range(num_classes)]
        class_names = [str(n) for n in class_names]
        if len(class_names) != num_classes or len(set(class_names)) != num_classes:
            raise ValueError(f"class_names must be {num_classes} distinct names, got {class_names!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.boundary_width = boundary_width
        self.boundary_dilation_ratio = float(boundary_dilation_ratio)
        self.class_names = class_names
        self.reset()

    def reset(self) -> None:
        """Zero every count."""
        k = self.num_classes
        self.confmat = torch.zeros(k, k, dtype=torch.int64)
        self.boundary_inter = torch.zeros(k, dtype=torch.int64)
        self.boundary_union = torch.zeros(k, dtype=torch.int64)
        self.num_images = 0
        self._synced = False

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred: class ids int ``[B, H, W]``, or logits / probabilities float ``[B, K, H, W]`` (argmax over
                dim 1); ``[H, W]`` / ``[K, H, W]`` for a single image.
            target: int ``[B, H, W]`` (or ``[H, W]``) with values in ``0..K-1`` or ``ignore_index``.
        """
        if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
            raise TypeError("pred and target must be torch tensors")
        if target.dim() == 2:
            target = target.unsqueeze(0)
            pred = pred.unsqueeze(0)
        if target.dim() != 3:
            raise ValueError(f"target must be [B, H, W], got shape {tuple(target.shape)}")
        if pred.is_floating_point():
            if pred.dim() != 4 or pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"float pred must be logits [B, K={self.num_classes}, H, W], "
                    f"got shape {tuple(pred.shape)}"
                )
            pred = class_argmax(pred)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred = pred.long()
        target = target.to(pred.device).long()
        k = self.num_classes
        self.confmat += confusion_matrix(pred, target, k, self.ignore_index).cpu()

        valid = target != self.ignore_index
        gb = label_boundary(target, self.boundary_width, self.boundary_dilation_ratio) & valid
        pb = label_boundary(pred, self.boundary_width, self.boundary_dilation_ratio) & valid
        g_count = torch.bincount(target[gb], minlength=k)
        p_count = torch.bincount(pred[pb], minlength=k)
        inter = torch.bincount(target[gb & pb & (target == pred)], minlength=k)
        self.boundary_inter += inter.cpu()
        self.boundary_union += (g_count + p_count - inter).cpu()
        self.num_images += int(target.shape[0])
        self._synced = False

    def sync(self) -> None:
        """Sum the counts of every rank exactly (one int64 ``all_reduce(SUM)``), so all ranks hold the split's
        totals. No-op without an initialised process group, or when called again with no update in between.
        (A ``DistributedSampler`` that pads the split counts a few images twice: shard without padding.)"""
        if not dist_active() or self._synced:
            return
        k = self.num_classes
        flat = torch.cat(
            [
                self.confmat.reshape(-1),
                self.boundary_inter,
                self.boundary_union,
                torch.tensor([self.num_images], dtype=torch.int64),
            ]
        )
        flat = all_reduce_sum_int64(flat)
        self.confmat = flat[: k * k].reshape(k, k).clone()
        self.boundary_inter = flat[k * k : k * k + k].clone()
        self.boundary_union = flat[k * k + k : k * k + 2 * k].clone()
        self.num_images = int(flat[-1])
        self._synced = True

    def per_class_iou_tensor(self) -> Tensor:
        """``[K]`` float64 IoU per class, NaN for classes absent from both target and prediction."""
        return iou_from_confmat(self.confmat)

    def compute(self) -> dict:
        """Scores (keys :data:`MULTICLASS_KEYS`); ``per_class_iou`` maps class name -> float, or ``None``
        for NaN, so the dict is JSON-safe. Scalars are NaN when nothing has been counted."""
        cm = self.confmat
        iou = iou_from_confmat(cm)
        total = int(cm.sum())
        return {
            "miou": nanmean(iou),
            "pixel_acc": float(torch.diagonal(cm).sum()) / total if total > 0 else math.nan,
            "mean_class_acc": nanmean(_nan_ratio(torch.diagonal(cm), cm.sum(1))),
            "boundary_iou": nanmean(_nan_ratio(self.boundary_inter, self.boundary_union)),
            "per_class_iou": {
                name: (None if math.isnan(v) else v)
                for name, v in zip(self.class_names, iou.tolist(), strict=True)
            },
            "num_images": self.num_images,
        }
