"""Step 5 of the method: the loss, cross-entropy plus distillation on the kept pixels.

.. math::

    L = \\frac{1}{|V|} \\sum_{i \\in V} CE_i
        + \\lambda T^2 \\frac{1}{|N|} \\sum_{i \\in M} KL(p_t \\| p_s^{T})_i

``V`` = valid pixels, ``M`` = kept valid pixels (:func:`ddsd.dropout.select_keep` with the schedule's rate,
the ``selection`` and the ``tie_break``), ``p_s^T = softmax(z_s / T)``; ``N = M`` with ``kd_norm="kept"``
(default: each kept pixel re-weighted by ``|V| / |M|``) or ``N = V`` with ``kd_norm="valid"`` (dropping is a
pure gate). The KD term is 0 (not NaN) when ``M`` is empty; with ``ce_on_dropped=False`` the CE term is
averaged over ``M`` too.

Cost: with the virtual teacher (``a``, ``b = (1 - a) / (K - 1)``) the per-pixel KL has the closed form
``KL_i = sum_k p_t log p_t - (a - b) log p_s(y_i) - b sum_k log p_s(k)_i``, so the ``[B, K, H, W]`` teacher
tensor is never built; with ``difficulty="kl"`` the same per-pixel values are the difficulty (computed once).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ddsd._accuracy import accuracy_counts, accuracy_stats, binary_accuracy_counts
from ddsd._checks import check_finite, check_logits, check_target
from ddsd._pixel_loss import BinaryTerms, binary_terms, binary_weighted_loss, pixel_terms, weighted_loss
from ddsd.difficulty import check_kind
from ddsd.dropout import check_scope, check_selection, check_tie_break, select_keep
from ddsd.schedules import Capability, Constant, RateSchedule, Threshold
from ddsd.teacher import teacher_log_probs, virtual_teacher_values

__all__ = ["KD_NORMS", "DDSDLoss", "LossOutput"]

KD_NORMS = ("kept", "valid")


class LossOutput(NamedTuple):
    """What :class:`DDSDLoss` returns.

    Attributes:
        loss: scalar tensor to back-propagate.
        tensors: the per-step statistics as detached 0-d tensors (no host sync until read).
    """

    loss: Tensor
    tensors: dict[str, Tensor]

    @property
    def stats(self) -> dict[str, float]:
        """Per-step statistics as Python floats: ``rate``, ``kept_fraction``, ``difficulty_kept``,
        ``difficulty_dropped`` (NaN when nothing is dropped), ``capability`` (NaN before the first
        measurement or for schedules without one), ``pixel_acc``, ``mean_class_acc``, ``ce``, ``kd``."""
        return {k: float(v) for k, v in self.tensors.items()}


class DDSDLoss(nn.Module):
    """Dynamic dropout self-distillation loss (a drop-in criterion for segmentation training loops).

    Args:
        num_classes: ``K >= 2``.
        confidence: virtual-teacher confidence ``a in (1/K, 1]`` (used when no teacher logits are given);
            default 0.99.
        temperature: ``T > 0`` for the student (and network-teacher) softmax of the KD term; default 4.
        kd_weight: ``lambda >= 0``; default 0.5 (effective weight ``lambda T^2 = 8``). The defaults are the
            setting the project's results chose on val (docs/method.md, "Defaults and their evidence").
        difficulty: ``"one_sided_kl"`` (default) | ``"kl"`` | ``"target_gap"`` | ``"l1"``
            (:func:`ddsd.pixel_difficulty`).
        scope: ``"per_image" | "per_batch"``; under DDP ``per_batch`` ranks each rank's local batch.
        schedule: a :class:`~ddsd.schedules.RateSchedule`, or a float for a constant rate;
            default :class:`~ddsd.schedules.Capability` (relative capability, ``r_max = 0.3``).
        selection: ``"bernoulli"`` (default: the round-2 controls, docs/method.md) | ``"hardest"`` | ``"random"``
            | ``"easiest"`` (:mod:`ddsd.dropout`); the threshold schedule only works with ``hardest``.
        tie_break: ``"random"`` (default: seeded random order among equal difficulties) | ``"index"``.
        kd_norm: ``"kept"`` (default: KD mean over the kept pixels) | ``"valid"`` (sum over the kept pixels
            divided by the number of valid pixels).
        seed: seed of the random tie order / random and bernoulli selections; with the draw counter (advanced
            once per training-mode forward, saved in ``state_dict``) it fixes every mask, so a resumed run
            draws exactly what the uninterrupted one would.
        ignore_index: void label in the target.
        ce_on_dropped: keep the dropped pixels in the CE term (default) or remove them from it too.
        check_inputs: validate target values and finiteness of the loss (host syncs); ``False`` makes the
            forward free of host syncs (``torch.compile(fullgraph=True)`` traces it).
        sync_capability: under ``torch.distributed``, sum the accuracy counts over ranks in :meth:`step` so
            every rank uses the same rate.

    Call ``out = crit(student_logits [B,K,H,W], target [B,H,W], teacher_logits=None [B,K,h,w])``; then
    ``out.loss.backward()``, ``optimizer.step()``, ``crit.step()``. ``crit.state_dict()`` holds the schedule
    and the draw counter.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        confidence: float = 0.99,
        temperature: float = 4.0,
        kd_weight: float = 0.5,
        difficulty: str = "one_sided_kl",
        scope: str = "per_image",
        schedule: RateSchedule | float | None = None,
        selection: str = "bernoulli",
        tie_break: str = "random",
        kd_norm: str = "kept",
        seed: int = 0,
        ignore_index: int = 255,
        ce_on_dropped: bool = True,
        check_inputs: bool = True,
        sync_capability: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.confidence = float(confidence)
        self._virtual = virtual_teacher_values(confidence, self.num_classes)  # validates K and a
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not kd_weight >= 0:
            raise ValueError(f"kd_weight must be >= 0, got {kd_weight!r}")
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight)
        self.difficulty = check_kind(difficulty)
        self.scope = check_scope(scope)
        self.selection = check_selection(selection)
        self.tie_break = check_tie_break(tie_break)
        if kd_norm not in KD_NORMS:
            raise ValueError(f"kd_norm must be one of {KD_NORMS}, got {kd_norm!r}")
        self.kd_norm = kd_norm
        self.seed = int(seed)
        if schedule is None:
            schedule = Capability()
        elif isinstance(schedule, int | float):
            schedule = Constant(schedule)
        elif not isinstance(schedule, RateSchedule):
            raise TypeError(f"schedule must be a RateSchedule or a float rate, got {type(schedule).__name__}")
        if isinstance(schedule, Threshold) and self.selection != "hardest":
            raise ValueError(
                f"selection={self.selection!r} needs a rate; the threshold schedule drops d > tau "
                "(selection='hardest' only: pass selection='hardest', or --set method.selection=hardest)"
            )
        self.schedule = schedule
        self.ignore_index = int(ignore_index)
        self.ce_on_dropped = bool(ce_on_dropped)
        self.check_inputs = bool(check_inputs)
        self.sync_capability = bool(sync_capability)
        self._binary_fast = True  # K = 2 virtual-teacher fast path (tests switch it off to compare)
        # Step state lives in buffers so that a compiled forward reads it without recompiling.
        self.register_buffer("_rate", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("_capability", torch.full((), float("nan")), persistent=False)
        self.register_buffer("_counts", torch.zeros(2, self.num_classes, dtype=torch.int64), persistent=False)
        self.register_buffer("_kept", torch.zeros(2, dtype=torch.int64), persistent=False)
        self.register_buffer("_draws", torch.zeros((), dtype=torch.int64), persistent=False)
        self._refresh_buffers()

    # -- schedule ---------------------------------------------------------------------------------------
    @property
    def rate(self) -> float:
        """The dropout rate the next forward uses."""
        return self.schedule.rate

    def _refresh_buffers(self) -> None:
        self._rate.fill_(0.0 if isinstance(self.schedule, Threshold) else self.schedule.rate)
        cap = getattr(self.schedule, "capability", None)
        self._capability.fill_(float("nan") if cap is None else cap)

    @torch.no_grad()
    def step(self) -> None:
        """Advance the schedule by one optimiser step, feeding it the accuracy measured since the last step.

        Under an initialised ``torch.distributed`` group (and ``sync_capability``) the counts are summed
        over ranks first (a collective: every rank must call ``step``), so all ranks share one rate.
        """
        counts = torch.cat([self._counts.flatten(), self._kept])
        if self.sync_capability and dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        counts = counts.cpu()
        k = self.num_classes
        per_class, (kept, valid) = counts[: 2 * k].view(2, k), counts[2 * k :].tolist()
        capability = None
        if int(per_class[1].sum()) > 0:
            capability = float(accuracy_stats(per_class)[getattr(self.schedule, "metric", "mean_class_acc")])
        if isinstance(self.schedule, Threshold) and valid > 0:
            self.schedule.record(1.0 - kept / valid)
        self.schedule.step(capability if self.schedule.needs_capability else None)
        self._counts.zero_()
        self._kept.zero_()
        self._refresh_buffers()

    def get_extra_state(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(), "draws": int(self._draws)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self._draws.fill_(int(state.get("draws", 0)))  # checkpoints older than the counter start at 0
        self._refresh_buffers()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, confidence={self.confidence}, temperature={self.temperature}, "
            f"kd_weight={self.kd_weight}, difficulty={self.difficulty!r}, scope={self.scope!r}, "
            f"selection={self.selection!r}, tie_break={self.tie_break!r}, kd_norm={self.kd_norm!r}, "
            f"seed={self.seed}, schedule={self.schedule!r}, ce_on_dropped={self.ce_on_dropped}"
        )

    # -- forward ----------------------------------------------------------------------------------------
    def _check(self, student_logits: Tensor, target: Tensor, teacher_logits: Tensor | None) -> Tensor:
        check_logits("student_logits", student_logits)
        bsz, k, h, w = student_logits.shape
        if k != self.num_classes:
            raise ValueError(
                f"student_logits has {k} classes (dim 1), "
                f"DDSDLoss was built with num_classes={self.num_classes}"
            )
        if teacher_logits is not None:
            check_logits("teacher_logits", teacher_logits)
            if teacher_logits.shape[1] != k:
                raise ValueError(f"teacher_logits has {teacher_logits.shape[1]} classes, the student has {k}")
            if teacher_logits.shape[0] != bsz:
                raise ValueError(f"teacher_logits batch {teacher_logits.shape[0]} != student batch {bsz}")
        if not self.check_inputs:
            return target.long()
        # the binary path checks the values from its own masks (_check_binary_values): a few counts, no min / max
        return check_target(target, bsz, h, w, k, self.ignore_index, values=not self._binary_path(teacher_logits))

    def _check_binary_values(self, target: Tensor, valid: Tensor, is_one: Tensor) -> None:
        """Every valid (non-void) pixel is 0 or 1: ``#{0} + #{1} == #{valid}`` (one host sync); otherwise the full
        :func:`~ddsd._checks.check_target` names the offending value."""
        zeros = torch.count_nonzero(target == 0)
        if int(zeros + torch.count_nonzero(is_one) - torch.count_nonzero(valid)) != 0:
            check_target(target, *target.shape, 2, self.ignore_index)

    def forward(
        self, student_logits: Tensor, target: Tensor, teacher_logits: Tensor | None = None
    ) -> LossOutput:
        """Loss and statistics for one batch.

        Args:
            student_logits: ``[B, K, H, W]`` (any floating dtype; the loss is computed in float32).
            target: ``[B, H, W]`` integer class ids, ``ignore_index`` for void.
            teacher_logits: optional network-teacher logits ``[B, K, h, w]`` (resized to ``H, W``);
                ``None`` uses the virtual teacher.
        """
        target = self._check(student_logits, target, teacher_logits)
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            out = self._forward(student_logits.float(), target, teacher_logits)
        if self.training:
            self._draws += 1
        if self.check_inputs and not bool(torch.isfinite(out.loss)):  # one scalar sync; details on failure
            check_finite("student_logits", student_logits)
            if teacher_logits is not None:
                check_finite("teacher_logits", teacher_logits)
            raise ValueError(f"the loss is not finite ({out.loss.item()}) although the logits are")
        return out

    @torch.no_grad()
    def pixel_maps(
        self, student_logits: Tensor, target: Tensor, teacher_logits: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The per-pixel difficulty ``[B, H, W]`` and keep mask ``[B, H, W]`` (bool) at the current rate (and
        the next draw), for inspection and pictures; nothing is counted towards the capability."""
        target = self._check(student_logits, target, teacher_logits)
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            *_, d, keep = self._pixel_terms(student_logits.float(), target, teacher_logits)
        return d, keep

    def _selects(self) -> bool:
        """False when every valid pixel is always kept (a constant rate 0: kd, tfkd, ce): no selection cost."""
        return not (isinstance(self.schedule, Constant) and self.schedule.value == 0.0)

    def _pixel_terms(self, z: Tensor, target: Tensor, teacher_logits: Tensor | None):
        """Per-pixel ``(valid, y0, terms, difficulty, keep)`` (:class:`ddsd._pixel_loss.PixelTerms`)."""
        t = self.temperature
        valid = target != self.ignore_index
        if self._binary_path(teacher_logits):
            y0, terms, lpt_y = None, binary_terms(z, target, t, self._virtual), math.log(self._virtual[0])
            if self.check_inputs:
                self._check_binary_values(target, valid, terms.is_one)
        else:
            y0 = target.clamp(0, self.num_classes - 1).unsqueeze(1)  # [B, 1, H, W]; void pixels: any class id
            log_pt = None if teacher_logits is None else teacher_log_probs(teacher_logits, tuple(z.shape[-2:]), t)
            terms = pixel_terms(z, y0, t, self._virtual, log_pt, keep_log_q=self.difficulty == "l1")
            lpt_y = math.log(self._virtual[0]) if log_pt is None else log_pt.gather(1, y0).squeeze(1)
        d = self._difficulty(terms, lpt_y, valid)
        if isinstance(self.schedule, Threshold):
            keep = valid & (d <= self.schedule.tau)
        elif not self._selects():
            keep = valid
        else:
            keep = select_keep(
                d, valid, self._rate, self.scope, self.selection, self.tie_break, self.seed, self._draws, nonneg=True,
                allow_sync=self.check_inputs and not torch.compiler.is_compiling(),
            )
        return valid, y0, terms, d, keep

    def _binary_path(self, teacher_logits: Tensor | None) -> bool:
        """K = 2 with the virtual teacher: every per-pixel term is a function of the margin ``z_y - z_other``
        (:func:`ddsd._pixel_loss.binary_terms`), computed on ``[B, H, W]`` instead of ``[B, 2, H, W]``."""
        return (self.num_classes == 2 and teacher_logits is None and self._binary_fast
                and self.ignore_index not in (0, 1))

    def _forward(self, z: Tensor, target: Tensor, teacher_logits: Tensor | None) -> LossOutput:
        t = self.temperature
        valid, y0, terms, d, keep = self._pixel_terms(z, target, teacher_logits)
        n_valid = torch.count_nonzero(valid)
        n_keep = n_valid if keep is valid else torch.count_nonzero(keep)
        ce_mask, ce_n = (valid, n_valid) if self.ce_on_dropped else (keep, n_keep)
        kd_n = n_keep if self.kd_norm == "kept" else n_valid
        alpha = torch.div(ce_mask, ce_n.clamp_min(1).to(z.dtype))  # CE weight per pixel (one pass: no bool copy)
        # KD weight per pixel (the same tensor when the masks and counts agree, e.g. rate 0: one allocation less)
        gamma = None if keep is ce_mask and kd_n is ce_n else torch.div(keep, kd_n.clamp_min(1).to(z.dtype))
        ce = -torch.dot(alpha.reshape(-1), terms.lp_y.reshape(-1))
        kd = torch.dot((alpha if gamma is None else gamma).reshape(-1), terms.kl.reshape(-1))
        lam = self.kd_weight * t * t
        if isinstance(terms, BinaryTerms):
            loss = binary_weighted_loss(z, ce + lam * kd, terms, alpha, gamma, lam, t, self._virtual[0])
            correct = valid & (terms.m >= 0)  # the target logit is the larger one
        else:
            loss = weighted_loss(z, ce + lam * kd, terms, y0, alpha, gamma, lam, t,
                                 None if teacher_logits is not None else self._virtual)
            # a pixel is correct when its target class has the largest logit (amax is much cheaper than argmax)
            lp_max = terms.log_p.amax(1) if terms.lp_max is None else terms.lp_max
            correct = valid & (terms.lp_y >= lp_max)
        kept_sum = torch.dot((alpha if gamma is None else gamma).reshape(-1), d.reshape(-1)) * kd_n.clamp_min(1)
        if isinstance(terms, BinaryTerms):
            per_class = binary_accuracy_counts(terms.is_one, correct, valid, n_valid)
        else:
            per_class = accuracy_counts(y0.squeeze(1), correct, valid, self.num_classes)
        return LossOutput(loss, self._stats(per_class, n_valid, n_keep, d, kept_sum, ce, kd))

    @torch.no_grad()
    def _difficulty(self, terms, lpt_y: Tensor | float, valid: Tensor) -> Tensor:
        """Per-pixel difficulty ``[B, H, W]`` (``+0.0`` at void pixels) from the terms the loss already has: the
        ``[B, K, H, W]`` virtual teacher is never built (``l1`` uses ``|a - p_y| + sum_k |b - p_k| - |b - p_y|``)."""
        kind = self.difficulty
        if kind in ("kl", "one_sided_kl"):
            d = terms.kl.clamp_min(0.0)
            off = ~valid
            if kind == "one_sided_kl":  # zero where the student's target probability already reaches the teacher's
                off |= terms.lq_y >= lpt_y
            return d.masked_fill_(off, 0.0)
        if kind == "target_gap":
            pt_y = math.exp(lpt_y) if isinstance(lpt_y, float) else lpt_y.exp()
            d = terms.lq_y.exp().neg_().add_(pt_y).clamp_min_(0.0)
        elif isinstance(terms, BinaryTerms):  # l1, K = 2, virtual teacher: |a - q_y| + |b - q_other| = 2 |a - q_y|
            d = terms.lq_y.exp().sub_(self._virtual[0]).abs_().mul_(2.0)
        elif terms.log_pt is not None:  # l1, network teacher
            d = (terms.log_pt.exp() - terms.log_q.exp()).abs().sum(1)
        else:  # l1, virtual teacher
            a, b, _ = self._virtual
            p_y = terms.lq_y.exp()
            d = (a - p_y).abs() + (b - terms.log_q.exp()).abs().sum(1) - (b - p_y).abs()
            d.clamp_min_(0.0)
        return d.masked_fill_(~valid, 0.0)

    def _stats(
        self,
        per_class: Tensor,
        n_valid: Tensor,
        n_keep: Tensor,
        d: Tensor,
        kept_sum: Tensor,
        ce: Tensor,
        kd: Tensor,
    ) -> dict[str, Tensor]:
        with torch.no_grad():
            if self.training:
                self._counts += per_class
                self._kept += torch.stack([n_keep, n_valid])
            kept_fraction = n_keep.double() / n_valid.clamp_min(1).double()
            is_threshold = isinstance(self.schedule, Threshold)
            return {
                "rate": (1.0 - kept_fraction) if is_threshold else self._rate.clone(),
                "kept_fraction": kept_fraction,
                "difficulty_kept": kept_sum / n_keep,
                # NaN when nothing is dropped (not +-inf from the rounding of the difference of the sums)
                "difficulty_dropped": torch.where(
                    n_valid > n_keep, (d.sum() - kept_sum) / (n_valid - n_keep), float("nan")
                ),
                "capability": self._capability.clone(),
                **accuracy_stats(per_class),
                "ce": ce.detach(),
                "kd": kd.detach(),
            }
