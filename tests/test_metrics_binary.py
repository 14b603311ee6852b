"""BinarySegMetrics against a direct pysodmetrics computation and against plain numpy formulas."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import py_sod_metrics as sod
import pytest
import torch
from torchmetrics.functional.classification import binary_jaccard_index

from ddsd.metrics import BINARY_KEYS, BinarySegMetrics, boundary_dilation
from tests.test_metrics_functional import numpy_band


def pysod_reference(images, normalize=False):
    """The field's numbers straight from pysodmetrics (one evaluator per metric, step per image)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm, wfm, mae, sm, em = (
            sod.Fmeasure(),
            sod.WeightedFmeasure(),
            sod.MAE(),
            sod.Smeasure(),
            sod.Emeasure(),
        )
    for pred, gt in images:
        for ev in (fm, wfm, mae, sm, em):
            ev.step(pred=pred, gt=gt, normalize=normalize)
    f = fm.get_results()["fm"]
    e = em.get_results()["em"]
    return {
        "fbeta_max": f["curve"].max(),
        "fbeta_mean": f["curve"].mean(),
        "fbeta_adaptive": f["adp"],
        "wfbeta": wfm.get_results()["wfm"],
        "mae": mae.get_results()["mae"],
        "s_measure": sm.get_results()["sm"],
        "e_measure_max": e["curve"].max(),
        "e_measure_mean": e["curve"].mean(),
        "e_measure_adaptive": e["adp"],
    }


def numpy_overlap(prob, gt, width=None):
    """Plain numpy IoU / Dice / boundary IoU of (prob > 0.5) vs gt, empty-vs-empty = 1; ``width=None``: the
    band is 2 % of the image diagonal (Cheng et al.)."""
    width = width or boundary_dilation(*gt.shape)
    b = prob > 0.5
    inter, union = np.sum(b & gt), np.sum(b | gt)
    iou = inter / union if union else 1.0
    dice = 2 * inter / (b.sum() + gt.sum()) if (b.sum() + gt.sum()) else 1.0
    pb, gb = numpy_band(b, width), numpy_band(gt, width)
    bu = np.sum(pb | gb)
    biou = np.sum(pb & gb) / bu if bu else 1.0
    return iou, dice, biou


def blob_image(rng, h, w):
    """A smooth probability map and a blob mask that it roughly matches (more realistic than noise)."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r = rng.uniform(0.15, 0.35) * min(h, w)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    gt = d < r
    prob = 1 / (1 + np.exp((d - r * rng.uniform(0.8, 1.2)) / 2.0))
    prob = np.clip(prob + rng.normal(0, 0.1, (h, w)), 0, 1)
    return prob, gt


def check_against_references(images, width=None):
    m = BinarySegMetrics(boundary_width=width)
    for prob, gt in images:
        m.update(prob, gt)
    out = m.compute()
    assert tuple(out) == BINARY_KEYS
    assert out["num_images"] == len(images)
    ref = pysod_reference(images)
    for key, value in ref.items():
        np.testing.assert_allclose(out[key], value, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=key)
    # obvious numpy re-implementations
    np.testing.assert_allclose(out["mae"], np.mean([np.mean(np.abs(p - g)) for p, g in images]), rtol=1e-12)
    ov = np.array([numpy_overlap(p, g, width) for p, g in images])
    np.testing.assert_allclose([out["iou"], out["dice"], out["boundary_iou"]], ov.mean(0), rtol=1e-12)
    return out


def test_random_blobs_of_varying_sizes_match_pysodmetrics_and_numpy():
    rng = np.random.default_rng(0)
    images = [blob_image(rng, h, w) for h, w in [(40, 50), (33, 27), (64, 64), (20, 45)]]
    images.append((rng.random((30, 30)), rng.random((30, 30)) > 0.6))  # pure noise
    out = check_against_references(images)
    assert 0.3 < out["fbeta_max"] <= 1 and 0 < out["boundary_iou"] < out["iou"] <= 1


@pytest.mark.parametrize("width", [1, 2, 5])
def test_boundary_width_is_used(width):
    rng = np.random.default_rng(width)
    check_against_references([blob_image(rng, 36, 40) for _ in range(2)], width=width)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # pysodmetrics' S-measure on 1-pixel-wide images
@pytest.mark.parametrize(
    "case",
    [
        "gt_all_zero",
        "gt_all_one",
        "pred_const_zero",
        "pred_const_one",
        "pred_const_half",
        "perfect",
        "tiny_1xN",
        "tiny_Nx1",
        "tiny_1x1",
        "empty_vs_empty",
    ],
)
def test_edge_cases_match_pysodmetrics(case):
    rng = np.random.default_rng(1)
    h, w = 12, 15
    gt = rng.random((h, w)) > 0.5
    prob = rng.random((h, w))
    if case == "gt_all_zero":
        gt = np.zeros((h, w), bool)
    elif case == "gt_all_one":
        gt = np.ones((h, w), bool)
    elif case == "pred_const_zero":
        prob = np.zeros((h, w))
    elif case == "pred_const_one":
        prob = np.ones((h, w))
    elif case == "pred_const_half":
        prob = np.full((h, w), 0.5)
    elif case == "perfect":
        prob = gt.astype(np.float64)
    elif case == "tiny_1xN":
        prob, gt = rng.random((1, 7)), np.array([[0, 1, 1, 0, 1, 1, 1]], bool)
    elif case == "tiny_Nx1":
        prob, gt = rng.random((6, 1)), np.array([[1], [1], [0], [0], [0], [1]], bool)
    elif case == "tiny_1x1":
        prob, gt = np.array([[0.8]]), np.array([[True]])
    elif case == "empty_vs_empty":
        prob, gt = np.full((h, w), 0.1), np.zeros((h, w), bool)
    out = check_against_references([(prob, gt)])
    if case == "perfect":
        assert out["iou"] == out["dice"] == out["boundary_iou"] == 1.0 and out["mae"] == 0.0
        assert out["fbeta_max"] == pytest.approx(1.0) and out["s_measure"] == pytest.approx(1.0)
    if case in ("empty_vs_empty", "pred_const_zero") and not gt.any():
        assert out["iou"] == out["dice"] == out["boundary_iou"] == 1.0
    if case == "pred_const_half":
        assert out["iou"] == 0.0  # 0.5 is not > 0.5: the thresholded mask is empty


def test_s_measure_nan_on_degenerate_image_is_passed_through():
    # pysodmetrics' S-measure gives NaN on this 1-pixel-wide image (empty quadrants); we keep the reference.
    prob, gt = np.array([[0.2, 0.9, 0.1, 0.7, 0.3]]), np.array([[1, 0, 1, 0, 1]], bool)
    m = BinarySegMetrics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m.update(prob, gt)
        ref = pysod_reference([(prob, gt)])
    assert math.isnan(ref["s_measure"]) and math.isnan(m.compute()["s_measure"])


def test_no_min_max_normalisation_of_probabilities():
    rng = np.random.default_rng(3)
    prob = rng.uniform(0.2, 0.6, (20, 20))  # a low-contrast probability map
    gt = prob > 0.4
    m = BinarySegMetrics()
    m.update(prob, gt)
    out = m.compute()
    assert out["mae"] == pytest.approx(np.mean(np.abs(prob - gt)), rel=1e-12)
    # pysodmetrics' default uint8 route stretches the map to [0, 1] (mapminmax) and gives another MAE.
    stretched = pysod_reference([(np.round(prob * 255).astype(np.uint8), gt.astype(np.uint8) * 255)], True)
    assert abs(stretched["mae"] - out["mae"]) > 0.02


def test_quantize_8bit_equals_pysod_png_route_when_map_spans_0_255():
    # If the 8-bit map contains 0 and 255, mapminmax is the identity, so pysodmetrics' usual uint8 route
    # (normalize=True) must give exactly our quantize_8bit numbers.
    rng = np.random.default_rng(4)
    images = []
    for _ in range(3):
        prob, gt = blob_image(rng, 25, 31)
        prob[0, 0], prob[-1, -1] = 0.0, 1.0
        images.append((prob, gt))
    m = BinarySegMetrics(quantize_8bit=True)
    for prob, gt in images:
        m.update(torch.from_numpy(prob).float(), torch.from_numpy(gt))
    out = m.compute()
    png = [(np.round(p * 255).astype(np.uint8), g.astype(np.uint8) * 255) for p, g in images]
    ref = pysod_reference(png, normalize=True)
    for key, value in ref.items():
        np.testing.assert_allclose(out[key], value, rtol=1e-9, err_msg=key)


def test_batched_torch_list_and_single_inputs_agree():
    rng = np.random.default_rng(5)
    images = [blob_image(rng, 24, 28) for _ in range(4)]
    probs = np.stack([p for p, _ in images])
    gts = np.stack([g for _, g in images])
    singles = BinarySegMetrics()
    for p, g in images:
        singles.update(p, g)
    batched = BinarySegMetrics()
    batched.update(torch.from_numpy(probs), torch.from_numpy(gts).to(torch.uint8))
    listed = BinarySegMetrics()
    listed.update([p for p, _ in images], [g for _, g in images])
    a, b, c = singles.compute(), batched.compute(), listed.compute()
    assert a == b == c
    assert len(singles.per_image()["iou"]) == 4


def test_iou_matches_torchmetrics_binary_jaccard():
    rng = np.random.default_rng(6)
    images = [blob_image(rng, 30, 30) for _ in range(3)]
    m = BinarySegMetrics()
    for p, g in images:
        m.update(p, g)
    tm = [float(binary_jaccard_index(torch.from_numpy(p), torch.from_numpy(g).long())) for p, g in images]
    assert m.compute()["iou"] == pytest.approx(np.mean(tm), rel=1e-6)


def test_reset_empty_compute_and_json():
    m = BinarySegMetrics()
    out = m.compute()
    assert out["num_images"] == 0 and all(math.isnan(out[k]) for k in BINARY_KEYS[:-1])
    m.update(np.full((4, 4), 0.7), np.ones((4, 4), bool))
    assert m.compute()["num_images"] == 1
    json.dumps(m.compute())
    m.reset()
    assert m.compute()["num_images"] == 0
    assert BinarySegMetrics.main_metric == "fbeta_max"


def test_input_validation():
    m = BinarySegMetrics()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update(np.full((3, 3), 1.5), np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros((3, 3)), np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="0/1"):
        m.update(np.zeros((3, 3)), np.full((3, 3), 255, np.uint8))
    with pytest.raises(TypeError):
        m.update(np.zeros((3, 3), np.uint8), np.ones((3, 3), bool))
    with pytest.raises(ValueError):
        BinarySegMetrics(boundary_width=0)
    assert m.num_images == 0


def test_mean_pr_curve_is_pysodmetrics_and_differs_from_the_per_image_f_curve():
    rng = np.random.default_rng(7)
    images = [blob_image(rng, 30 + i, 40 - i) for i in range(5)]
    m = BinarySegMetrics()
    for prob, gt in images:
        m.update(prob, gt)
    p, r = m.mean_pr_curve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm = sod.Fmeasure()
    for prob, gt in images:
        fm.step(pred=prob, gt=gt, normalize=False)
    ref = fm.get_results()["pr"]
    np.testing.assert_allclose(p, ref["p"], rtol=1e-12)
    np.testing.assert_allclose(r, ref["r"], rtol=1e-12)
    assert p.shape == r.shape == (256,)
    f_of_mean = np.max(1.3 * p * r / np.maximum(0.3 * p + r, 1e-12))
    assert abs(f_of_mean - m.compute()["fbeta_max"]) > 1e-4  # two conventions, two numbers
    with pytest.raises(ValueError, match="no image"):
        BinarySegMetrics().mean_pr_curve()
