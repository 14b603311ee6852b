"""Segmentation metrics with the field's conventions.

* :class:`BinarySegMetrics`: binary object segmentation (SOD/COD) scored per image with ``pysodmetrics``
  (F-beta max/mean/adaptive with ``beta^2 = 0.3``, weighted F, MAE, S, E) plus IoU/Dice of the mask
  thresholded at 0.5 and boundary IoU (Cheng et al., band = 2 % of the diagonal), averaged over images.
  Main metric ``fbeta_max``.
* :class:`MulticlassSegMetrics`: one confusion matrix over the split; per-class IoU (NaN for absent classes),
  ``miou = nanmean``, pixel accuracy, mean class accuracy, boundary IoU. Main metric ``miou``.
* Both have ``sync()`` for DDP: exact int64 sums (multi-class) or gathered per-image scores (binary).
* Functional kernels: :func:`confusion_matrix`, :func:`iou_from_confmat`, :func:`boundary_band`,
  :func:`boundary_dilation`. The conventions that decide comparisons with papers: docs/metrics.md.
"""

from ddsd.metrics.binary import BINARY_KEYS, BinarySegMetrics, binary_overlap_scores
from ddsd.metrics.functional import (
    DEFAULT_DILATION_RATIO,
    boundary_band,
    boundary_dilation,
    class_argmax,
    confusion_matrix,
    iou_from_confmat,
    label_boundary,
    nanmean,
)
from ddsd.metrics.multiclass import MULTICLASS_KEYS, MulticlassSegMetrics

__all__ = [
    "BINARY_KEYS",
    "DEFAULT_DILATION_RATIO",
    "MULTICLASS_KEYS",
    "BinarySegMetrics",
    "MulticlassSegMetrics",
    "binary_overlap_scores",
    "boundary_band",
    "boundary_dilation",
    "class_argmax",
    "confusion_matrix",
    "iou_from_confmat",
    "label_boundary",
    "nanmean",
]
