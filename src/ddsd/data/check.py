"""``check_dataset``: validate a dataset and summarise it (what ``ddsd data check`` prints).

Every listed pair is decoded once: image and mask present, readable (truncated and non-image files fail),
same size, every mask value a class or void (RGB: a colour of the map). Binary masks with values between
0 and 255 are thresholded and counted (``strict=True`` makes each such file an error). Problems are collected
over the whole dataset, each naming the file and value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddsd.data.errors import MAX_SHOWN, DataError, ErrorCollector, format_errors
from ddsd.data.layouts import Sample, resolve_split, split_exists, unlisted_files
from ddsd.data.procedural import generate_split
from ddsd.data.reader import LoadedPair, load_pair, thread_map
from ddsd.data.sizing import pick_size
from ddsd.data.spec import IGNORE_INDEX, DatasetSpec, require_root

VOID_WARN_SHARE = 0.5  # a mask with at least this share of void pixels is named by a warning
OTHER_SPLIT_NAMES = ("train", "val", "test", "trainval", "valid", "validation", "dev")


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    ``summary``: ``name``, ``layout``, ``encoding``, ``description`` (what was detected, if anything),
    ``class_names``, ``void_value`` and ``splits``: split -> ``count``, ``sizes`` ("WxH" -> images),
    ``class_share`` (class name -> fraction of all mask pixels of the split, void included), ``void_share``,
    ``inbetween_files`` / ``inbetween_pixels`` (binary masks with values strictly between 0 and 255),
    ``size_range`` (``width`` / ``height``: [min, median, max]); ``training_size``: ``size`` [H, W] and ``reason``,
    what ``ddsd train`` uses without ``data.size`` (None when the train split was not checked).
    """

    ok: bool
    errors: list[str]
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def format_errors(self, limit: int = MAX_SHOWN) -> str:
        return format_errors(f"dataset '{self.summary.get('name', '?')}'", self.errors, limit)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise DataError(f"dataset '{self.summary.get('name', '?')}'", self.errors)


def _min_median_max(values: list[int]) -> list[int]:
    return [values[0], values[(len(values) - 1) // 2], values[-1]] if values else []


def _training_size(spec: DatasetSpec, sizes: Counter | None) -> dict[str, Any] | None:
    """What ``ddsd train`` would use without ``data.size`` (``data.resize=auto``), from the train split."""
    if spec.size is not None:
        return {"size": list(spec.size), "reason": f"the size of dataset '{spec.name}'"}
    if spec.layout == "procedural":
        return {"size": [64, 64], "reason": "the procedural set's default"}
    if not sizes:
        return None
    size, why = pick_size([(h, w) for (w, h), n in sizes.items() for _ in range(n)])
    return {"size": list(size), "reason": f"chosen from the data: {why}"}


def _split_summary(spec: DatasetSpec, pixel_counts: np.ndarray, sizes: Counter, count: int,
                   inbetween_files: int, inbetween_pixels: int) -> dict[str, Any]:
    total = int(pixel_counts.sum())
    share = pixel_counts / total if total else np.zeros_like(pixel_counts, dtype=np.float64)
    widths = sorted(w for (w, _), n in sizes.items() for _ in range(n))
    heights = sorted(h for (_, h), n in sizes.items() for _ in range(n))
    return {
        "count": count,
        "sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
        "size_range": {"width": _min_median_max(widths), "height": _min_median_max(heights)},
        "class_share": {name: float(share[i]) for i, name in enumerate(spec.class_names)},
        "void_share": float(share[IGNORE_INDEX]),
        "inbetween_files": inbetween_files,
        "inbetween_pixels": inbetween_pixels,
    }


def check_dataset(spec: DatasetSpec | str, splits: list[str] | None = None, strict: bool = False,
                  workers: int | None = None) -> CheckReport:
    """Validate ``splits`` (default: every split of ``spec.splits`` that exists) and summarise them."""
    if isinstance(spec, str):
        from ddsd.data.spec import load_spec

        spec = load_spec(spec)
    summary: dict[str, Any] = {
        "name": spec.name, "root": str(spec.root) if spec.root else None, "layout": spec.layout,
        "encoding": spec.encoding, "description": spec.description, "source": spec.source,
        "class_names": spec.class_names,
        "void_value": spec.void_value, "positive_class": spec.positive_class, "splits": {},
    }
    errors = ErrorCollector()
    warnings: list[str] = list(spec.notes)

    if spec.layout == "procedural":
        for split in splits or list(spec.counts):
            try:
                _, masks = generate_split(spec, split)
            except DataError as e:
                errors.add(str(e))
                continue
            counts = np.bincount(masks.ravel(), minlength=256)
            h, w = masks.shape[1:]
            summary["splits"][split] = _split_summary(spec, counts, Counter({(w, h): len(masks)}),
                                                      len(masks), 0, 0)
        summary["training_size"] = _training_size(spec, None)
        return CheckReport(not errors, errors.errors, warnings, summary)

    assert spec.root is not None
    try:
        require_root(spec)
    except DataError as e:
        errors.add(str(e))
        return CheckReport(False, errors.errors, warnings, summary)
    if splits is None:
        splits = [s for s in spec.splits if split_exists(spec, s)]
        missing = [s for s in spec.splits if s not in splits]
        if not splits:
            errors.add(f"{spec.root}: no split list found (expected "
                       f"{', '.join(spec.split_file_for(s) for s in spec.splits)})")
        elif missing:
            warnings.append(f"split(s) {', '.join(missing)} absent "
                            f"({', '.join(spec.split_file_for(s) for s in missing)} not found)")

    used: dict[Path, set[Path]] = {}
    owner: dict[str, str] = {}
    for split in splits:
        samples = resolve_split(spec, split, errors)
        used.setdefault(spec.root / spec.image_dir_for(split), set()).update(s.image for s in samples)
        used.setdefault(spec.root / spec.mask_dir_for(split), set()).update(s.mask for s in samples)
        for s in samples:
            if s.stem in owner and owner[s.stem] != split:
                warnings.append(f"{s.image}: '{s.stem}' is in both split '{owner[s.stem]}' and '{split}'")
            owner.setdefault(s.stem, split)
        summary["splits"][split], sizes = _check_split(spec, samples, strict, errors, warnings, workers)
        if split == "train":
            summary["training_size"] = _training_size(spec, sizes)
    _add_unchecked_lists(spec, splits, used)
    unlisted = unlisted_files(spec, used)
    if unlisted:
        warnings.append(f"{len(unlisted)} image/mask file(s) listed in no split list, e.g. {unlisted[0]}")
    return CheckReport(not errors, errors.errors, warnings, summary)


def _add_unchecked_lists(spec: DatasetSpec, checked: list[str], used: dict[Path, set[Path]]) -> None:
    """Add to ``used`` the files that split lists other than the ``checked`` ones name (``--split train`` or a
    list that is not one of ``spec.splits``): such files are in a split, only not in a checked one."""
    others = dict.fromkeys([*spec.splits, *spec.split_files, *OTHER_SPLIT_NAMES])
    for split in others:
        if split in checked or not (spec.root / spec.split_file_for(split)).is_file():  # type: ignore[operator]
            continue
        for s in resolve_split(spec, split, ErrorCollector()):
            for f in (s.image, s.mask):
                if f.parent in used:
                    used[f.parent].add(f)


def _check_split(spec: DatasetSpec, samples: list[Sample], strict: bool, errors: ErrorCollector,
                 warnings: list[str], workers: int | None) -> tuple[dict[str, Any], Counter]:
    counts = np.zeros(256, dtype=np.int64)
    mostly_void: list[tuple[Path, float]] = []
    sizes: Counter = Counter()
    inbetween_files = inbetween_pixels = 0

    def one(s: Sample) -> tuple[LoadedPair, np.ndarray | None]:
        pair = load_pair(s, spec, None)
        hist = np.bincount(pair.ids.ravel(), minlength=256) if pair.ids is not None else None
        pair.image = pair.ids = None  # keep memory flat over large splits
        return pair, hist

    for pair, hist in thread_map(one, samples, workers):
        errors.extend(pair.errors)
        if pair.original_size is not None:
            sizes[(pair.original_size[1], pair.original_size[0])] += 1
        if pair.inbetween:
            inbetween_files += 1
            inbetween_pixels += pair.inbetween
            if strict:
                errors.add(f"{pair.sample.mask}: {pair.inbetween} pixel(s) with values between 0 and 255 "
                           "in a binary mask (strict mode)")
        if hist is not None:
            counts += hist
            share = hist[IGNORE_INDEX] / max(1, int(hist.sum()))
            if share >= VOID_WARN_SHARE:
                mostly_void.append((pair.sample.mask, share))
    if mostly_void:
        shown = ", ".join(f"{p} ({v:.0%})" for p, v in mostly_void[:8])
        more = f" and {len(mostly_void) - 8} more" if len(mostly_void) > 8 else ""
        void = f"void value {spec.void_value}" if spec.void_value is not None else "values outside the classes"
        warnings.append(f"{len(mostly_void)} of {len(samples)} masks are mostly void under encoding "
                        f"'{spec.encoding}' ({void}): {shown}{more}; if they are labelled, the encoding is wrong "
                        "for them (set --encoding / --void-value, or re-save those masks)")
    return _split_summary(spec, counts, sizes, len(samples), inbetween_files, inbetween_pixels), sizes
