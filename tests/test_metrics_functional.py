"""Functional metric kernels: confusion matrix, IoU from it, boundary bands (hand-checked and vs numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddsd.metrics import boundary_band, confusion_matrix, iou_from_confmat, label_boundary, nanmean


def numpy_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Reference band: mask pixels with a non-mask pixel (or the outside) within Chebyshev distance w."""
    padded = np.pad(mask.astype(bool), width, constant_values=False)
    win = np.lib.stride_tricks.sliding_window_view(padded, (2 * width + 1, 2 * width + 1))
    return mask.astype(bool) & ~win.all(axis=(-2, -1))


def test_boundary_band_hand_checked_square():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1:7, 1:7] = True  # 6x6 square away from the border
    ring1 = mask.clone()
    ring1[2:6, 2:6] = False  # outermost ring of the square
    assert torch.equal(boundary_band(mask, 1), ring1)
    ring2 = mask.clone()
    ring2[3:5, 3:5] = False  # two outer rings; the 2x2 centre is farther than 2 px from outside
    assert torch.equal(boundary_band(mask, 2), ring2)
    assert torch.equal(boundary_band(mask, 3), mask)  # every pixel is within 3 px of the outside
    assert int(boundary_band(mask, 1).sum()) == 20 and int(boundary_band(mask, 2).sum()) == 32


def test_boundary_band_image_border_is_a_contour():
    full = torch.ones(1, 6, 7, dtype=torch.bool)
    band = boundary_band(full, 1)
    expected = torch.ones_like(full)
    expected[:, 1:5, 1:6] = False
    assert torch.equal(band, expected)
    assert not boundary_band(torch.zeros(2, 5, 5, dtype=torch.bool), 2).any()


@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_boundary_band_matches_numpy_and_label_boundary(width):
    gen = torch.Generator().manual_seed(width)
    labels = torch.randint(0, 4, (3, 13, 17), generator=gen)
    # smoother regions than pure noise: upsample a coarse label map
    labels = labels[:, ::3, ::3].repeat_interleave(3, 1).repeat_interleave(3, 2)[:, :13, :17]
    lb = label_boundary(labels, width)
    for c in range(4):
        mask = labels == c
        band = boundary_band(mask, width)
        ref = np.stack([numpy_band(m, width) for m in mask.numpy()])
        np.testing.assert_array_equal(band.numpy(), ref)
        assert torch.equal(lb & mask, band)


def test_tiny_and_invalid_inputs():
    row = torch.tensor([[True, True, True, False, True]])
    assert torch.equal(boundary_band(row, 1), row)  # a 1xN image: every object pixel touches the border
    with pytest.raises(ValueError):
        boundary_band(row, 0)
    with pytest.raises(ValueError):
        label_boundary(row.long(), 1)  # needs [B, H, W]


def test_confusion_matrix_hand_example_and_ignore():
    target = torch.tensor([[0, 0, 1, 255], [2, 2, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 2], [2, 0, 1, 0]])
    cm = confusion_matrix(pred, target, num_classes=3, ignore_index=255)
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert cm.dtype == torch.int64 and torch.equal(cm, expected)
    iou = iou_from_confmat(cm)
    # class 0: tp 1, row 2, col 2 -> 1/3; class 1: 2/(2+3-2); class 2: 1/(2+1-1)
    np.testing.assert_allclose(iou.numpy(), [1 / 3, 2 / 3, 1 / 2])


def test_confusion_matrix_matches_numpy_histogram():
    gen = torch.Generator().manual_seed(0)
    k = 5
    target = torch.randint(0, k, (4, 9, 11), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = 255
    pred = torch.randint(0, k, (4, 9, 11), generator=gen)
    cm = confusion_matrix(pred, target, k)
    t, p = target.numpy().ravel(), pred.numpy().ravel()
    keep = t != 255
    ref, _, _ = np.histogram2d(t[keep], p[keep], bins=k, range=[[0, k], [0, k]])
    np.testing.assert_array_equal(cm.numpy(), ref.astype(np.int64))
    assert int(cm.sum()) == int(keep.sum())


def test_confusion_matrix_rejects_bad_ids():
    with pytest.raises(ValueError, match="target holds value 7"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7), 3)
    with pytest.raises(ValueError, match="pred holds value 3"):
        confusion_matrix(torch.full((2, 2), 3), torch.zeros(2, 2, dtype=torch.long), 3)
    with pytest.raises(TypeError):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), 3)


def test_iou_nan_for_absent_class_and_nanmean():
    cm = torch.tensor([[3, 1, 0], [0, 0, 0], [0, 0, 0]])  # class 1 predicted once, class 2 absent everywhere
    iou = iou_from_confmat(cm)
    assert iou[0] == pytest.approx(0.75) and iou[1] == 0.0 and math.isnan(float(iou[2]))
    assert nanmean(iou) == pytest.approx(0.375)
    assert math.isnan(nanmean(torch.full((3,), math.nan)))


def _maxpool_reference_band(labels: torch.Tensor, width: int) -> torch.Tensor:
    """The original float64 max_pool2d formulation of label_boundary (kept here as an oracle)."""
    x = labels.double().unsqueeze(1)
    x = x - x.min()
    k = 2 * width + 1
    pad = (width, width, width, width)
    local_max = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, pad, value=-1.0), k, stride=1)
    local_min = -torch.nn.functional.max_pool2d(torch.nn.functional.pad(-x, pad, value=1.0), k, stride=1)
    return ((local_max != x) | (local_min != x)).squeeze(1)


@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_label_boundary_matches_maxpool_reference(width):
    g = torch.Generator().manual_seed(width)
    labels = torch.randint(0, 4, (2, 9, 13), generator=g)
    labels[0, 2:7, 3:10] = 255  # an ignore-like region, far above the other labels
    labels[1] -= 2  # negative labels
    assert torch.equal(label_boundary(labels, width), _maxpool_reference_band(labels, width))
    mask = labels[0] == 1
    ref = _maxpool_reference_band(mask.long()[None], width)[0] & mask
    assert torch.equal(boundary_band(mask, width), ref)


def test_class_argmax_matches_argmax_first_max_wins():
    from ddsd.metrics import class_argmax

    z = torch.randn(2, 5, 7, 6)
    z[:, 3] = z[:, 1]  # ties: the first maximum wins, as in torch.argmax
    assert torch.equal(class_argmax(z), z.argmax(dim=1))
