"""``ddsd compare`` / ``ddsd report``: run a grid of methods x datasets x seeds and compare the students.

* :mod:`ddsd.compare.grid` — the plan (one ``ddsd train`` argv and run directory per run);
* :mod:`ddsd.compare.runner` — its parallel, resumable execution (progress inside each run, stopping children);
* :mod:`ddsd.compare.stats` — mean / std and paired differences with t-based 95% confidence intervals;
* :mod:`ddsd.compare.collect` — finished run directories -> rows, ``runs.csv``, ``table.md`` and plots;
* :mod:`ddsd.compare.table` — the per-dataset tables (one data model, rendered as Markdown or HTML);
* :mod:`ddsd.compare.plots` — learning curves, rate / capability, per-class IoU, snapshot grids (PNG);
* :mod:`ddsd.compare.report` — one self-contained ``report.html``;
* :mod:`ddsd.compare.cli` — the typer commands mounted as ``ddsd compare`` and ``ddsd report``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "collect": "collect", "find_runs": "collect", "RunSpec": "grid", "Variant": "grid", "build_plan": "grid",
    "execute": "runner", "parse_methods": "grid", "parse_seeds": "grid", "write_report": "report", "Diff": "stats",
    "mean_std": "stats", "paired_diff": "stats",
}


def __getattr__(name: str) -> Any:
    """Import lazily, so mounting the commands does not import matplotlib / scipy for every ``ddsd`` call."""
    if name in _WHERE:
        return getattr(importlib.import_module(f"ddsd.compare.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ddsd.compare' has no attribute {name!r}")


__all__ = [
    "Diff",
    "RunSpec",
    "Variant",
    "build_plan",
    "collect",
    "execute",
    "find_runs",
    "mean_std",
    "paired_diff",
    "parse_methods",
    "parse_seeds",
    "write_report",
]
