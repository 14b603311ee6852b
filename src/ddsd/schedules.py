"""Step 4 of the method: where the dropout rate comes from.

A schedule exposes ``rate`` (the current fraction of valid pixels to drop, in ``[0, 1)``) and is advanced
once per optimiser step with ``step(capability=None)``, like an LR scheduler; ``state_dict()`` /
``load_state_dict()`` make it resumable.

* :class:`Constant` ``r``: the fixed-rate ("static dropout") baseline.
* :class:`Linear`, :class:`Cosine`, :class:`Exponential` ``start -> end`` over ``total_steps``: time-driven.
* :class:`Capability` (the method's default; by default in its ``relative`` form, see the class): absolute form
  ``r = clip(beta * (1 - c), r_min, r_max)`` where ``c`` is an
  exponential moving average (``c <- m c + (1 - m) acc``, initialised with the first measurement) of the
  student's accuracy on its training batches. A weak student drops many pixels; as it learns, hard pixels
  come back. Before the first measurement the student is assumed weak (``c = 0``).
* :class:`Threshold` ``tau``: drop pixels with difficulty ``> tau`` instead of a fraction; its ``rate`` is
  the dropped fraction measured on the last batch (for logging only).
"""

from __future__ import annotations

import abc
import math
from typing import Any

from ddsd._checks import check_rate

__all__ = [
    "CAPABILITY_METRICS",
    "Capability",
    "Constant",
    "Cosine",
    "Exponential",
    "Linear",
    "RateSchedule",
    "Threshold",
    "create_schedule",
]

CAPABILITY_METRICS = ("mean_class_acc", "pixel_acc")


class RateSchedule(abc.ABC):
    """Base class: a dropout rate that changes as training advances."""

    #: True when the loss must compute the student's accuracy for :meth:`step`.
    needs_capability: bool = False

    def __init__(self) -> None:
        self.num_steps = 0

    @property
    @abc.abstractmethod
    def rate(self) -> float:
        """The current dropout rate in ``[0, 1)``."""

    def step(self, capability: float | None = None) -> None:
        """Advance by one optimiser step; ``capability`` is the student's accuracy on the last batches."""
        self.num_steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "num_steps": self.num_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(
                f"schedule state is for {state.get('type')!r}, cannot load into {type(self).__name__}"
            )
        self.num_steps = int(state["num_steps"])

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if k != "num_steps" and not k.startswith("_")
        )
        return f"{type(self).__name__}({args})"


class Constant(RateSchedule):
    """``r(t) = rate`` for every step."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.value = check_rate(rate)

    @property
    def rate(self) -> float:
        return self.value


class _Progress(RateSchedule):
    """``r(t) = f(p)`` with progress ``p = min(t / total_steps, 1)`` going from ``start`` to ``end``."""

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        super().__init__()
        self.start = check_rate(start, "start")
        self.end = check_rate(end, "end")
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
        self.total_steps = int(total_steps)

    @property
    def progress(self) -> float:
        return min(self.num_steps / self.total_steps, 1.0)


class Linear(_Progress):
    """``r = start + (end - start) p``."""

    @property
    def rate(self) -> float:
        return self.start + (self.end - self.start) * self.progress


class Cosine(_Progress):
    """``r = end + (start - end) (1 + cos(pi p)) / 2``."""

    @property
    def rate(self) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * self.progress))


class Exponential(_Progress):
    """Geometric interpolation ``r = start (end / start)^p``; needs ``start, end > 0``."""

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        super().__init__(start, end, total_steps)
        if self.start <= 0 or self.end <= 0:
            raise ValueError(
                f"Exponential needs start > 0 and end > 0 (geometric interpolation), got start={start!r}, "
                f"end={end!r}; use Linear or Cosine to reach 0"
            )

    @property
    def rate(self) -> float:
        return self.start * (self.end / self.start) ** self.progress


class Capability(RateSchedule):
    """``r = clip(beta (1 - c), r_min, r_max)``, ``c`` = EMA (``momentum``) of the student's accuracy.

    Args:
        beta: slope of the rate in the student's weakness ``1 - c``.
        r_min, r_max: bounds of the rate, ``0 <= r_min <= r_max < 1`` (defaults 0 and 0.3).
        momentum: EMA momentum ``m`` in ``[0, 1)``: ``c <- m c + (1 - m) acc``.
        metric: ``"mean_class_acc"`` (mean per-class accuracy over the classes present in the batch; the
            default, because plain pixel accuracy saturates at once on imbalanced data) or ``"pixel_acc"``.
        relative: (default ``True``) use the capability relative to the first measurement ``c0``,
            ``c_rel = max(0, (c - c0) / (1 - c0))`` (the fraction of its initial gap the student has closed),
            and map it onto the rate range: ``r = clip(r_max - beta (r_max - r_min) c_rel, r_min, r_max)``.
            The rate starts at ``r_max`` and reaches ``r_min`` when the student has closed ``1 / beta`` of its
            initial gap, so a student whose accuracy stays low in absolute terms (many classes, thin structures)
            still moves the rate. (A first version plugged ``c_rel`` into ``beta (1 - c)``; with ``r_max < 1``
            that kept the rate at ``r_max`` until ``c_rel > 1 - r_max``, i.e. for whole runs:
            docs/results/ablations.)
    """

    needs_capability = True

    def __init__(
        self,
        beta: float = 1.0,
        r_min: float = 0.0,
        r_max: float = 0.3,
        momentum: float = 0.9,
        metric: str = "mean_class_acc",
        relative: bool = True,
    ) -> None:
        super().__init__()
        self.relative = bool(relative)
        self._initial: float | None = None
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.beta = float(beta)
        self.r_min = check_rate(r_min, "r_min")
        self.r_max = check_rate(r_max, "r_max")
        if self.r_min > self.r_max:
            raise ValueError(f"r_min must be <= r_max, got r_min={r_min!r}, r_max={r_max!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        if metric not in CAPABILITY_METRICS:
            raise ValueError(f"metric must be one of {CAPABILITY_METRICS}, got {metric!r}")
        self.metric = metric
        self._capability: float | None = None

    @property
    def capability(self) -> float | None:
        """The EMA ``c`` (``None`` before the first measurement)."""
        return self._capability

    @property
    def effective_capability(self) -> float:
        """The ``c`` the rate uses: the EMA, or with ``relative`` the share of the initial gap closed."""
        c = 0.0 if self._capability is None else self._capability
        if self.relative and self._initial is not None:
            c = max(0.0, (c - self._initial) / (1.0 - self._initial)) if self._initial < 1.0 else 1.0
        return c

    @property
    def rate(self) -> float:
        c = self.effective_capability
        r = self.r_max - self.beta * (self.r_max - self.r_min) * c if self.relative else self.beta * (1.0 - c)
        return min(max(r, self.r_min), self.r_max)

    def step(self, capability: float | None = None) -> None:
        super().step()
        if capability is None:
            return
        acc = float(capability)
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"capability (an accuracy) must be in [0, 1], got {capability!r}")
        if self._capability is None:
            self._capability = self._initial = acc
        else:
            self._capability = self.momentum * self._capability + (1.0 - self.momentum) * acc

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "capability": self._capability, "initial": self._initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._capability = state["capability"]
        self._initial = state.get("initial")


class Threshold(RateSchedule):
    """Drop the pixels with difficulty ``d_i > tau``; ``rate`` reports the last measured dropped fraction."""

    def __init__(self, tau: float) -> None:
        super().__init__()
        if not tau >= 0:
            raise ValueError(f"tau must be >= 0 (difficulties are >= 0), got {tau!r}")
        self.tau = float(tau)
        self._measured = 0.0

    @property
    def rate(self) -> float:
        return self._measured

    def record(self, dropped_fraction: float) -> None:
        """Store the dropped fraction measured by the loss (logging only)."""
        self._measured = float(dropped_fraction)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "measured": self._measured}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._measured = float(state["measured"])


_BY_NAME: dict[str, type[RateSchedule]] = {
    "constant": Constant,
    "linear": Linear,
    "cosine": Cosine,
    "exponential": Exponential,
    "capability": Capability,
    "threshold": Threshold,
}


def create_schedule(name: str, **kwargs: Any) -> RateSchedule:
    """Build a schedule by name (``constant | linear | cosine | exponential | capability | threshold``)."""
    try:
        cls = _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; valid: {sorted(_BY_NAME)}") from None
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for schedule {name!r}: {e}") from None
