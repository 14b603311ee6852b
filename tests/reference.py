"""Slow, obviously-correct loop-based references for the method (tests only, never the package)."""

from __future__ import annotations

import math
import warnings

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
                yy = y if y is not None else max(range(k), key=lambda c: q[c])
                if kind in ("kl", "one_sided_kl"):
                    out[n, i, j] = sum(
                        q[c] * (math.log(q[c]) - math.log(ps[c])) for c in range(k) if q[c] > 0
                    )
                    if kind == "one_sided_kl" and not ps[yy] < q[yy]:
                        out[n, i, j] = 0.0
                elif kind == "l1":
                    out[n, i, j] = sum(abs(q[c] - ps[c]) for c in range(k))
                else:
                    out[n, i, j] = max(0.0, q[yy] - ps[yy])
    return out


def ref_keep_mask(difficulty, valid, rate, scope="per_image", selection="hardest", priority=None, uniforms=None):
    """Rank each unit's valid pixels by (difficulty, priority) with Python's sort (priority: the flat index
    within the unit, or a given ``[R, n]`` tie order); ``hardest`` keeps the first ``|V| - floor(rate |V|)``,
    ``easiest`` the last ones, ``random`` the ones with the smallest priority; ``bernoulli`` drops pixel of
    0-based rank ``j`` when ``uniforms[r, p] < min(1, g(r) (j + 1/2) / |V|)``."""
    bsz = difficulty.shape[0]
    keep = torch.zeros_like(valid)
    units = [[n] for n in range(bsz)] if scope == "per_image" else [list(range(bsz))]
    for r, unit in enumerate(units):
        items = []
        for n in unit:
            d = difficulty[n].flatten().tolist()
            v = valid[n].flatten().tolist()
            base = n * len(d) if scope == "per_batch" else 0
            for p in range(len(d)):
                if v[p]:
                    pri = base + p if priority is None else int(priority[r, base + p])
                    items.append((d[p], pri, n, p, base + p))
        if selection == "random":
            items.sort(key=lambda x: x[1])
        elif selection == "easiest":
            items.sort(key=lambda x: (-x[0], x[1]))
        else:
            items.sort(key=lambda x: (x[0], x[1]))
        if selection == "bernoulli":
            g = 2 * rate if rate <= 0.5 else 1 / (2 * (1 - rate))
            kept = [it for j, it in enumerate(items) if not uniforms[r, it[4]] < min(1.0, g * (j + 0.5) / len(items))]
        else:
            kept = items[: len(items) - math.floor(rate * len(items))]
        for _, _, n, p, _ in kept:
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
    kd_norm="kept",
    selection="hardest",
    priority=None,
    uniforms=None,
):
    """CE over valid (or kept) pixels + kd_weight * T^2 * (sum over kept pixels of KL(p_t || p_s)) / |kept|
    (``kd_norm="kept"``) or / |valid| (``"valid"``)."""
    logits = logits.double()
    bsz, k, h, w = logits.shape
    if teacher_logits is None:
        pt = ref_virtual_teacher(target, k, confidence, ignore_index)
    else:
        pt = torch.softmax(teacher_logits.double() / t, dim=1)
    diff = ref_difficulty(logits.detach(), pt, target, kind, t, ignore_index)
    valid = target != ignore_index
    keep = ref_keep_mask(diff, valid, rate, scope, selection, priority, uniforms)
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
    kd = kd_sum / max(kd_n if kd_norm == "kept" else int(valid.sum()), 1)
    return ce + kd_weight * t * t * kd, keep


def ref_tfkd_reg(outputs, labels, num_classes, correct_prob, temperature, multiplier, alpha, ignore_index=255):
    """Yuan et al.'s ``loss_kd_regularization`` transcribed (their loop over samples, ``nn.KLDivLoss()`` with
    the default mean over all elements), applied to the valid pixels as samples ``[N, K]``."""
    z = outputs.double().permute(0, 2, 3, 1).reshape(-1, num_classes)
    y = labels.reshape(-1)
    z, y = z[y != ignore_index], y[y != ignore_index]
    loss_ce = torch.nn.functional.cross_entropy(z, y)
    teacher_soft = torch.ones_like(z) * (1 - correct_prob) / (num_classes - 1)
    for i in range(z.shape[0]):
        teacher_soft[i, y[i]] = correct_prob
    with warnings.catch_warnings():  # their reduction is 'mean' over all N * K elements, on purpose
        warnings.simplefilter("ignore", UserWarning)
        kl = torch.nn.KLDivLoss(reduction="mean")(
            torch.log_softmax(z, dim=1), torch.softmax(teacher_soft / temperature, dim=1)
        )
    return (1.0 - alpha) * loss_ce + alpha * kl * multiplier


def hardest_loss(*args, **kwargs):
    """``DDSDLoss`` with ``selection="hardest"`` unless a test names another selection: the selection
    :func:`ref_loss` implements by default (the library's default is ``"bernoulli"`` since round 2)."""
    from ddsd import DDSDLoss

    kwargs.setdefault("selection", "hardest")
    return DDSDLoss(*args, **kwargs)
