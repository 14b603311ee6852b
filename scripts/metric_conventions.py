"""How much the metric conventions of docs/metrics.md move the numbers, on a trained binary checkpoint.

    python scripts/metric_conventions.py runs/x/checkpoints/best.pt [--split test]

Scores the split as ``ddsd eval`` does (logits resized bilinearly to each mask's size, object probability
map as floats) and prints, side by side:

* max F-beta as ddsd reports it (max over thresholds of the mean per-image F curve, pysodmetrics) and the
  "F of the mean PR curve" (``max_t F(mean_i P_i(t), mean_i R_i(t))``) that some evaluation codes report;
* boundary IoU with Cheng et al.'s band (2 % of each mask's diagonal, the default) and with the fixed 3-px
  band of the first results round.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from ddsd.data import build_dataset, load_spec
from ddsd.metrics import BinarySegMetrics
from ddsd.models.loading import load_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--split", default="test")
    a = p.parse_args()
    model, cfg = load_model(a.checkpoint)
    spec = load_spec(cfg["data"]["name"], cfg["data"].get("root"))
    if not spec.is_binary:
        raise SystemExit(f"{a.checkpoint}: dataset '{spec.name}' is not binary")
    size = tuple(cfg["data"]["size"]) if cfg["data"].get("size") else None
    ds = build_dataset(spec, a.split, size, augment=False, cache_dir=cfg["data"].get("cache_dir"))
    pos = spec.positive_class if spec.positive_class is not None else 1
    standard, fixed = BinarySegMetrics(), BinarySegMetrics(boundary_width=3)
    model.eval()
    with torch.no_grad():
        for i in range(len(ds)):
            gt = ds.original_mask(i)
            z = F.interpolate(model(ds[i]["image"][None]), size=gt.shape, mode="bilinear", align_corners=False)
            prob = torch.softmax(z, dim=1)[0, pos].double().numpy()
            standard.update(prob, gt == pos)
            fixed.update(prob, gt == pos)
    s, f = standard.compute(), fixed.compute()
    prec, rec = standard.mean_pr_curve()
    f_of_mean_pr = float(np.max(1.3 * prec * rec / np.maximum(0.3 * prec + rec, 1e-12)))
    print(f"{spec.name}/{a.split}, {s['num_images']} images")
    print(f"max F-beta: mean per-image F curve (ddsd, pysodmetrics) {s['fbeta_max']:.4f}; "
          f"F of the mean PR curve {f_of_mean_pr:.4f}")
    print(f"boundary IoU: Cheng et al. (2 % of the diagonal) {s['boundary_iou']:.4f}; "
          f"fixed 3 px (round 1) {f['boundary_iou']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
