"""Method name -> criterion: the one code path through which every compared method is trained.

| method | criterion |
|---|---|
| ``ce`` | :class:`~ddsd.loss.DDSDLoss` with ``kd_weight = 0`` (cross-entropy only) |
| ``kd`` | DDSDLoss, constant rate 0 (pixel KD on every pixel) |
| ``ls`` | :class:`~ddsd.baselines.LabelSmoothingLoss` |
| ``tfkd`` | DDSDLoss, rate 0: virtual-teacher KD at temperature ``T`` on the student only (the project's reading of
  teacher-free KD, not Yuan et al.'s Tf-KD_reg); ``tfkd_*`` keys override the shared ones when set |
| ``tfkd_reg`` | :class:`~ddsd.baselines.TfKDRegLoss`: Yuan et al.'s Tf-KD_reg as their code (``confidence``,
  ``temperature``, ``kd_weight`` = their multiplier, ``tfkd_reg_alpha``) |
| ``static`` | DDSDLoss, constant rate ``rate`` |
| ``ohem`` | :class:`~ddsd.baselines.OHEMLoss` |
| ``cwd`` | :class:`~ddsd.baselines.CWDLoss` |
| ``ddsd`` | DDSDLoss with the configured schedule (default capability) |

The KD family (kd, static, ddsd, tfkd, tfkd_reg) reads the shared ``confidence`` / ``temperature`` /
``kd_weight``; ``difficulty`` / ``selection`` / ``tie_break`` / ``kd_norm`` / ``scope`` apply to the DDSDLoss
methods (they change nothing at rate 0 except ``difficulty`` in the logged statistics).
"""

from __future__ import annotations

from torch import nn

from ddsd.baselines import CWDLoss, LabelSmoothingLoss, OHEMLoss, TfKDRegLoss
from ddsd.config import MethodConfig
from ddsd.loss import DDSDLoss
from ddsd.schedules import Capability, Constant, RateSchedule, create_schedule

__all__ = ["TEACHER_METHODS", "build_criterion", "build_schedule"]

#: methods whose criterion uses a network teacher's logits when one is given (the others ignore it)
TEACHER_METHODS = ("kd", "static", "cwd", "ddsd")


def build_schedule(m: MethodConfig, total_steps: int) -> RateSchedule:
    """The dropout-rate schedule of a ``ddsd`` run from its config."""
    if m.schedule == "capability":
        return Capability(m.beta, m.r_min, m.r_max, m.momentum, m.capability_metric, m.capability_relative)
    if m.schedule == "constant":
        return Constant(m.rate)
    if m.schedule == "threshold":
        return create_schedule("threshold", tau=m.tau)
    return create_schedule(m.schedule, start=m.rate, end=m.end_rate, total_steps=max(1, total_steps))


def _shared(value: float | None, default: float) -> float:
    return default if value is None else value


def build_criterion(
    m: MethodConfig, num_classes: int, total_steps: int, ignore_index: int = 255, seed: int = 0
) -> nn.Module:
    """Criterion for method ``m.name`` (see the module table); ``total_steps`` sizes time-driven schedules,
    ``seed`` seeds the random tie order and the random / bernoulli selections."""
    common = {
        "ignore_index": ignore_index, "difficulty": m.difficulty, "scope": m.scope, "selection": m.selection,
        "tie_break": m.tie_break, "kd_norm": m.kd_norm, "seed": seed,
    }
    if m.name == "ce":
        return DDSDLoss(num_classes, kd_weight=0.0, schedule=Constant(0.0), **common)
    if m.name == "kd":
        return DDSDLoss(num_classes, confidence=m.confidence, temperature=m.temperature, kd_weight=m.kd_weight,
                        schedule=Constant(0.0), **common)
    if m.name == "tfkd":
        return DDSDLoss(num_classes, confidence=_shared(m.tfkd_confidence, m.confidence),
                        temperature=_shared(m.tfkd_temperature, m.temperature),
                        kd_weight=_shared(m.tfkd_weight, m.kd_weight), schedule=Constant(0.0), **common)
    if m.name == "tfkd_reg":
        return TfKDRegLoss(num_classes, m.confidence, m.temperature, m.kd_weight, m.tfkd_reg_alpha, ignore_index)
    if m.name == "static":
        return DDSDLoss(num_classes, confidence=m.confidence, temperature=m.temperature, kd_weight=m.kd_weight,
                        schedule=Constant(m.rate), ce_on_dropped=m.ce_on_dropped, **common)
    if m.name == "ddsd":
        return DDSDLoss(num_classes, confidence=m.confidence, temperature=m.temperature, kd_weight=m.kd_weight,
                        schedule=build_schedule(m, total_steps), ce_on_dropped=m.ce_on_dropped, **common)
    if m.name == "ls":
        return LabelSmoothingLoss(num_classes, m.ls_epsilon, ignore_index)
    if m.name == "ohem":
        return OHEMLoss(num_classes, m.ohem_thresh, m.ohem_min_kept, ignore_index)
    if m.name == "cwd":
        return CWDLoss(num_classes, m.cwd_tau, m.cwd_weight, m.confidence, ignore_index)
    raise ValueError(f"unknown method {m.name!r}")
