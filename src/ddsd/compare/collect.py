"""Finished run directories -> ``runs.csv``, plots and ``table.md``.

``<out>/runs/<dataset>/<method>/seed<k>/summary.json`` is one row. The table reports the **test** split of
a dataset when every run of it has one (``summary["test"]``), else the best-val metrics (the top-level keys
of ``summary.json``); each dataset's heading says which.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from ddsd._io import atomic_write_bytes, write_csv
from ddsd.compare.plots import dataset_plots
from ddsd.compare.table import (
    BINARY_METRICS,
    MULTICLASS_METRICS,
    DatasetResults,
    Document,
    Section,
    dataset_tables,
    overview_table,
    render_markdown,
)
from ddsd.config import METHODS

__all__ = ["RunRecord", "build_results", "collect", "find_runs", "run_rows", "write_runs_csv"]

_SEED_RE = re.compile(r"^seed(\d+)$")
_ID_COLUMNS = ("method", "dataset", "seed", "wall_time_s")


@dataclass
class RunRecord:
    """A finished run: its place in the grid, ``summary.json`` and (when readable) ``config.yaml``."""

    dataset: str
    method: str
    seed: int
    rundir: Path
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def base_method(self) -> str:
        """The ``ddsd train --method`` of the run (a variant label's underlying method)."""
        return str(self.summary.get("method") or self.config.get("method", {}).get("name") or self.method)

    @property
    def wall_time_s(self) -> float:
        v = self.summary.get("wall_time_s")
        return float(v) if isinstance(v, int | float) else math.nan

    def has_test(self) -> bool:
        return isinstance(self.summary.get("test"), dict)

    def metrics(self, split: str) -> dict[str, Any]:
        """``test`` -> ``summary["test"]``; ``val`` -> the top-level (best-val) metrics."""
        return dict(self.summary["test"]) if split == "test" else self.summary

    def per_class_iou(self, split: str) -> dict[str, float]:
        src = self.summary.get("test") if split == "test" else self.summary.get("best_val")
        pc = (src or {}).get("per_class_iou") or self.summary.get("per_class_iou") or {}
        return pc if isinstance(pc, dict) else {}

    @property
    def num_classes(self) -> int | None:
        k = self.config.get("model", {}).get("num_classes")
        return int(k) if isinstance(k, int) else None


def find_runs(out: str | Path, console: Console | None = None) -> list[RunRecord]:
    """Every finished run under ``<out>/runs/*/*/seed*/summary.json`` (unreadable ones are reported, skipped)."""
    root = Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"comparison directory {str(root)!r} does not exist")
    records = []
    for path in sorted(root.glob("runs/*/*/seed*/summary.json")):
        rundir = path.parent
        m = _SEED_RE.match(rundir.name)
        if not m:
            continue
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            if console:
                console.print("[yellow]warning:[/] " + escape(f"skipping {path}: {e}"))
            continue
        cfg: dict[str, Any] = {}
        try:
            cfg = yaml.safe_load((rundir / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            cfg = {}
        records.append(RunRecord(rundir.parent.parent.name, rundir.parent.name, int(m.group(1)), rundir, summary,
                                 cfg if isinstance(cfg, dict) else {}))
    return records


def _scalar(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def run_rows(records: Sequence[RunRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    """``runs.csv`` columns and rows: method, dataset, seed, wall_time_s, every scalar metric, ``test_<key>``."""
    cols: list[str] = list(_ID_COLUMNS)
    test_cols: list[str] = []
    rows = []
    for r in records:
        row: dict[str, Any] = {"method": r.method, "dataset": r.dataset, "seed": r.seed, "wall_time_s": r.wall_time_s}
        for k, v in r.summary.items():
            if _scalar(v) and k not in row:
                row[k] = v
                if k not in cols:
                    cols.append(k)
        for k, v in (r.summary.get("test") or {}).items():
            if _scalar(v):
                row[f"test_{k}"] = v
                if f"test_{k}" not in test_cols:
                    test_cols.append(f"test_{k}")
        rows.append(row)
    return cols + test_cols, rows


def write_runs_csv(path: Path, records: Sequence[RunRecord]) -> None:
    """One row per run (floats with 6 significant digits; missing values empty)."""
    cols, rows = run_rows(records)
    write_csv(path, rows, cols)


def _order(names: Sequence[str], preferred: Sequence[str]) -> list[str]:
    first = [n for n in dict.fromkeys(preferred) if n in names]
    return first + sorted(n for n in set(names) if n not in first)


def build_results(records: Sequence[RunRecord], datasets: Sequence[str], labels: Sequence[str]) -> list[DatasetResults]:
    """Per dataset: the reported split, its main metrics and ``values[label][metric][seed]``."""
    results = []
    ddsd = {r.method for r in records if r.base_method == "ddsd"}
    for ds in datasets:
        recs = [r for r in records if r.dataset == ds]
        if not recs:
            continue
        split = "test" if all(r.has_test() for r in recs) else "val"
        sample = recs[0].metrics(split)
        metrics = BINARY_METRICS if "fbeta_max" in sample else MULTICLASS_METRICS if "miou" in sample else None
        if metrics is None:
            continue
        labs = [lab for lab in labels if any(r.method == lab for r in recs)]
        values: dict[str, dict[str, dict[int, float]]] = {lab: {} for lab in labs}
        for r in recs:
            src = r.metrics(split)
            for m in metrics:
                v = src.get(m.key)
                if _scalar(v) and math.isfinite(v):
                    values[r.method].setdefault(m.key, {})[r.seed] = float(v)
        results.append(DatasetResults(ds, split, metrics, labs, values, ddsd & set(labs)))
    return results


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "n/a"
    h, rem = divmod(round(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s" if m else f"{s:.1f}s"


def _machine(records: Sequence[RunRecord]) -> list[tuple[str, str]]:
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    here = f"{cpu}, {os.cpu_count()} CPUs ({platform.platform()})"
    devices = sorted({f"{r.config.get('run', {}).get('device_name', '?')} "
                      f"({r.config.get('run', {}).get('cpu_threads', '?')} threads)" for r in records if r.config})
    out = [("machine", here)]
    if devices:
        out.append(("runs' devices", ", ".join(devices)))
    return out


def collect(out: str | Path, baseline: str | None = None, console: Console | None = None,
            plots: bool = True) -> Document:
    """Rebuild ``runs.csv``, the plots and ``table.md`` in ``out`` from its finished runs; returns the document.

    ``baseline`` is the method the differences are against (default: the one ``ddsd compare`` recorded in
    ``compare.json``, else ``ce``); a baseline absent from a dataset's runs gives no difference column.
    """
    out = Path(out)
    console = console or Console(stderr=True)
    records = find_runs(out, console)
    if not records:
        raise FileNotFoundError(
            f"no finished runs in {out} (expected {out}/runs/<dataset>/<method>/seed<k>/summary.json)")
    meta_path = out / "compare.json"
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            console.print("[yellow]warning:[/] " + escape(f"ignoring unreadable {meta_path}"))
    baseline = baseline or meta.get("baseline") or "ce"
    labels = _order([r.method for r in records], [*meta.get("methods", []), *METHODS])
    datasets = _order([r.dataset for r in records], meta.get("datasets", []))
    write_runs_csv(out / "runs.csv", records)
    results = build_results(records, datasets, labels)
    seeds = sorted({r.seed for r in records})
    total = sum(r.wall_time_s for r in records if math.isfinite(r.wall_time_s))
    elapsed = (f"{_duration(meta['elapsed_s'])} elapsed (last `ddsd compare`); "
               if isinstance(meta.get("elapsed_s"), int | float) else "")
    doc_meta: list[tuple[str, str]] = [("command", f"`{meta.get('command', f'ddsd compare --collect {out}')}`")]
    doc_meta += [
        ("methods", ", ".join(labels)), ("datasets", ", ".join(datasets)), ("seeds", ", ".join(map(str, seeds))),
        ("runs", f"{len(records)} finished (`runs.csv`)"),
        *_machine(records),
        ("total wall time", elapsed + f"{_duration(total)} summed over runs"),
        ("generated", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    teachers = sorted({str(r.config.get("teacher")) for r in records if r.config.get("teacher")})
    doc_meta.append(("teacher", ", ".join(f"`{t}`" for t in teachers) if teachers
                     else "virtual (built from the ground-truth masks)"))
    sections = []
    if len(results) > 1:
        sections.append(Section("Overview", tables=[overview_table(results, labels)]))
    for res in results:
        recs = [r for r in records if r.dataset == res.dataset]
        seeds_ds = sorted({r.seed for r in recs})
        sec = Section(f"{res.dataset} — {res.split} split, seeds {', '.join(map(str, seeds_ds))}")
        base = baseline if baseline in res.labels else None
        sec.paragraphs.append(
            f"Metrics on the **{res.split}** split"
            + (" (best-val checkpoint)" if res.split == "test" else " (best epoch)")
            + (f"; differences are to `{base}`" if base else "; no baseline in the grid, so no difference column")
            + ", paired by seed, 95% CI = mean(d) ± t(0.975, n−1)·sd(d)/√n (n/a for n < 2); "
            "* marks a CI that excludes 0." + (" Lower is better for MAE." if res.metrics is BINARY_METRICS else "")
        )
        sec.tables = dataset_tables(res, baseline)
        if plots:
            k = next((r.num_classes for r in recs if r.num_classes), None) or (
                2 if res.metrics is BINARY_METRICS else len(recs[0].per_class_iou(res.split)) or 2)
            sec.figures = dataset_plots(out, res.dataset, recs, res.labels, res.primary.key, res.split,
                                        res.metrics is MULTICLASS_METRICS, k)
        sections.append(sec)
    skipped = sorted({r.dataset for r in records} - {r.dataset for r in results})
    if skipped:
        sections.append(Section("Not tabulated", [f"No main metric (fbeta_max / miou) in: {', '.join(skipped)}"]))
    doc = Document("ddsd compare", doc_meta, sections)
    atomic_write_bytes(out / "table.md", render_markdown(doc).encode())
    return doc
