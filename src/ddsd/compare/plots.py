"""The comparison's pictures (matplotlib, Agg, PNG) from the run directories.

* learning curves: the main val metric per epoch, mean over seeds per method (band: min..max over seeds);
* dropout rate and capability over epochs, for the methods that drop pixels (ddsd family, static);
* per-class IoU bars (multi-class datasets), from the test split when present, else the best val epoch;
* snapshot grids (runs trained with ``train.snapshots``): rows = validation images; columns = image, ground
  truth, then at early / middle / late epochs the prediction, the difficulty heat map and the dropped pixels
  (valid and not kept).

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot state, no GUI backend).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

from ddsd.compare.table import Figure
from ddsd.engine.rundir import read_metrics
from ddsd.engine.snapshots import load_snapshot

__all__ = ["dataset_plots", "learning_curves", "per_class_iou", "rate_capability", "snapshot_grid"]

_DPI = 110


def _color(i: int):
    import matplotlib

    return matplotlib.colormaps["tab10"](i % 10)


def _save(fig: MplFigure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=_DPI, format="png", bbox_inches="tight")
    tmp.replace(path)


def _float(v) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _series(rundirs: Sequence[Path], column: str) -> np.ndarray:
    """[seeds, epochs] of ``column`` from each run's metrics.csv (NaN-padded)."""
    rows = [read_metrics(d / "metrics.csv") for d in rundirs]
    n = max((len(r) for r in rows), default=0)
    arr = np.full((len(rows), n), np.nan)
    for i, rr in enumerate(rows):
        first = min((int(_float(row.get("epoch"))) for row in rr), default=1)
        for row in rr:  # epochs are 1-based; runs made before that counted from 0
            e = int(_float(row.get("epoch"))) - (1 if first >= 1 else 0)
            if 0 <= e < n:
                arr[i, e] = _float(row.get(column))
    return arr


def _band(ax, x, arr, color, label):
    with np.errstate(all="ignore"):
        valid = ~np.all(np.isnan(arr), axis=0)
        if not valid.any():
            return False
        mean = np.nanmean(arr[:, valid], axis=0)
        ax.plot(x[valid], mean, color=color, label=label, lw=1.6, marker="o" if valid.sum() < 12 else None, ms=3)
        if arr.shape[0] > 1:
            ax.fill_between(x[valid], np.nanmin(arr[:, valid], axis=0), np.nanmax(arr[:, valid], axis=0),
                            color=color, alpha=0.15, lw=0)
    return True


def learning_curves(path: Path, dataset: str, runs: dict[str, list[Path]], metric: str) -> bool:
    """Main val metric per epoch, one line per method (``runs``: label -> run dirs). False when no data."""
    fig = MplFigure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    drawn = False
    for i, (label, dirs) in enumerate(runs.items()):
        arr = _series(dirs, f"val_{metric}")
        drawn |= _band(ax, np.arange(1, arr.shape[1] + 1), arr, _color(i), label)
    if not drawn:
        return False
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=f"val {metric}", title=f"{dataset}: learning curves (mean, band = min..max seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def rate_capability(path: Path, dataset: str, runs: dict[str, list[Path]]) -> bool:
    """Dropout rate and capability per epoch for the methods with a non-zero rate. False when none."""
    fig = MplFigure(figsize=(10.0, 3.8))
    ax_r, ax_c = fig.subplots(1, 2)
    any_rate = any_cap = False
    for i, (label, dirs) in enumerate(runs.items()):
        rate = _series(dirs, "rate")
        if not np.any(np.nan_to_num(rate) > 0):
            continue
        x = np.arange(1, rate.shape[1] + 1)
        any_rate |= _band(ax_r, x, rate, _color(i), label)
        any_cap |= _band(ax_c, x, _series(dirs, "capability"), _color(i), label)
    if not any_rate:
        return False
    ax_r.set(xlabel="epoch", ylabel="dropout rate", title=f"{dataset}: dropout rate")
    ax_c.set(xlabel="epoch", ylabel="capability", title=f"{dataset}: student capability")
    for ax in (ax_r, ax_c):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if not any_cap:
        ax_c.text(0.5, 0.5, "no capability schedule", ha="center", va="center", transform=ax_c.transAxes)
    _save(fig, path)
    return True


def per_class_iou(path: Path, dataset: str, values: dict[str, list[dict[str, float]]], split: str) -> bool:
    """Grouped bars: per-class IoU, mean over seeds (error bar = std), one bar per method."""
    classes: list[str] = []
    for dicts in values.values():
        for d in dicts:
            classes += [c for c in d if c not in classes]
    if not classes:
        return False
    labels = list(values)
    width = 0.8 / max(1, len(labels))
    fig = MplFigure(figsize=(max(6.0, 0.9 * len(classes) * max(1, len(labels)) ** 0.5 + 2), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    for i, label in enumerate(labels):
        arr = np.array([[_float(d.get(c)) for c in classes] for d in values[label]], dtype=float)
        with np.errstate(all="ignore"):
            mean = np.nanmean(arr, axis=0)
            std = np.nanstd(arr, axis=0, ddof=1) if arr.shape[0] > 1 else None
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, np.nan_to_num(mean), width, yerr=std, label=label,
               color=_color(i), capsize=2)
    ax.set_xticks(x, classes, rotation=30 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
    ax.set(ylabel="IoU", ylim=(0, 1), title=f"{dataset}: per-class IoU ({split} split, mean over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(4, len(labels)))
    _save(fig, path)
    return True


def _label_cmap(num_classes: int) -> tuple[ListedColormap, int]:
    import matplotlib

    if num_classes <= 2:
        cmap = ListedColormap([(0, 0, 0), (1, 1, 1)])
    else:
        base = matplotlib.colormaps["tab20" if num_classes > 10 else "tab10"]
        cmap = ListedColormap([base(i % base.N) for i in range(num_classes)])
    return cmap.with_extremes(bad=(0.55, 0.55, 0.55)), max(1, num_classes - 1)


def _pick_epochs(files: Sequence[Path]) -> list[Path]:
    idx = sorted({0, len(files) // 2, len(files) - 1})
    return [files[i] for i in idx]


def snapshot_grid(path: Path, title: str, snapshot_dir: Path, num_classes: int, max_images: int = 4) -> bool:
    """The difficulty / dropped-pixel grid from ``<run>/snapshots/epoch_NNN.npz``. False when none."""
    files = sorted(snapshot_dir.glob("epoch_*.npz"))
    if not files:
        return False
    snaps = [load_snapshot(f) for f in _pick_epochs(files)]
    shift = 1 if files[0].name == "epoch_000.npz" else 0  # runs before 1-based epochs named the first epoch 0
    first = snaps[-1]
    n = min(max_images, first["image"].shape[0])
    cmap, vmax_label = _label_cmap(num_classes)
    ncols = 2 + 3 * len(snaps)
    fig = MplFigure(figsize=(1.25 * ncols, 1.3 * n + 0.6))
    axes = np.asarray(fig.subplots(n, ncols, squeeze=False))
    for r in range(n):
        mask = first["mask"][r]
        void = mask == 255
        diff_max = max(float(np.percentile(s["difficulty"][r].astype(np.float32)[~void], 99)) if (~void).any()
                       else 1.0 for s in snaps) or 1.0
        panels = [("image", first["image"][r], {}), ("ground truth", np.ma.masked_where(void, mask),
                                                      {"cmap": cmap, "vmin": 0, "vmax": vmax_label})]
        for s in snaps:
            e = int(s["epoch"]) + shift
            dropped = (s["mask"][r] != 255) & ~s["keep"][r]
            panels += [
                (f"pred e{e}", s["pred"][r], {"cmap": cmap, "vmin": 0, "vmax": vmax_label}),
                (f"difficulty e{e}", np.ma.masked_where(void, s["difficulty"][r].astype(np.float32)),
                 {"cmap": "magma", "vmin": 0, "vmax": diff_max}),
                (f"dropped e{e}\nrate {float(s['rate']):.2f}", np.ma.masked_where(void, dropped.astype(np.float32)),
                 {"cmap": _label_cmap(2)[0], "vmin": 0, "vmax": 1}),
            ]
        for c, (name, img, kw) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
    return True


def dataset_plots(
    out: Path, dataset: str, records: Sequence, labels: Sequence[str], metric: str, split: str,
    multiclass: bool, num_classes: int,
) -> list[Figure]:
    """Every picture of one dataset under ``out/plots/``; returns them as table figures (relative paths)."""
    plot_dir = out / "plots"
    runs = {lab: [r.rundir for r in records if r.method == lab] for lab in labels}
    runs = {k: v for k, v in runs.items() if v}
    figs: list[Figure] = []
    name = f"{dataset}_curves.png"
    if learning_curves(plot_dir / name, dataset, runs, metric):
        figs.append(Figure(f"{dataset}: learning curves (val {metric})", f"plots/{name}"))
    name = f"{dataset}_rate_capability.png"
    if rate_capability(plot_dir / name, dataset, runs):
        figs.append(Figure(f"{dataset}: dropout rate and capability", f"plots/{name}"))
    if multiclass:
        values = {lab: [r.per_class_iou(split) for r in records if r.method == lab] for lab in runs}
        name = f"{dataset}_per_class_iou.png"
        if per_class_iou(plot_dir / name, dataset, values, split):
            figs.append(Figure(f"{dataset}: per-class IoU ({split})", f"plots/{name}"))
    for lab in runs:
        with_snaps = sorted((r for r in records if r.method == lab and (r.rundir / "snapshots").is_dir()),
                            key=lambda r: r.seed)
        if not with_snaps:
            continue
        rec = with_snaps[0]
        name = f"{dataset}_{lab}_snapshots.png"
        title = f"{dataset} / {lab} / seed {rec.seed}: prediction, difficulty and dropped pixels (grey = void)"
        if snapshot_grid(plot_dir / name, title, rec.rundir / "snapshots", num_classes):
            figs.append(Figure(f"{dataset} / {lab}: difficulty and dropped pixels, early / middle / late epochs",
                               f"plots/{name}"))
    return figs
