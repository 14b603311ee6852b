"""One epoch of training (:func:`train_epoch`) and the ``metrics.csv`` row that reports it (:func:`epoch_row`).

The per-step statistics (the loss and the criterion's ``out.tensors``: rate, kept fraction, ...) are summed on
the device and read back once per epoch; a non-finite value of a step is left out of that statistic's mean (and
a statistic with no finite value is reported as NaN).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ddsd.engine.session import Session, train_loader
from ddsd.models.outputs import aux_loss, to_logits

__all__ = ["EpochStats", "epoch_row", "train_epoch"]


@dataclass
class EpochStats:
    """What one epoch of steps measured: summed per-step statistics (``names[i]`` -> ``sums[i]`` over
    ``counts[i]`` finite steps), the number of batches and the time spent waiting for data / in the epoch."""

    names: list[str] = field(default_factory=list)
    sums: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    batches: int = 0
    data_time: float = 0.0
    train_time: float = 0.0

    def add(self, names: list[str], vals: torch.Tensor) -> None:
        finite = torch.isfinite(vals)
        kept = torch.where(finite, vals, 0.0)
        self.names = names
        self.sums = self.sums + kept if self.sums is not None else kept
        self.counts = self.counts + finite if self.counts is not None else finite.long()
        self.batches += 1

    def means(self) -> dict[str, float]:
        """``train_<name>`` -> mean over the finite steps (NaN when none was finite)."""
        if self.sums is None or self.counts is None:
            return {}
        avg = (self.sums / self.counts.clamp_min(1)).tolist()
        return {f"train_{n}": (v if c else math.nan) for n, v, c in zip(self.names, avg, self.counts.tolist(),
                                                                         strict=True)}


def _step(s: Session, net: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Forward (under autocast when ``train.amp`` asks), criterion, backward, clip, optimiser / LR / criterion
    steps. Returns the criterion's output (``loss`` with any auxiliary head's loss added)."""
    amp = s.amp_dtype
    with torch.autocast(s.device.type, dtype=amp) if amp else nullcontext():
        raw = net(x)
        logits = to_logits(raw, y.shape[-2:])  # dict / .logits / low-res outputs -> [B, K, H, W]
        t_logits = s.teacher(x, size=tuple(y.shape[-2:])) if s.teacher is not None else None
    out = s.crit(logits, y, t_logits)
    if (aux := aux_loss(raw, y, s.cfg.model.aux_weight, s.spec.ignore_index)) is not None:
        out = out._replace(loss=out.loss + aux)
    s.opt.zero_grad(set_to_none=True)
    s.scaler.scale(out.loss).backward()
    if s.cfg.optim.grad_clip:
        s.scaler.unscale_(s.opt)
        nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.optim.grad_clip)
    s.scaler.step(s.opt)
    s.scaler.update()
    if s.scaler.is_enabled():  # fp16: the scaler skips the first steps while it calibrates (inf gradients); the
        with warnings.catch_warnings():  # LR schedule still follows the step count, so torch's warning is noise
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            s.lr_sched.step()
    else:
        s.lr_sched.step()
    s.crit.step()
    return out


def train_epoch(s: Session, net: nn.Module, epoch: int, on_step=None) -> EpochStats:
    """Train ``net`` (the possibly DDP-wrapped / compiled ``s.model``) for epoch ``epoch`` (0-based); advances
    ``s.step``. ``on_step(loss, rate)`` is called after each step when given (one host sync: progress bars)."""
    t0 = time.perf_counter()
    net.train()
    if s.teacher is not None:
        s.teacher.eval()
    stats = EpochStats()
    t_data = time.perf_counter()
    for batch in train_loader(s.cfg, s.train_ds, epoch, s.ctx, s.workers):
        x = batch["image"].to(s.device, non_blocking=True)
        y = batch["mask"].to(s.device, non_blocking=True)
        if s.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        stats.data_time += time.perf_counter() - t_data
        out = _step(s, net, x, y)
        s.step += 1
        vals = torch.stack([out.loss.detach().double(), *(v.double() for v in out.tensors.values())])
        stats.add(["loss", *out.tensors], vals)
        if on_step is not None:
            on_step(float(vals[0]), float(vals[1]))
        t_data = time.perf_counter()
    stats.train_time = time.perf_counter() - t0
    return stats


def epoch_row(s: Session, epoch: int, stats: EpochStats, val: dict[str, Any], t0: float) -> dict[str, Any]:
    """The ``metrics.csv`` row of epoch ``epoch`` (0-based; written 1-based): step, LR, train means, the rate
    and capability after the epoch, scalar val metrics and timings (``t0``: the epoch's start)."""
    return {
        "epoch": epoch + 1, "step": s.step, "lr": s.lr_sched.get_last_lr()[0],
        **stats.means(),
        "rate": getattr(s.crit, "rate", 0.0),
        "capability": getattr(getattr(s.crit, "schedule", None), "capability", None),
        **{f"val_{k}": v for k, v in val.items() if isinstance(v, int | float)},
        "train_time_s": stats.train_time, "data_time_s": stats.data_time,
        "epoch_time_s": time.perf_counter() - t0,
    }
