"""Evaluation of a student on a split, with the field's conventions.

Binary datasets (K = 2): the object-probability map ``softmax(z)[positive_class]`` is computed at the
mask's **original** size (logits resized bilinearly) and scored per image with
:class:`ddsd.metrics.BinarySegMetrics` (pysodmetrics), then averaged over the split.
Multi-class: logits resized to the original size, argmax, one confusion matrix over the split
(:class:`ddsd.metrics.MulticlassSegMetrics`). Under DDP each rank scores a disjoint shard (no padding) and the
metric states are merged exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from ddsd.data import SegDataset, collate_keep
from ddsd.metrics import BinarySegMetrics, MulticlassSegMetrics, class_argmax
from ddsd.models.outputs import to_logits

__all__ = ["build_metrics", "evaluate", "main_metric"]


def build_metrics(dataset: SegDataset, boundary_width: int | None = None,
                  boundary_dilation_ratio: float = 0.02) -> BinarySegMetrics | MulticlassSegMetrics:
    """The dataset's metric; boundary IoU's band is 2 % of each mask's diagonal, or ``boundary_width`` pixels."""
    spec = dataset.spec
    if spec.is_binary:
        return BinarySegMetrics(boundary_width=boundary_width, boundary_dilation_ratio=boundary_dilation_ratio)
    return MulticlassSegMetrics(spec.num_classes, spec.ignore_index, boundary_width, class_names=list(spec.class_names),
                                boundary_dilation_ratio=boundary_dilation_ratio)


def main_metric(dataset: SegDataset) -> str:
    """``fbeta_max`` for binary datasets, ``miou`` for multi-class (both: higher is better)."""
    return "fbeta_max" if dataset.spec.is_binary else "miou"


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: SegDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    rank: int = 0,
    world_size: int = 1,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    boundary_width: int | None = None,
) -> dict[str, Any]:
    """Score ``model`` on ``dataset`` (no augmentation). Returns the metric dict of the split.

    ``boundary_width``: fixed boundary-IoU band in pixels (the first results round's 3); ``None`` (default):
    Cheng et al.'s band, 2 % of each mask's diagonal (docs/metrics.md)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = build_metrics(dataset, boundary_width)
    spec = dataset.spec
    pos = spec.positive_class if spec.positive_class is not None else 1
    indices = list(range(rank, len(dataset), world_size))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, collate_fn=collate_keep)
    for batch in loader:
        x = batch["image"].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            # any output convention; resized to each mask's size below (to the input's first when padding is
            # cropped, as the content box is in input pixels)
            logits = to_logits(model(x), tuple(x.shape[-2:]) if dataset.pad else None)
        logits = logits.float()
        for j, idx in enumerate(batch["index"].tolist()):
            gt = dataset.original_mask(idx)
            z = logits[j : j + 1]
            if dataset.pad:  # data.resize=pad: only the image's part of the sample is scored
                top, left, h, w = dataset.content_box(idx)
                z = z[..., top : top + h, left : left + w]
            if not spec.is_binary:  # channels-last: the resize and the argmax over K both run ~2x faster on CPU
                z = z.contiguous(memory_format=torch.channels_last)
            if tuple(z.shape[-2:]) != gt.shape:
                z = F.interpolate(z, size=gt.shape, mode="bilinear", align_corners=False)
            if spec.is_binary:
                prob = torch.softmax(z, dim=1)[0, pos].cpu().numpy().astype(np.float64)
                metrics.update(prob, gt == pos)
            else:
                metrics.update(class_argmax(z).cpu(), torch.from_numpy(gt.astype(np.int64))[None])
    if world_size > 1:
        metrics.sync()
    model.train(was_training)
    return metrics.compute()
