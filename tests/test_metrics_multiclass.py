"""MulticlassSegMetrics against torchmetrics and plain numpy (ignore pixels, absent classes, K=2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ddsd.metrics import MULTICLASS_KEYS, MulticlassSegMetrics, boundary_dilation
from tests.test_metrics_functional import numpy_band


def random_batch(gen, k, b=2, h=12, w=14, ignore_frac=0.15, present=None, blocky=True):
    """Target with ignore pixels and a noisy prediction; ``present`` restricts the classes used."""
    classes = torch.tensor(present if present is not None else list(range(k)))
    idx = torch.randint(0, len(classes), (b, (h + 2) // 3, (w + 2) // 3), generator=gen)
    if blocky:
        idx = idx.repeat_interleave(3, 1).repeat_interleave(3, 2)[:, :h, :w]
    else:
        idx = torch.randint(0, len(classes), (b, h, w), generator=gen)
    target = classes[idx]
    pred = target.clone()
    flip = torch.rand(target.shape, generator=gen) < 0.3
    pred[flip] = classes[torch.randint(0, len(classes), (int(flip.sum()),), generator=gen)]
    target[torch.rand(target.shape, generator=gen) < ignore_frac] = 255
    return pred, target


def torchmetrics_scores(batches, k):
    jac = MulticlassJaccardIndex(num_classes=k, average="macro", ignore_index=255)
    jac_none = MulticlassJaccardIndex(num_classes=k, average="none", ignore_index=255)
    acc = MulticlassAccuracy(num_classes=k, average="micro", ignore_index=255)
    for pred, target in batches:
        for metric in (jac, jac_none, acc):
            metric.update(pred, target)
    return float(jac.compute()), jac_none.compute().double(), float(acc.compute())


def numpy_boundary_iou(batches, k, width=None):
    """Per-class band intersections / unions summed over the split, nanmean over classes; ``width=None``: the
    band is 2 % of each image's diagonal (Cheng et al.)."""
    inter = np.zeros(k)
    union = np.zeros(k)
    for pred, target in batches:
        for p, t in zip(pred.numpy(), target.numpy(), strict=True):
            d = width or boundary_dilation(*t.shape)
            valid = t != 255
            for c in range(k):
                gb = numpy_band(t == c, d) & valid
                pb = numpy_band(p == c, d) & valid
                inter[c] += np.sum(gb & pb)
                union[c] += np.sum(gb | pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(np.where(union > 0, inter / union, np.nan)))


def run(batches, k, **kwargs):
    m = MulticlassSegMetrics(k, **kwargs)
    for pred, target in batches:
        m.update(pred, target)
    return m, m.compute()


@pytest.mark.parametrize("k", [2, 5])
def test_random_with_ignore_matches_torchmetrics_and_numpy(k):
    gen = torch.Generator().manual_seed(k)
    batches = [random_batch(gen, k) for _ in range(3)]
    m, out = run(batches, k)
    assert tuple(out) == MULTICLASS_KEYS and out["num_images"] == 6
    miou, per_class, acc = torchmetrics_scores(batches, k)
    assert out["miou"] == pytest.approx(miou, abs=1e-6)
    assert out["pixel_acc"] == pytest.approx(acc, abs=1e-6)
    np.testing.assert_allclose(list(out["per_class_iou"].values()), per_class.numpy(), atol=1e-6)
    assert out["boundary_iou"] == pytest.approx(numpy_boundary_iou(batches, k), rel=1e-12)
    # the confusion matrix counts exactly the valid pixels
    n_valid = sum(int((t != 255).sum()) for _, t in batches)
    assert int(m.confmat.sum()) == n_valid and m.confmat.dtype == torch.int64


def test_absent_classes_are_nan_and_left_out_of_the_mean():
    gen = torch.Generator().manual_seed(1)
    k = 6
    batches = [random_batch(gen, k, present=[0, 2, 3]) for _ in range(2)]  # 1, 4, 5 never occur
    _, out = run(batches, k, class_names=[f"c{i}" for i in range(k)])
    pc = out["per_class_iou"]
    assert pc["c1"] is None and pc["c4"] is None and pc["c5"] is None
    present = [pc["c0"], pc["c2"], pc["c3"]]
    assert out["miou"] == pytest.approx(np.mean(present), rel=1e-12)
    miou, per_class, _ = torchmetrics_scores(batches, k)
    assert out["miou"] == pytest.approx(miou, abs=1e-6)  # torchmetrics' macro also drops them ...
    assert per_class[1] == 0.0 and per_class[4] == 0.0  # ... but its per-class values say 0, not NaN
    json.dumps(out)


def test_class_predicted_but_absent_from_target_counts_as_zero():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    pred = target.clone()
    pred[0, 0, 0] = 1  # class 1 never in the target but predicted once: IoU 0, in the mean
    _, out = run([(pred, target)], 3)
    assert out["per_class_iou"] == {"0": 15 / 16, "1": 0.0, "2": None}
    assert out["miou"] == pytest.approx((15 / 16) / 2)
    assert out["mean_class_acc"] == pytest.approx(15 / 16)  # recall of class 1 undefined -> left out
    miou, _, _ = torchmetrics_scores([(pred, target)], 3)
    assert out["miou"] == pytest.approx(miou)


def test_mean_class_acc_matches_torchmetrics_when_all_classes_in_target():
    gen = torch.Generator().manual_seed(2)
    batches = [random_batch(gen, 4) for _ in range(2)]
    _, out = run(batches, 4)
    acc = MulticlassAccuracy(num_classes=4, average="macro", ignore_index=255)
    for pred, target in batches:
        acc.update(pred, target)
    assert out["mean_class_acc"] == pytest.approx(float(acc.compute()), abs=1e-6)


def test_split_wide_confusion_matrix_not_mean_of_per_batch_mious():
    gen = torch.Generator().manual_seed(3)
    batches = [random_batch(gen, 3, b=1), random_batch(gen, 3, b=1, present=[0])]
    _, whole = run(batches, 3)
    per_batch = [run([bt], 3)[1]["miou"] for bt in batches]
    miou, _, _ = torchmetrics_scores(batches, 3)
    assert whole["miou"] == pytest.approx(miou, abs=1e-6)
    assert abs(whole["miou"] - np.mean(per_batch)) > 1e-3


def test_logits_are_argmaxed_and_single_images_accepted():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, 9, 10, generator=gen)
    target = torch.randint(0, 4, (2, 9, 10), generator=gen)
    target[0, :2] = 255
    _, a = run([(logits, target)], 4)
    _, b = run([(logits.argmax(1), target)], 4)
    _, c = run([(logits[0].argmax(0), target[0]), (logits[1].argmax(0), target[1])], 4)
    assert a == b == c and a["num_images"] == 2


def test_perfect_prediction_and_ignore_respected():
    gen = torch.Generator().manual_seed(5)
    _, target = random_batch(gen, 3)
    pred = target.clone()
    pred[target == 255] = 1  # predictions under ignore pixels do not count
    pred = pred.clamp(max=2)
    _, out = run([(pred, target)], 3)
    assert out["miou"] == out["pixel_acc"] == out["mean_class_acc"] == 1.0
    # the target's bands also run along ignored regions (an ignored region is not class c), the prediction's
    # do not: boundary IoU is below 1 there, as the per-class reference gives
    assert out["boundary_iou"] == pytest.approx(numpy_boundary_iou([(pred, target)], 3), rel=1e-12)
    assert out["boundary_iou"] < 1.0
    _, out = run([(target.clamp(max=2), target.clamp(max=2))], 3)  # no ignore pixels: a perfect 1.0
    assert out["boundary_iou"] == 1.0


@pytest.mark.parametrize("width", [1, 2])
def test_boundary_iou_widths_vs_numpy(width):
    gen = torch.Generator().manual_seed(6 + width)
    batches = [random_batch(gen, 3, h=16, w=15) for _ in range(2)]
    _, out = run(batches, 3, boundary_width=width)
    assert out["boundary_iou"] == pytest.approx(numpy_boundary_iou(batches, 3, width), rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
    ignore_frac=st.sampled_from([0.0, 0.3, 1.0]),
    blocky=st.booleans(),
)
def test_property_miou_matches_torchmetrics(k, seed, ignore_frac, blocky):
    gen = torch.Generator().manual_seed(seed)
    batches = [random_batch(gen, k, b=1, h=7, w=9, ignore_frac=ignore_frac, blocky=blocky)]
    _, out = run(batches, k)
    if ignore_frac == 1.0:
        assert math.isnan(out["miou"]) and math.isnan(out["pixel_acc"])
        assert all(v is None for v in out["per_class_iou"].values())
        return
    miou, _, acc = torchmetrics_scores(batches, k)
    assert out["miou"] == pytest.approx(miou, abs=1e-6)
    assert out["pixel_acc"] == pytest.approx(acc, abs=1e-6)


def test_reset_empty_and_validation():
    m = MulticlassSegMetrics(3)
    out = m.compute()
    assert out["num_images"] == 0 and math.isnan(out["miou"]) and math.isnan(out["boundary_iou"])
    m.update(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long))
    m.reset()
    assert int(m.confmat.sum()) == 0 and m.num_images == 0
    assert MulticlassSegMetrics.main_metric == "miou"
    with pytest.raises(ValueError):
        m.update(torch.zeros(1, 3, 3, dtype=torch.long), torch.full((1, 3, 3), 3))
    with pytest.raises(ValueError):
        m.update(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long))  # K mismatch
    with pytest.raises(ValueError):
        m.update(torch.zeros(1, 3, 4, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        MulticlassSegMetrics(3, ignore_index=1)
    with pytest.raises(ValueError):
        MulticlassSegMetrics(3, class_names=["a", "b"])
