"""The compared methods that are not CE + (dropped) KD, as plain PyTorch criteria.

Each has the :class:`~ddsd.loss.DDSDLoss` calling convention, so one training engine runs every method:
``out = crit(student_logits [B,K,H,W], target [B,H,W], teacher_logits=None)`` returns a
:class:`~ddsd.loss.LossOutput` and ``crit.step()`` is called after every optimiser step.

* :class:`LabelSmoothingLoss` (``ls``): ``(1 - eps) CE + eps * mean_k(-log p_s(k))`` over valid pixels.
* :class:`OHEMLoss` (``ohem``): CE on the hard pixels only (target probability ``< thresh``, and at least
  the ``min_kept`` hardest fraction of each image's valid pixels): the opposite curriculum to ddsd.
* :class:`TfKDRegLoss` (``tfkd_reg``, Yuan et al., CVPR 2020, "Tf-KD_reg" exactly as their code):
  ``(1 - alpha) CE + alpha * multiplier * KLDivLoss_mean(log_softmax(z), softmax(u / T))`` with the hand-made
  distribution ``u = a`` at the label, ``(1 - a) / (K - 1)`` elsewhere, softened *as if it were logits*.
* :class:`CWDLoss` (``cwd``, Shu et al., ICCV 2021): CE + ``w tau^2 / K * sum_k KL(phi(z_t,k) || phi(z_s,k))``
  with ``phi`` the spatial softmax of one class channel over the image's valid pixels at temperature ``tau``;
  the teacher's logits are a network's, or ``log p_t`` of the virtual teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsd._accuracy import accuracy_counts, accuracy_stats, masked_mean
from ddsd._checks import check_finite, check_logits, check_target
from ddsd.dropout import select_keep
from ddsd.loss import LossOutput
from ddsd.teacher import check_confidence, virtual_teacher

__all__ = ["CWDLoss", "LabelSmoothingLoss", "OHEMLoss", "TfKDRegLoss"]


class _PlainCriterion(nn.Module):
    """Shared input checks, float32 computation and the stats every criterion reports."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)

    @property
    def rate(self) -> float:
        return 0.0

    def step(self) -> None:
        """No schedule: nothing to advance (kept for the common criterion interface)."""

    def forward(self, student_logits: Tensor, target: Tensor, teacher_logits: Tensor | None = None) -> LossOutput:
        check_logits("student_logits", student_logits)
        b, k, h, w = student_logits.shape
        if k != self.num_classes:
            raise ValueError(f"student_logits has {k} classes, the criterion was built with {self.num_classes}")
        target = check_target(target, b, h, w, k, self.ignore_index)
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            z = student_logits.float()
            valid = target != self.ignore_index
            y0 = torch.where(valid, target, 0)
            log_p = F.log_softmax(z, dim=1)
            ce_pix = -log_p.gather(1, y0.unsqueeze(1)).squeeze(1)
            loss, extra = self._loss(z, log_p, ce_pix, y0, valid, teacher_logits)
        if not bool(torch.isfinite(loss)):
            check_finite("student_logits", student_logits)
            raise ValueError(f"the loss is not finite ({loss.item()})")
        with torch.no_grad():
            correct = valid & (-ce_pix >= log_p.amax(1))
            stats = {
                "rate": z.new_zeros((), dtype=torch.float64),
                "kept_fraction": z.new_ones((), dtype=torch.float64),
                "capability": z.new_full((), float("nan")),
                **accuracy_stats(accuracy_counts(y0, correct, valid, k)),
                **extra,
            }
        return LossOutput(loss, stats)

    def _loss(self, z, log_p, ce_pix, y0, valid, teacher_logits):  # pragma: no cover - overridden
        raise TypeError(f"{type(self).__name__} must define _loss")


class LabelSmoothingLoss(_PlainCriterion):
    """Label-smoothing CE: ``(1 - eps) CE + eps * mean_k(-log p_s(k))`` (``F.cross_entropy(label_smoothing)``)."""

    def __init__(self, num_classes: int, epsilon: float = 0.1, ignore_index: int = 255) -> None:
        super().__init__(num_classes, ignore_index)
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"label-smoothing epsilon must be in [0, 1), got {epsilon!r}")
        self.epsilon = float(epsilon)

    def _loss(self, z, log_p, ce_pix, y0, valid, teacher_logits):
        smooth = -log_p.mean(1)
        loss = masked_mean((1.0 - self.epsilon) * ce_pix + self.epsilon * smooth, valid)
        return loss, {"ce": masked_mean(ce_pix, valid).detach(), "kd": z.new_zeros(())}


class OHEMLoss(_PlainCriterion):
    """Online hard-pixel mining on CE: average CE over the valid pixels whose target probability is below
    ``thresh``, or over the ``min_kept`` hardest fraction of each image's valid pixels when that is more."""

    def __init__(self, num_classes: int, thresh: float = 0.7, min_kept: float = 0.1, ignore_index: int = 255) -> None:
        super().__init__(num_classes, ignore_index)
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"OHEM thresh must be in (0, 1], got {thresh!r}")
        if not 0.0 < min_kept <= 1.0:
            raise ValueError(f"OHEM min_kept must be a fraction in (0, 1], got {min_kept!r}")
        self.thresh = float(thresh)
        self.min_kept = float(min_kept)

    def _loss(self, z, log_p, ce_pix, y0, valid, teacher_logits):
        d = ce_pix.detach()
        hardest = select_keep(-d, valid, 1.0 - self.min_kept, "per_image", tie_break="index")  # largest CE
        keep = valid & ((d > -torch.log(torch.tensor(self.thresh))) | hardest)
        loss = masked_mean(ce_pix, keep)
        n_valid = valid.sum().clamp_min(1).double()
        return loss, {"ce": loss.detach(), "kd": z.new_zeros(()), "ohem_kept_fraction": keep.sum().double() / n_valid}


class TfKDRegLoss(_PlainCriterion):
    """Tf-KD_reg of Yuan et al. (CVPR 2020, ``loss_kd_regularization`` in their code), per valid pixel.

    Their code builds ``u(k) = a`` at the label, ``(1 - a) / (K - 1)`` elsewhere (``correct_prob`` a, 0.99 in
    their code), takes ``q = softmax(u / T)`` (the probabilities divided by ``T`` and softmaxed again, so a
    large ``T`` makes ``q`` nearly uniform) and returns
    ``(1 - alpha) CE + alpha * multiplier * nn.KLDivLoss()(log_softmax(z), q)``, where ``nn.KLDivLoss()``'s
    default mean runs over all ``N * K`` elements, i.e. ``(1 / K) mean_i KL(q || p_s)_i``; the student's softmax
    has no temperature and there is no ``T^2`` factor. Here the samples are the valid pixels:

    ``L = (1 - alpha) mean_V CE_i + alpha * multiplier / K * mean_V KL(q || softmax(z))_i``.

    ``q`` has the virtual teacher's shape (``q_y = e^{a/T} / (e^{a/T} + (K-1) e^{b/T})``, the rest equal), so
    the KL uses the closed form ``sum_k q log q - (q_y - q_o) log p_s(y) - q_o sum_k log p_s(k)``.
    """

    def __init__(
        self,
        num_classes: int,
        confidence: float = 0.99,
        temperature: float = 20.0,
        multiplier: float = 1.0,
        alpha: float = 0.1,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(num_classes, ignore_index)
        a = check_confidence(confidence, self.num_classes)
        if not temperature > 0 or not multiplier >= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f"tfkd_reg needs temperature > 0, multiplier (kd_weight) >= 0 and alpha in [0, 1], got "
                f"temperature={temperature!r}, multiplier={multiplier!r}, alpha={alpha!r}"
            )
        self.confidence, self.temperature = a, float(temperature)
        self.multiplier, self.alpha = float(multiplier), float(alpha)
        k, b = self.num_classes, (1.0 - a) / (self.num_classes - 1)
        # q = softmax(u / T): exponent differences only matter, so q_o / q_y = exp((b - a) / T)
        ratio = math.exp((b - a) / self.temperature)
        self.q_y = 1.0 / (1.0 + (k - 1) * ratio)
        self.q_o = ratio * self.q_y
        self._neg_entropy = self.q_y * math.log(self.q_y) + (k - 1) * self.q_o * math.log(self.q_o)

    def _loss(self, z, log_p, ce_pix, y0, valid, teacher_logits):
        kl = self._neg_entropy + (self.q_y - self.q_o) * ce_pix - self.q_o * log_p.sum(1)
        ce, kd = masked_mean(ce_pix, valid), masked_mean(kl, valid) / self.num_classes
        loss = (1.0 - self.alpha) * ce + (self.alpha * self.multiplier) * kd
        return loss, {"ce": ce.detach(), "kd": kd.detach()}


class CWDLoss(_PlainCriterion):
    """Channel-wise distillation (Shu et al., ICCV 2021) on logits, plus CE.

    ``phi(z)_{k,i} = exp(z_{k,i} / tau) / sum_{j in V} exp(z_{k,j} / tau)`` over the valid pixels of each image;
    ``L = CE + weight * tau^2 / K * sum_k KL(phi(z_t)_k || phi(z_s)_k)``, averaged over the batch.
    Without teacher logits the virtual teacher's ``log p_t`` (confidence ``a``) serves as teacher logits.
    """

    def __init__(
        self, num_classes: int, tau: float = 4.0, weight: float = 3.0, confidence: float = 0.9, ignore_index: int = 255
    ) -> None:
        super().__init__(num_classes, ignore_index)
        if not tau > 0 or not weight >= 0:
            raise ValueError(f"CWD needs tau > 0 and weight >= 0, got tau={tau!r}, weight={weight!r}")
        self.tau = float(tau)
        self.weight = float(weight)
        self.confidence = float(confidence)

    def _loss(self, z, log_p, ce_pix, y0, valid, teacher_logits):
        b, k, h, w = z.shape
        if teacher_logits is None:
            zt = virtual_teacher(y0, k, self.confidence).clamp_min(torch.finfo(torch.float32).tiny).log()
        else:
            check_logits("teacher_logits", teacher_logits)
            zt = teacher_logits.detach().float()
            if zt.shape[-2:] != z.shape[-2:]:
                zt = F.interpolate(zt, size=(h, w), mode="bilinear", align_corners=False)
        mask = valid.unsqueeze(1).reshape(b, 1, h * w)
        neg = torch.finfo(torch.float32).min
        ls = F.log_softmax(torch.where(mask, z.reshape(b, k, -1) / self.tau, neg), dim=2)
        lt = F.log_softmax(torch.where(mask, zt.reshape(b, k, -1) / self.tau, neg), dim=2)
        kl = torch.where(mask, lt.exp() * (lt - ls), 0.0).sum(2)  # [B, K]
        has_valid = valid.flatten(1).any(1, keepdim=True)
        cwd = (self.tau**2 / k) * torch.where(has_valid, kl, 0.0).sum(1).mean()
        ce = masked_mean(ce_pix, valid)
        return ce + self.weight * cwd, {"ce": ce.detach(), "kd": cwd.detach()}
