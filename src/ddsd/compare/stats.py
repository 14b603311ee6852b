"""Summary statistics over seeds: mean / sample std, and paired differences with a t-based 95% CI.

The difference between two methods is paired by seed (same seed = same data order, augmentations and
initialisation): ``d_s = a_s - b_s`` over the seeds both have, and the interval is
``mean(d) ± t_{0.975, n-1} * sd(d) / sqrt(n)`` (``sd`` with ``n - 1`` in the denominator). With fewer than
two pairs there is no interval ("n/a").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _st

__all__ = ["Diff", "fmt_diff", "fmt_mean_std", "mean_std", "paired_diff"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values; std is NaN for fewer than two."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@dataclass(frozen=True)
class Diff:
    """A paired difference ``a - b`` over ``n`` seeds; ``low``/``high`` are NaN when no CI is available."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def significant(self) -> bool:
        """The confidence interval excludes zero."""
        return self.has_ci and (self.low > 0 or self.high < 0)


def paired_diff(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> Diff:
    """Paired difference ``a - b`` over the seeds present (and finite) in both, with a t-based CI.

    ``a`` and ``b`` map seed -> metric value. ``n < 2`` gives a :class:`Diff` whose interval is NaN.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    seeds = sorted(s for s in a if s in b and _finite(a[s]) and _finite(b[s]))
    d = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(d)
    if n == 0:
        return Diff(math.nan, math.nan, math.nan, 0, confidence)
    m, sd = mean_std(d)
    if n < 2:
        return Diff(m, math.nan, math.nan, n, confidence)
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Diff(m, m - half, m + half, n, confidence)


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and math.isfinite(float(v))


def fmt_mean_std(m: float, sd: float, digits: int = 4) -> str:
    """``0.8123 ± 0.0102``; only the mean when std is undefined; ``n/a`` when there is no value."""
    if not math.isfinite(m):
        return "n/a"
    if not math.isfinite(sd):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def fmt_diff(d: Diff, digits: int = 4) -> str:
    """``+0.0123 [+0.0040, +0.0206] *`` (``*`` when the CI excludes 0); ``[n/a]`` without a CI."""
    if d.n == 0 or not math.isfinite(d.mean):
        return "n/a"
    if not d.has_ci:
        return f"{d.mean:+.{digits}f} [n/a]"
    star = " *" if d.significant else ""
    return f"{d.mean:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]{star}"
