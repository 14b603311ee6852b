"""Boundary IoU against a port of Cheng et al.'s reference code (github.com/bowenc0221/boundary-iou-api).

The reference (``boundary_iou/utils/boundary_utils.py``, ``mask_to_boundary``) needs OpenCV, which is not
installed here; the port below replaces its two OpenCV calls by exact equivalents:

* ``cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)`` -> ``np.pad(mask, 1, constant 0)``;
* ``cv2.erode(new_mask, np.ones((3, 3)), iterations=d)`` -> ``scipy.ndimage.binary_erosion`` with the same
  3x3 structure, ``iterations=d`` and ``border_value=1``: OpenCV's default border for erosion is
  ``morphologyDefaultBorderValue()`` (+inf, i.e. the outside never erodes), so only the explicit zero frame
  erodes the mask from the image border, in both.

Boundary IoU of a pair is the reference's ``boundary_iou(gt, dt)``:
``((gt_b * dt_b) > 0).sum() / ((gt_b + dt_b) > 0).sum()`` (0 / 0 there; 1.0 in the package, see
docs/metrics.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddsd.metrics import BinarySegMetrics, MulticlassSegMetrics, boundary_band, boundary_dilation, label_boundary


def cheng_dilation(h: int, w: int, dilation_ratio: float = 0.02) -> int:
    """The reference's ``dilation``, line by line (numpy float64 sqrt, Python ``round``)."""
    img_diag = np.sqrt(h**2 + w**2)
    dilation = int(round(dilation_ratio * img_diag))  # noqa: RUF046 (the reference, verbatim)
    if dilation < 1:
        dilation = 1
    return dilation


def cheng_mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02, dilation: int | None = None) -> np.ndarray:
    """Port of ``mask_to_boundary`` (uint8 in, uint8 out); ``dilation`` overrides the ratio (fixed width)."""
    mask = mask.astype(np.uint8)
    h, w = mask.shape
    if dilation is None:
        dilation = cheng_dilation(h, w, dilation_ratio)
    new_mask = np.pad(mask, 1, mode="constant", constant_values=0)
    kernel = np.ones((3, 3), dtype=bool)
    new_mask_erode = ndimage.binary_erosion(new_mask, structure=kernel, iterations=dilation, border_value=1)
    mask_erode = new_mask_erode[1 : h + 1, 1 : w + 1].astype(np.uint8)
    return mask - mask_erode


def cheng_boundary_iou(gt: np.ndarray, dt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Port of the reference ``boundary_iou``; NaN where both boundaries are empty (the reference's 0 / 0)."""
    gt_boundary = cheng_mask_to_boundary(gt, dilation_ratio)
    dt_boundary = cheng_mask_to_boundary(dt, dilation_ratio)
    intersection = ((gt_boundary * dt_boundary) > 0).sum()
    union = ((gt_boundary.astype(int) + dt_boundary) > 0).sum()
    return float(intersection / union) if union else math.nan


def random_mask(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    """Blobs (smoothed noise, thresholded), pure noise, empty or full masks of shape ``(h, w)``."""
    if kind == "empty":
        return np.zeros((h, w), bool)
    if kind == "full":
        return np.ones((h, w), bool)
    noise = rng.normal(size=(h, w))
    if kind == "blobs":
        noise = ndimage.gaussian_filter(noise, sigma=max(1.0, min(h, w) / 8), mode="wrap")
    return noise > np.quantile(noise, rng.uniform(0.3, 0.8))


SHAPES = [(1, 1), (1, 9), (9, 1), (2, 3), (5, 5), (31, 17), (75, 100), (105, 140), (64, 257), (200, 150)]
KINDS = ["blobs", "noise", "empty", "full"]


def test_dilation_is_the_references():
    for h in range(1, 400, 7):
        for w in range(1, 600, 11):
            assert boundary_dilation(h, w) == cheng_dilation(h, w), (h, w)
    # 0.02 * 125 = 2.5 and 0.02 * 175 = 3.5 exactly: Python's round goes to the even neighbour, as the reference
    assert boundary_dilation(75, 100) == 2 and boundary_dilation(105, 140) == 4
    assert boundary_dilation(512, 512) == 14 and boundary_dilation(360, 480) == 12 and boundary_dilation(3, 3) == 1
    assert boundary_dilation(100, 100, 0.1) == cheng_dilation(100, 100, 0.1) == 14


def test_port_hand_checked():
    # a full 5x5 mask: the image border is a contour; d = 1 leaves the 3x3 centre, d = 2 leaves its centre
    full = np.ones((5, 5), np.uint8)
    assert cheng_mask_to_boundary(full, dilation=1).sum() == 16
    assert cheng_mask_to_boundary(full, dilation=2).sum() == 24 and cheng_mask_to_boundary(full, dilation=2)[2, 2] == 0
    assert cheng_mask_to_boundary(full, dilation=3).sum() == 25


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ratio", [0.02, 0.005, 0.1])
def test_boundary_band_equals_mask_to_boundary(shape, ratio):
    rng = np.random.default_rng(hash((shape, ratio)) % 2**32)
    masks = np.stack([random_mask(rng, *shape, kind) for kind in KINDS for _ in range(2 if kind in KINDS[:2] else 1)])
    ours = boundary_band(torch.from_numpy(masks), dilation_ratio=ratio).numpy()
    ref = np.stack([cheng_mask_to_boundary(m, ratio) for m in masks]).astype(bool)
    np.testing.assert_array_equal(ours, ref)
    # the fixed-width option is the reference with its dilation fixed
    for width in (1, 3):
        ref_w = np.stack([cheng_mask_to_boundary(m, dilation=width) for m in masks]).astype(bool)
        np.testing.assert_array_equal(boundary_band(torch.from_numpy(masks), width).numpy(), ref_w)


@pytest.mark.parametrize("shape", [(1, 7), (7, 1), (23, 31), (75, 100), (120, 97)])
def test_label_boundary_equals_mask_to_boundary_per_class(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    coarse = rng.integers(0, 4, (2, max(1, shape[0] // 6), max(1, shape[1] // 6)))
    labels = np.stack([np.resize(np.kron(c, np.ones((6, 6), int)), shape) for c in coarse])
    labels[0, : shape[0] // 3] = 255  # an ignore band: its own region
    lb = label_boundary(torch.from_numpy(labels)).numpy()
    for c in (0, 1, 2, 3, 255):
        ref = np.stack([cheng_mask_to_boundary(x == c) for x in labels]).astype(bool)
        np.testing.assert_array_equal(lb & (labels == c), ref)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # pysodmetrics' S-measure on 1-pixel-wide images
def test_binary_metric_is_the_mean_of_reference_boundary_ious():
    rng = np.random.default_rng(0)
    m = BinarySegMetrics()
    expected = []
    for shape in SHAPES:
        for kind in KINDS:
            gt = random_mask(rng, *shape, kind)
            pred = random_mask(rng, *shape, "blobs") if kind != "full" else gt.copy()
            if rng.random() < 0.5:  # a prediction close to the ground truth, not just an unrelated one
                pred = ndimage.binary_dilation(gt, iterations=1) if gt.any() and gt.size > 1 else gt
            prob = np.where(pred, 0.9, 0.1)
            m.update(prob, gt)
            ref = cheng_boundary_iou(gt, pred)
            expected.append(1.0 if math.isnan(ref) else ref)  # both boundaries empty: 1.0 (documented)
    assert m.compute()["boundary_iou"] == pytest.approx(float(np.mean(expected)), rel=1e-12)
    assert m.per_image()["boundary_iou"] == pytest.approx(expected, rel=1e-12)
    assert 0.0 < np.mean(expected) < 1.0


def test_multiclass_metric_aggregates_reference_boundaries_per_class():
    rng = np.random.default_rng(1)
    k = 3
    inter, union = np.zeros(k), np.zeros(k)
    m = MulticlassSegMetrics(k)
    for shape in [(16, 21), (75, 100), (9, 1), (40, 33)]:
        target = np.resize(np.kron(rng.integers(0, k, (4, 4)), np.ones((11, 11), int)), shape)
        pred = target.copy()
        flip = ndimage.binary_dilation(rng.random(shape) < 0.02, iterations=2)
        pred[flip] = rng.integers(0, k, int(flip.sum()))
        target[rng.random(shape) < 0.05] = 255
        m.update(torch.from_numpy(pred), torch.from_numpy(target))
        valid = target != 255
        for c in range(k):
            gb = cheng_mask_to_boundary(target == c).astype(bool) & valid
            pb = cheng_mask_to_boundary(pred == c).astype(bool) & valid
            inter[c] += np.sum(gb & pb)
            union[c] += np.sum(gb | pb)
    ref = float(np.mean([i / u for i, u in zip(inter, union, strict=True) if u > 0]))
    assert m.compute()["boundary_iou"] == pytest.approx(ref, rel=1e-12)


def test_standard_band_is_wider_than_round_one_on_large_images():
    # on a 512 x 512 image the standard band (d = 14) is wider than the round-1 band (d = 3), so a
    # prediction off by 2 px scores higher: the round-1 numbers are not comparable with papers'.
    gt = np.zeros((512, 512), bool)
    gt[100:400, 120:380] = True
    pred = np.zeros_like(gt)
    pred[102:402, 122:382] = True
    prob = np.where(pred, 1.0, 0.0)
    standard, fixed = BinarySegMetrics(), BinarySegMetrics(boundary_width=3)
    standard.update(prob, gt)
    fixed.update(prob, gt)
    assert standard.compute()["boundary_iou"] == pytest.approx(cheng_boundary_iou(gt, pred), rel=1e-12)
    assert standard.compute()["boundary_iou"] > fixed.compute()["boundary_iou"] + 0.2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_width_is_rejected(bad):
    with pytest.raises(ValueError, match="boundary width"):
        BinarySegMetrics(boundary_width=bad)
    with pytest.raises(ValueError, match="boundary width"):
        MulticlassSegMetrics(3, boundary_width=bad)


@pytest.mark.parametrize("bad", [0, -0.02, math.nan, math.inf, "0.02"])
def test_bad_ratio_is_rejected(bad):
    with pytest.raises(ValueError, match="dilation ratio"):
        BinarySegMetrics(boundary_dilation_ratio=bad)
    with pytest.raises(ValueError, match="dilation ratio"):
        boundary_band(torch.ones(3, 3, dtype=torch.bool), dilation_ratio=bad)


def test_evaluate_passes_the_band_option_through():
    from ddsd.data import build_dataset, load_spec
    from ddsd.engine.evaluate import build_metrics, evaluate

    ds = build_dataset(load_spec("procedural_binary", None), "val", (48, 48), augment=False)
    assert build_metrics(ds).boundary_width is None and build_metrics(ds, 3).boundary_width == 3
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 2, 3, padding=1)
    default, one, three = (evaluate(model, ds, boundary_width=w)["boundary_iou"] for w in (None, 1, 3))
    assert boundary_dilation(48, 48) == 1 and default == one != three  # 48 x 48 masks: d = 1
