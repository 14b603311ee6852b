"""Slow, obviously-correct loop-based references for the method (tests only, never the package)."""

from __future__ import annotations

import math

import torch


def ref_virtual_teacher(target, num_classes, confidence, ignore_index=255):
    bsz, h, w = target.shape
    out = torch.empty(bsz, num_classes, h, w, dtype=torch.float64)
    b = (1 - confidence) / (num_classes - 1)
    for n in range(bsz):
        for i in range(h):
            for j in range(w):
                y = int(target[n, i, j])
                for k in range(num_classes):
                    if y == ignore_index:
                        out[n, k, i, j] = 1.0 / num_classes
                    else:
                        out[n, k, i, j] = confidence if k == y else b
    return out


def _softmax(values, t):
    m = max(values)
    e = [math.exp((v - m) / t) for v in values]
    s = sum(e)
    return [x / s for x in e]


def ref_difficulty(logits, pt, target, kind, t=1.0, ignore_index=255):
    bsz, k, h, w = logits.shape
    out = torch.zeros(bsz, h, w, dtype=torch.float64)
    for n in range(bsz):
        for i in range(h):
            for j in range(w):
                y = None if target is None else int(target[n, i, j])
                if y == ignore_index:
                    continue
                ps = _softmax([float(logits[n, c, i, j]) for c in range(k)], t)
                q = [float(pt[n, c, i, j]) for c in range(k)]
                if kind == "kl":
                    out[n, i, j] = sum(
                        q[c] * (math.log(q[c]) - math.log(ps[c])) for c in range(k) if q[c] > 0
                    )
                elif kind == "l1":
                    out[n, i, j] = sum(abs(q[c] - ps[c]) for c in range(k))
                else:
                    yy = y if y is not None else max(range(k), key=lambda c: q[c])
                    out[n, i, j] = max(0.0, q[yy] - ps[yy])
    return out


def ref_keep_mask(difficulty, valid, rate, scope="per_image"):
    """Rank by (difficulty, flat index) with Python's sort; keep the first |V| - floor(rate |V|)."""
    bsz = difficulty.shape[0]
    keep = torch.zeros_like(valid)
    units = [[n] for n in range(bsz)] if scope == "per_image" else [list(range(bsz))]
    for unit in units:
        items = []
        for n in unit:
            d = difficulty[n].flatten().tolist()
            v = valid[n].flatten().tolist()
            base = n * len(d) if scope == "per_batch" else 0
            items += [(d[p], base + p, n, p) for p in range(len(d)) if v[p]]
        items.sort(key=lambda x: (x[0], x[1]))
        n_keep = len(items) - math.floor(rate * len(items))
        for _, _, n, p in items[:n_keep]:
            keep[n].view(-1)[p] = True
    return keep


def ref_loss(
    logits,
    target,
    num_classes,
    confidence,
    rate,
    t=1.0,
    kd_weight=1.0,
    teacher_logits=None,
    scope="per_image",
    ce_on_dropped=True,
    kind="kl",
    ignore_index=255,
):
    """CE over valid (or kept) pixels + kd_weight * T^2 * mean over kept pixels of KL(p_t || p_s)."""
    logits = logits.double()
    bsz, k, h, w = logits.shape
    if teacher_logits is None:
        pt = ref_virtual_teacher(target, k, confidence, ignore_index)
    else:
        pt = torch.softmax(teacher_logits.double() / t, dim=1)
    diff = ref_difficulty(logits.detach(), pt, target, kind, t, ignore_index)
    valid = target != ignore_index
    keep = ref_keep_mask(diff, valid, rate, scope)
    log_p1 = torch.log_softmax(logits, dim=1)
    log_pt_s = torch.log_softmax(logits / t, dim=1)
    ce_sum, ce_n, kd_sum, kd_n = 0.0, 0, 0.0, 0
    for n in range(bsz):
        for i in range(h):
            for j in range(w):
                if not valid[n, i, j]:
                    continue
                y = int(target[n, i, j])
                if ce_on_dropped or keep[n, i, j]:
                    ce_sum = ce_sum - log_p1[n, y, i, j]
                    ce_n += 1
                if keep[n, i, j]:
                    kl = 0.0
                    for c in range(k):
                        q = float(pt[n, c, i, j])
                        if q > 0:
                            kl = kl + q * (math.log(q) - log_pt_s[n, c, i, j])
                    kd_sum = kd_sum + kl
                    kd_n += 1
    ce = ce_sum / max(ce_n, 1)
    kd = kd_sum / max(kd_n, 1)
    return ce + kd_weight * t * t * kd, keep
