"""The comparison tables: one data model (:class:`Document`) rendered as ``table.md`` or as HTML.

Per dataset: mean ± std over seeds of the main metrics (binary: max F-beta, MAE, S-measure, IoU, boundary
IoU; multi-class: mIoU, pixel accuracy, boundary IoU) with the best mean in bold, the paired difference of
the main metric to the baseline (``--baseline``, default ``ce``) and, for ddsd rows, to the best other method,
each with a t-based 95% CI over seeds; then a table of those differences for every main metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ddsd.compare.stats import Diff, fmt_diff, fmt_mean_std, mean_std, paired_diff

__all__ = [
    "BINARY_METRICS",
    "MULTICLASS_METRICS",
    "Cell",
    "DatasetResults",
    "Document",
    "Figure",
    "Metric",
    "Section",
    "Table",
    "dataset_tables",
    "overview_table",
    "render_markdown",
]


@dataclass(frozen=True)
class Metric:
    """A reported metric: summary key, display name, direction."""

    key: str
    name: str
    higher_better: bool = True

    @property
    def label(self) -> str:
        return f"{self.name} {'↑' if self.higher_better else '↓'}"


BINARY_METRICS = (
    Metric("fbeta_max", "max F-beta"), Metric("mae", "MAE", higher_better=False), Metric("s_measure", "S-measure"),
    Metric("iou", "IoU"), Metric("boundary_iou", "boundary IoU"),
)
MULTICLASS_METRICS = (Metric("miou", "mIoU"), Metric("pixel_acc", "pixel acc"), Metric("boundary_iou", "boundary IoU"))


@dataclass
class Cell:
    text: str
    bold: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG under the output directory (``path`` relative to it)."""

    caption: str
    path: str


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Document:
    title: str
    meta: list[tuple[str, str]]
    sections: list[Section]


@dataclass
class DatasetResults:
    """Metric values of one dataset: ``values[label][metric_key][seed]``, on ``split`` (``test`` or ``val``)."""

    dataset: str
    split: str
    metrics: tuple[Metric, ...]
    labels: list[str]
    values: dict[str, dict[str, dict[int, float]]]
    ddsd_labels: set[str]

    @property
    def primary(self) -> Metric:
        return self.metrics[0]

    def seeds(self, label: str) -> list[int]:
        return sorted(self.values[label].get(self.primary.key, {}))

    def mean(self, label: str, key: str) -> float:
        return mean_std(list(self.values[label].get(key, {}).values()))[0]

    def best_labels(self, metric: Metric, among: Sequence[str] | None = None) -> list[str]:
        """Labels with the best mean for ``metric`` (ties all count)."""
        cands = [(lab, self.mean(lab, metric.key)) for lab in (among if among is not None else self.labels)]
        cands = [(lab, m) for lab, m in cands if math.isfinite(m)]
        if not cands:
            return []
        pick = max if metric.higher_better else min
        best = pick(m for _, m in cands)
        return [lab for lab, m in cands if math.isclose(m, best, rel_tol=0, abs_tol=1e-12)]

    def diff(self, a: str, b: str, key: str) -> Diff:
        return paired_diff(self.values[a].get(key, {}), self.values[b].get(key, {}))

    def vs_best_other(self, label: str, metric: Metric) -> tuple[Diff, str] | None:
        """``label`` minus the best non-ddsd method on ``metric`` (by mean), or None without one."""
        others = [lab for lab in self.labels if lab not in self.ddsd_labels]
        best = self.best_labels(metric, others)
        if not best:
            return None
        return self.diff(label, best[0], metric.key), best[0]


def _diff_cell(d: Diff, against: str | None = None) -> Cell:
    text = fmt_diff(d)
    return Cell(f"{text} vs {against}" if against and text != "n/a" else text)


def dataset_tables(res: DatasetResults, baseline: str | None) -> list[Table]:
    """The means table (with the main metric's CI columns) and the all-metrics differences table."""
    base = baseline if baseline in res.labels else None
    ddsd_rows = [lab for lab in res.labels if lab in res.ddsd_labels]
    has_other = any(lab not in res.ddsd_labels for lab in res.labels)
    p = res.primary
    header = ["method", "n", *[m.label for m in res.metrics]]
    if base:
        header.append(f"Δ {p.name} vs {base} (95% CI)")
    if ddsd_rows and has_other:
        header.append(f"Δ {p.name} vs best other (95% CI)")
    best = {m.key: set(res.best_labels(m)) for m in res.metrics}
    rows = []
    for lab in res.labels:
        row = [Cell(lab), Cell(str(len(res.seeds(lab))))]
        for m in res.metrics:
            mu, sd = mean_std(list(res.values[lab].get(m.key, {}).values()))
            row.append(Cell(fmt_mean_std(mu, sd), bold=lab in best[m.key]))
        if base:
            row.append(Cell("baseline") if lab == base else _diff_cell(res.diff(lab, base, p.key)))
        if ddsd_rows and has_other:
            vs = res.vs_best_other(lab, p) if lab in res.ddsd_labels else None
            row.append(_diff_cell(*vs) if vs else Cell(""))
        rows.append(row)
    tables = [Table(header, rows, f"mean ± std over seeds, {res.split} split; best mean in bold")]
    diff_rows = []
    if base:
        for lab in res.labels:
            if lab != base:
                diff_rows.append([Cell(f"{lab} − {base}"), Cell(str(res.diff(lab, base, p.key).n)),
                                  *[_diff_cell(res.diff(lab, base, m.key)) for m in res.metrics]])
    if has_other:
        for lab in ddsd_rows:
            cells = []
            for m in res.metrics:
                vs = res.vs_best_other(lab, m)
                cells.append(_diff_cell(*vs) if vs else Cell("n/a"))
            n = res.vs_best_other(lab, p)
            diff_rows.append([Cell(f"{lab} − best other"), Cell(str(n[0].n if n else 0)), *cells])
    if diff_rows:
        tables.append(Table(["comparison", "n", *[m.label for m in res.metrics]], diff_rows,
                            "paired differences over seeds with 95% CI; * = the CI excludes 0"))
    return tables


def overview_table(results: Sequence[DatasetResults], labels: Sequence[str]) -> Table:
    """One row per method, one column per dataset: the main metric's mean ± std (best in bold)."""
    header = ["method", *[f"{r.dataset}: {r.primary.label} ({r.split})" for r in results]]
    rows = []
    best = [set(r.best_labels(r.primary)) for r in results]
    for lab in labels:
        row = [Cell(lab)]
        for r, b in zip(results, best, strict=True):
            if lab in r.labels:
                mu, sd = mean_std(list(r.values[lab].get(r.primary.key, {}).values()))
                row.append(Cell(fmt_mean_std(mu, sd), bold=lab in b))
            else:
                row.append(Cell("—"))
        rows.append(row)
    return Table(header, rows, "main metric per dataset, mean ± std over seeds; best in bold")


def _md_cell(c: Cell) -> str:
    text = c.text.replace("|", "\\|")
    return f"**{text}**" if c.bold and text else text


def _md_table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(t.header) + " |", "|" + "|".join(["---", *["---:"] * (len(t.header) - 1)]) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.caption:
        lines += ["", f"*{t.caption}*"]
    return lines


def render_markdown(doc: Document, notes: Mapping[str, str] | None = None) -> str:
    """``table.md``: metadata, then per section its paragraphs, tables and linked PNGs."""
    lines = [f"# {doc.title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in doc.meta]
    for s in doc.sections:
        lines += ["", f"## {s.title}", ""]
        for para in s.paragraphs:
            lines += [para, ""]
        for t in s.tables:
            lines += [*_md_table(t), ""]
        for f in s.figures:
            lines += [f"![{f.caption}]({f.path})", ""]
    return "\n".join(lines).rstrip() + "\n"
