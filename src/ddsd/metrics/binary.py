"""Binary object segmentation metrics (salient / camouflaged object detection conventions).

Every score is computed **per image**, on the object-probability map at the mask's **original size**, and then
averaged over the images of the split (the field's protocol). The reference is the maintained ``pysodmetrics``
package (``py_sod_metrics``), which this module calls directly.

How the probability map is handed to ``pysodmetrics`` (read from ``py_sod_metrics/utils.py``,
``sod_metrics.py``, version 1.6.2):

* ``step(pred, gt)`` with the default ``normalize=True`` expects ``uint8`` images: it computes
  ``pred = pred / 255`` and then **min-max normalises** it, ``(pred - min) / (max - min)`` whenever
  ``max != min`` (MATLAB ``mapminmax(im2double(.))``), and binarises ``gt > 128``. That would stretch a
  probability map (e.g. a map in ``[0.2, 0.6]`` becomes ``[0, 1]``) and change MAE, S, E, F.
* We therefore call ``step(pred, gt, normalize=False)`` with ``pred`` = the probability map as ``float64`` in
  ``[0, 1]`` and ``gt`` = ``bool``: pysodmetrics then uses the values as they are (it only checks the range).
* The threshold curves (max/mean F-beta and E-measure) are pysodmetrics' own: the map is quantised inside
  the package as ``floor(pred * 255)`` (``(pred * 255).astype(uint8)``) and the 256 thresholds
  ``t = 0..255`` binarise ``q >= t``; ``max``/``mean`` are taken over the dataset-mean curve (mean over
  images first, then max or mean over thresholds), as ``fm["curve"].max()`` in pysodmetrics' examples.
* ``quantize_8bit=True`` first rounds the map to 8 bits, ``pred = round(prob * 255) / 255``, which is what a
  prediction saved as a PNG holds (without the min-max stretch); default ``False`` (the map as is).

Scores (keys of :meth:`BinarySegMetrics.compute`), ``P`` = prediction map, ``G`` = ground truth:

* ``fbeta_*``: ``F = (1 + b2) * Prec * Rec / (b2 * Prec + Rec)`` with ``b2 = beta^2 = 0.3``
  (pysodmetrics' ``Fmeasure(beta=0.3)``; its ``beta`` argument *is* ``beta^2``). ``fbeta_adaptive`` binarises
  at ``min(2 * mean(P), 1)``; ``fbeta_max``/``fbeta_mean`` are the max/mean of the 256-threshold curve.
* ``wfbeta``: weighted F-measure (Margolin et al. 2014) as ``WeightedFmeasure(beta=1)``, pysodmetrics'
  default and the field's (the original MATLAB code uses ``Beta = 1``); set ``wfbeta_beta2`` to change it.
  0 for an image whose ``G`` is empty (pysodmetrics' convention).
* ``mae = mean |P - G|``.
* ``s_measure``: structure measure (Fan et al. 2017), ``alpha = 0.5``. pysodmetrics returns NaN for some
  degenerate one-pixel-wide images (empty quadrants); such a NaN is passed through, as the reference does.
* ``e_measure_*``: enhanced-alignment measure (Fan et al. 2018), adaptive / max / mean as for F-beta.
* ``iou = |B ∩ G| / |B ∪ G|`` and ``dice = 2 |B ∩ G| / (|B| + |G|)`` with ``B = P > 0.5`` (the same strict
  threshold as ``torchmetrics``' binary metrics); both are **1.0 when B and G are both empty**.
* ``boundary_iou = |Gb ∩ Pb| / |Gb ∪ Pb|`` with ``Gb = boundary_band(G)``, ``Pb = boundary_band(B)``
  (:func:`ddsd.metrics.functional.boundary_band`), per image, then averaged over images: Cheng et al.'s
  Boundary IoU of one mask pair, ``|(G_d ∩ G) ∩ (P_d ∩ P)| / |(G_d ∩ G) ∪ (P_d ∩ P)|``, with the band width
  ``d = max(1, round(0.02 * diagonal))`` of each image by default (``boundary_dilation_ratio``), or a fixed
  ``boundary_width`` in pixels (the first results round used 3). 1.0 when both bands are empty (both masks
  empty), where the reference divides 0 by 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddsd.metrics._dist import all_gather_objects, dist_active
from ddsd.metrics.functional import DEFAULT_DILATION_RATIO, boundary_band, check_boundary_options

__all__ = ["BINARY_KEYS", "BinarySegMetrics", "binary_overlap_scores"]

BINARY_KEYS = (
    "fbeta_max",
    "fbeta_mean",
    "fbeta_adaptive",
    "wfbeta",
    "mae",
    "s_measure",
    "e_measure_max",
    "e_measure_mean",
    "e_measure_adaptive",
    "iou",
    "dice",
    "boundary_iou",
    "num_images",
)

# The per-image lists kept by each pysodmetrics evaluator (gathered across ranks by ``sync``).
_SOD_LISTS = {
    "fm": ("adaptive_fms", "changeable_fms", "precisions", "recalls"),
    "wfm": ("weighted_fms",),
    "mae": ("maes",),
    "sm": ("sms",),
    "em": ("adaptive_ems", "changeable_ems"),
}
_OWN_LISTS = ("iou", "dice", "boundary_iou")


def binary_overlap_scores(pred: Tensor, gt: Tensor, boundary_width: int | None = None,
                          boundary_dilation_ratio: float = DEFAULT_DILATION_RATIO) -> dict[str, Tensor]:
    """IoU, Dice and boundary IoU of binary masks, per image.

    Args:
        pred: bool ``[B, H, W]`` (the thresholded prediction).
        gt: bool ``[B, H, W]``.
        boundary_width: band width ``w`` in pixels; ``None``: ``w = max(1, round(ratio * sqrt(H^2 + W^2)))``.
        boundary_dilation_ratio: that ``ratio`` (Cheng et al.'s 0.02).

    Returns:
        ``{"iou", "dice", "boundary_iou"}`` each float64 ``[B]``: ``|P∩G|/|P∪G|``, ``2|P∩G|/(|P|+|G|)``,
        ``|Pb∩Gb|/|Pb∪Gb|`` with ``Xb = boundary_band(X, w)``; each is 1.0 when both sets are empty.
    """
    pred = pred.bool()
    gt = gt.bool()

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        num, den = num.double(), den.double()
        return torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(num))

    inter = (pred & gt).flatten(1).sum(1)
    union = (pred | gt).flatten(1).sum(1)
    sizes = pred.flatten(1).sum(1) + gt.flatten(1).sum(1)
    pb = boundary_band(pred, boundary_width, boundary_dilation_ratio)
    gb = boundary_band(gt, boundary_width, boundary_dilation_ratio)
    b_inter = (pb & gb).flatten(1).sum(1)
    b_union = (pb | gb).flatten(1).sum(1)
    return {
        "iou": ratio(inter, union),
        "dice": ratio(2 * inter, sizes),
        "boundary_iou": ratio(b_inter, b_union),
    }


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach()
        if x.is_floating_point():
            x = x.double()
        return x.cpu().numpy()
    return np.asarray(x)


def _as_batch(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 2:
        return x[None]
    if x.ndim == 3:
        return x
    raise ValueError(f"{name} must be [H, W] or [B, H, W], got shape {x.shape}")


class BinarySegMetrics:
    """Accumulates per-image binary object-segmentation scores over a split (see the module docstring).

    Args:
        boundary_width: fixed width ``w`` (pixels) of the boundary band for ``boundary_iou``; ``None``
            (default): Cheng et al.'s ``w = max(1, round(boundary_dilation_ratio * diagonal))`` per image.
        boundary_dilation_ratio: the band's width as a fraction of the image diagonal (default 0.02).
        quantize_8bit: round the map to 8 bits (``round(p * 255) / 255``) before scoring, as a saved PNG.
        wfbeta_beta2: ``beta^2`` of the weighted F-measure (1.0, the field's and pysodmetrics' default).

    Usage: ``m.update(prob, gt)`` per image or batch, then ``m.sync()`` under DDP, then ``m.compute()``.
    """

    main_metric = "fbeta_max"
    higher_is_better = True

    def __init__(self, boundary_width: int | None = None, quantize_8bit: bool = False, wfbeta_beta2: float = 1.0,
                 boundary_dilation_ratio: float = DEFAULT_DILATION_RATIO):
        check_boundary_options(boundary_width, boundary_dilation_ratio)
        self.boundary_width = boundary_width
        self.boundary_dilation_ratio = float(boundary_dilation_ratio)
        self.quantize_8bit = bool(quantize_8bit)
        self.wfbeta_beta2 = float(wfbeta_beta2)
        self.reset()

    def reset(self) -> None:
        """Forget every image."""
        # imported here: py_sod_metrics pulls in sklearn/skimage/cv2 (~1.5 s), needless for multi-class runs
        import py_sod_metrics as sod

        with warnings.catch_warnings():
            # Fmeasure warns that it will be replaced by FmeasureV2; its numbers are the field's reference.
            warnings.simplefilter("ignore")
            self._sod: dict[str, Any] = {
                "fm": sod.Fmeasure(beta=0.3),
                "wfm": sod.WeightedFmeasure(beta=self.wfbeta_beta2),
                "mae": sod.MAE(),
                "sm": sod.Smeasure(alpha=0.5),
                "em": sod.Emeasure(),
            }
        self._own: dict[str, list[float]] = {k: [] for k in _OWN_LISTS}
        self._synced = False

    @property
    def num_images(self) -> int:
        return len(self._own["iou"])

    def update(self, prob: Any, gt: Any) -> None:
        """Add images.

        Args:
            prob: object probability, float ``[H, W]`` or ``[B, H, W]`` in ``[0, 1]`` (numpy or torch, any
                device), at the ground truth's original size; or a list of ``[H, W]`` maps of varying sizes.
            gt: object mask, bool or 0/1, same shape (or a list matching ``prob``).
        """
        if isinstance(prob, (list, tuple)) or isinstance(gt, (list, tuple)):
            if not (isinstance(prob, Sequence) and isinstance(gt, Sequence)) or len(prob) != len(gt):
                raise ValueError("prob and gt must both be lists of the same length when one is a list")
            for p, g in zip(prob, gt, strict=True):
                self.update(p, g)
            return
        p = _as_batch(_to_numpy(prob), "prob")
        g = _as_batch(_to_numpy(gt), "gt")
        if p.shape != g.shape:
            raise ValueError(f"prob shape {p.shape} != gt shape {g.shape} (score at the mask's size)")
        if p.size == 0:
            raise ValueError(f"empty image of shape {p.shape}")
        if not np.issubdtype(p.dtype, np.floating):
            raise TypeError(f"prob must be a float probability map in [0, 1], got dtype {p.dtype}")
        p = p.astype(np.float64, copy=False)
        if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
            raise ValueError(
                f"prob must be finite and in [0, 1] (apply sigmoid/softmax first), "
                f"got range [{np.nanmin(p)}, {np.nanmax(p)}]"
            )
        if g.dtype != np.bool_:
            if not np.isin(g, (0, 1)).all():
                raise ValueError(f"gt must be bool or 0/1, got values {np.unique(g)[:8].tolist()}")
            g = g.astype(bool)
        if self.quantize_8bit:
            p = np.round(p * 255.0) / 255.0
        for pi, gi in zip(p, g, strict=True):
            pi = np.ascontiguousarray(pi)
            gi = np.ascontiguousarray(gi)
            for evaluator in self._sod.values():
                evaluator.step(pred=pi, gt=gi, normalize=False)
        scores = binary_overlap_scores(torch.from_numpy(p > 0.5), torch.from_numpy(g), self.boundary_width,
                                       self.boundary_dilation_ratio)
        for key in _OWN_LISTS:
            self._own[key].extend(scores[key].tolist())
        self._synced = False

    def per_image(self) -> dict[str, list[float]]:
        """Per-image scalar scores (for paired statistics): ``fbeta_adaptive, wfbeta, mae, s_measure,
        e_measure_adaptive, iou, dice, boundary_iou``, each a list in update order."""
        s = self._sod
        return {
            "fbeta_adaptive": [float(v) for v in s["fm"].adaptive_fms],
            "wfbeta": [float(v) for v in s["wfm"].weighted_fms],
            "mae": [float(v) for v in s["mae"].maes],
            "s_measure": [float(v) for v in s["sm"].sms],
            "e_measure_adaptive": [float(v) for v in s["em"].adaptive_ems],
            **{k: list(v) for k, v in self._own.items()},
        }

    def mean_pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean precision and recall over images at the 256 thresholds ``t = 0..255`` (pysodmetrics' ``pr``
        result), each float64 ``[256]``: for comparisons with codes that report ``max_t F(mean P(t), mean R(t))``
        ("F of the mean PR curve") instead of ``fbeta_max`` (max of the mean per-image F curve); see
        docs/metrics.md."""
        if self.num_images == 0:
            raise ValueError("mean_pr_curve: no image has been added")
        pr = self._sod["fm"].get_results()["pr"]
        return np.asarray(pr["p"], dtype=np.float64), np.asarray(pr["r"], dtype=np.float64)

    def sync(self) -> None:
        """Gather every rank's per-image scores so that each rank holds the whole split (DDP).

        No-op without an initialised process group, or when called again with no update in between.
        Per-image values (and the per-image threshold curves) are gathered with ``all_gather_object`` and
        concatenated in rank order, so the dataset mean is the exact mean over all images of all ranks.
        (A ``DistributedSampler`` that pads the split repeats a few images: shard without padding for
        exact split numbers.)
        """
        if not dist_active() or self._synced:
            return
        state = {
            "sod": {
                name: {attr: list(getattr(self._sod[name], attr)) for attr in attrs}
                for name, attrs in _SOD_LISTS.items()
            },
            "own": self._own,
        }
        gathered = all_gather_objects(state)
        for name, attrs in _SOD_LISTS.items():
            for attr in attrs:
                setattr(self._sod[name], attr, [v for st in gathered for v in st["sod"][name][attr]])
        self._own = {k: [v for st in gathered for v in st["own"][k]] for k in _OWN_LISTS}
        self._synced = True

    def compute(self) -> dict[str, float]:
        """Dataset scores, keys :data:`BINARY_KEYS` (all NaN with ``num_images = 0`` before any update)."""
        n = self.num_images
        if n == 0:
            out = dict.fromkeys(BINARY_KEYS, math.nan)
            out["num_images"] = 0
            return out
        fm = self._sod["fm"].get_results()["fm"]
        em = self._sod["em"].get_results()["em"]
        return {
            "fbeta_max": float(np.max(fm["curve"])),
            "fbeta_mean": float(np.mean(fm["curve"])),
            "fbeta_adaptive": float(fm["adp"]),
            "wfbeta": float(self._sod["wfm"].get_results()["wfm"]),
            "mae": float(self._sod["mae"].get_results()["mae"]),
            "s_measure": float(self._sod["sm"].get_results()["sm"]),
            "e_measure_max": float(np.max(em["curve"])),
            "e_measure_mean": float(np.mean(em["curve"])),
            "e_measure_adaptive": float(em["adp"]),
            "iou": float(np.mean(self._own["iou"])),
            "dice": float(np.mean(self._own["dice"])),
            "boundary_iou": float(np.mean(self._own["boundary_iou"])),
            "num_images": n,
        }
